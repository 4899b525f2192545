"""The synthetic sample's rendering: procedural appearance and analytic ray casting (numpy, all pixels of a
primitive at once) of the scene in perception_fm.replay.synthetic_scene; the overview and the conventions are
in perception_fm.replay.synthetic."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

import numpy as np

from perception_fm.replay.synthetic_scene import (
    _OBJECTS,
    ROOM_MAX,
    ROOM_MIN,
    Frame,
    SampleConfig,
    SceneObject,
    camera_to_world,
    intrinsics,
    object_poses,
    stamp_ns,
)

# -- procedural appearance ---------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class _Appearance:
    table: np.ndarray  # (256, 256) value-noise lattice in [0, 1)
    jitter: np.ndarray  # (8, 3) room palette multipliers
    phase: np.ndarray  # (8,) texture phase offsets in metres


@lru_cache(maxsize=8)
def _appearance(seed: int) -> _Appearance:
    rng = np.random.default_rng(np.random.SeedSequence([0x5EED, int(seed)]))
    table = rng.random((256, 256))
    jitter = 1.0 + 0.12 * rng.uniform(-1.0, 1.0, (8, 3))
    phase = rng.uniform(0.0, 1.0, 8)
    return _Appearance(table, jitter, phase)


def _noise(table: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Smooth value noise in [0, 1), lattice spacing 1 (scale the coordinates for other frequencies)."""
    fu, fv = np.floor(u), np.floor(v)
    iu, iv = fu.astype(np.int64) & 255, fv.astype(np.int64) & 255
    ju, jv = (iu + 1) & 255, (iv + 1) & 255
    su, sv = u - fu, v - fv
    su = su * su * (3.0 - 2.0 * su)
    sv = sv * sv * (3.0 - 2.0 * sv)
    top = table[iu, iv] * (1.0 - su) + table[ju, iv] * su
    bottom = table[iu, jv] * (1.0 - su) + table[ju, jv] * su
    return top * (1.0 - sv) + bottom * sv


def _fbm(table: np.ndarray, u: np.ndarray, v: np.ndarray, octaves: int = 3) -> np.ndarray:
    total = np.zeros_like(u)
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        total += amp * _noise(table, u * (2.0**o) + 17.0 * o, v * (2.0**o) + 31.0 * o)
        norm += amp
        amp *= 0.5
    return total / norm


def _hash_cell(table: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    return table[(i.astype(np.int64) * 7 + 3) & 255, (j.astype(np.int64) * 13 + 5) & 255]


def _checker(u: np.ndarray, v: np.ndarray, cell: float, sharp: float = 12.0) -> np.ndarray:
    """Anti-aliased checkerboard in [0, 1] with square cells of side `cell`."""
    s = np.sin(np.pi * u / cell) * np.sin(np.pi * v / cell)
    return 0.5 + 0.5 * np.tanh(sharp * s)


def _lines(u: np.ndarray, period: float, width: float) -> np.ndarray:
    """1 on lines every `period` (soft, `width` wide), 0 elsewhere."""
    d = np.abs(u / period - np.round(u / period)) * period
    return np.clip(1.5 - d / (0.5 * width), 0.0, 1.0)


def _box_mask(u: np.ndarray, v: np.ndarray, u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
    return (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)


def _mix(c0, c1, m: np.ndarray) -> np.ndarray:
    c0 = np.asarray(c0, dtype=np.float64)
    c1 = np.asarray(c1, dtype=np.float64)
    return c0 + (c1 - c0) * m[:, None]


def _room_albedo(face: int, p: np.ndarray, app: _Appearance) -> np.ndarray:
    """Albedo (M, 3) of room face `face` (0 back x-, 1 front x+, 2 right y-, 3 left y+, 4 floor, 5 ceiling)."""
    t, j, ph = app.table, app.jitter, app.phase
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    if face == 4:  # floor: 0.5 m tiles of two woods, grain, grout
        grain = _fbm(t, x * 3.0 + ph[0] * 50.0, y * 24.0)
        tile = _checker(x + ph[1] * 0.5, y + ph[1] * 0.5, 0.5)
        col = _mix(np.array([0.62, 0.45, 0.28]) * j[0], np.array([0.42, 0.30, 0.2]) * j[1], tile)
        col *= (0.75 + 0.5 * grain)[:, None]
        grout = np.maximum(_lines(x + ph[1] * 0.5, 0.5, 0.02), _lines(y + ph[1] * 0.5, 0.5, 0.02))
        return col * (1.0 - 0.75 * grout)[:, None]
    if face == 5:  # ceiling: panels with a grid and mild noise
        n = _fbm(t, x * 2.0 + 90.0, y * 2.0 + 40.0)
        col = np.array([0.85, 0.85, 0.8]) * j[2] * (0.85 + 0.25 * n)[:, None]
        grid = np.maximum(_lines(x + ph[2], 0.6, 0.03), _lines(y + ph[2], 0.6, 0.03))
        return col * (1.0 - 0.5 * grid)[:, None]
    if face in (0, 1):  # walls across x: (u, v) = (y, z)
        u, v = y, z
    else:  # walls across y: (u, v) = (x, z)
        u, v = x, z
    if face == 1:  # front wall: vertical colour gradient, two posters, skirting board
        n = _fbm(t, u * 3.0 + 10.0, v * 3.0)
        col = _mix(np.array([0.35, 0.55, 0.7]) * j[3], np.array([0.8, 0.75, 0.55]) * j[4], np.clip(v / 2.6, 0, 1))
        diamonds = _checker(u + v + ph[3], u - v, 0.3, sharp=3.0)
        col = col * ((0.75 + 0.4 * n) * (0.85 + 0.2 * diamonds))[:, None]
        board = _checker(u + ph[3] * 0.2, v, 0.12)
        poster1 = _box_mask(u, v, -1.9, -0.6, 0.9, 1.9)
        col[poster1] = _mix([0.1, 0.1, 0.12], [0.95, 0.95, 0.9], board[poster1])
        r = np.hypot(u - 0.9, v - 1.45)
        rings = 0.5 + 0.5 * np.sin(r * 40.0 + ph[4] * 6.0)
        poster2 = _box_mask(u, v, 0.3, 1.5, 1.0, 1.9)
        col[poster2] = _mix([0.85, 0.2, 0.45], [0.2, 0.7, 0.6], rings[poster2])
        col[v < 0.12] = np.array([0.25, 0.2, 0.18]) * (0.8 + 0.4 * n[v < 0.12])[:, None]
        return col
    if face == 3:  # left wall: stripes of varying width, a window-like grid
        n = _fbm(t, u * 4.0 + 60.0, v * 4.0)
        warp = u + 0.15 * np.sin(u * 1.7 + ph[5] * 6.0)
        stripes = 0.5 + 0.5 * np.tanh(6.0 * np.sin(warp * 9.0))
        col = _mix(np.array([0.75, 0.7, 0.45]) * j[5], np.array([0.5, 0.6, 0.35]) * j[6], stripes)
        col = col * (0.8 + 0.4 * n)[:, None]
        window = _box_mask(u, v, -1.0, 0.6, 0.9, 2.1)
        panes = np.maximum(_lines(u[window] + 1.0, 0.4, 0.04), _lines(v[window] - 0.9, 0.4, 0.04))
        sky = _mix([0.55, 0.75, 0.95], [0.9, 0.95, 1.0], np.clip((v[window] - 0.9) / 1.2, 0, 1))
        col[window] = sky * (1.0 - 0.8 * panes)[:, None]
        return col
    if face == 2:  # right wall: staggered bricks with per-brick colour
        bw, bh = 0.25, 0.1
        row = np.floor(v / bh)
        uu = u + ph[6] + 0.5 * bw * (row % 2)
        col_i = np.floor(uu / bw)
        hsh = _hash_cell(t, col_i, row)
        brick = _mix(np.array([0.7, 0.3, 0.2]) * j[7], np.array([0.5, 0.22, 0.16]) * j[7], hsh)
        n = _fbm(t, u * 20.0, v * 20.0, 2)
        brick *= (0.85 + 0.3 * n)[:, None]
        mortar = np.maximum(_lines(uu, bw, 0.015), _lines(v, bh, 0.015))
        return _mix(np.zeros(3), [0.75, 0.73, 0.7], mortar) + brick * (1.0 - mortar)[:, None]
    # back wall: plain with noise and a gradient
    n = _fbm(t, u * 2.0, v * 2.0)
    return _mix([0.6, 0.6, 0.65], [0.7, 0.65, 0.6], n)


def _face_coords(pl: np.ndarray, axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two in-face coordinates of local box points, given the axis of each point's face normal."""
    u = np.where(axis == 0, pl[:, 1], pl[:, 0])
    v = np.where(axis == 2, pl[:, 1], pl[:, 2])
    return u, v


def _object_albedo(obj: SceneObject, pl: np.ndarray, axis: np.ndarray | None, app: _Appearance) -> np.ndarray:
    """Albedo (M, 3) of points `pl` in the object's own frame (textures move with the object)."""
    t = app.table
    iid = obj.instance_id
    if obj.kind == "sphere":
        q = pl / obj.size[0]
        lon = np.arctan2(q[:, 1], q[:, 0])
        if iid == 1:  # red ball: six red/dark-red segments, a thin pale band
            seg = 0.5 + 0.5 * np.tanh(8.0 * np.sin(3.0 * lon))
            col = _mix([0.88, 0.1, 0.07], [0.55, 0.03, 0.05], seg)
            band = np.abs(q[:, 2]) < 0.1
            col[band] = [0.95, 0.85, 0.8]
            return col
        if iid == 3:  # yellow ball with orange spots
            spots = np.sin(7.0 * q[:, 0]) * np.sin(7.0 * q[:, 1]) * np.sin(7.0 * q[:, 2])
            return _mix([0.95, 0.82, 0.1], [0.92, 0.45, 0.05], (spots > 0.3).astype(np.float64))
        # purple ball: latitude stripes
        stripes = 0.5 + 0.5 * np.tanh(6.0 * np.sin(np.arcsin(np.clip(q[:, 2], -1, 1)) * 8.0))
        return _mix([0.5, 0.15, 0.65], [0.75, 0.45, 0.85], stripes)
    if obj.kind == "cylinder":  # green cylinder: checker on (arc length, height) and rings
        r, hh = obj.size
        arc = np.arctan2(pl[:, 1], pl[:, 0]) * r
        cap = np.abs(np.abs(pl[:, 2]) - hh) < np.abs(np.hypot(pl[:, 0], pl[:, 1]) - r)
        pattern = np.where(cap, _checker(pl[:, 0], pl[:, 1], 0.08), _checker(arc, pl[:, 2], 0.105))
        col = _mix([0.1, 0.45, 0.15], [0.35, 0.8, 0.35], pattern)
        col *= (1.0 - 0.5 * _lines(pl[:, 2] + hh, 0.35, 0.015) * (~cap))[:, None]
        return col
    # boxes
    assert axis is not None
    u, v = _face_coords(pl, axis)
    half = np.asarray(obj.size)
    if iid == 2:  # blue box: checker faces with dark edges
        col = _mix([0.08, 0.15, 0.6], [0.25, 0.45, 0.95], _checker(u, v, 0.09))
        edge = _box_edges(pl, axis, half, 0.02)
        return col * (1.0 - 0.6 * edge)[:, None]
    if iid == 5:  # wooden crate: planks with grain, dark frame
        plank = np.floor((pl[:, 2] + half[2]) / 0.1)
        shade = 0.8 + 0.35 * _hash_cell(t, plank, axis.astype(np.float64))
        grain = _fbm(t, u * 2.5 + 5.0, v * 30.0 + 3.0, 2)
        col = np.array([0.58, 0.37, 0.18]) * (shade * (0.75 + 0.4 * grain))[:, None]
        gaps = _lines(pl[:, 2] + half[2], 0.1, 0.01) * (axis != 2)
        edge = _box_edges(pl, axis, half, 0.04)
        return col * (1.0 - 0.6 * np.maximum(gaps, edge))[:, None]
    if iid == 7:  # grey cabinet: drawer seams and dark handles
        n = _fbm(t, u * 6.0 + 3.0, v * 6.0 + 7.0, 2)
        col = np.array([0.55, 0.56, 0.6]) * (0.9 + 0.2 * n)[:, None]
        seams = np.maximum(_lines(pl[:, 2] + half[2], 0.4, 0.012), _lines(pl[:, 1], 0.9, 0.012)) * (axis != 2)
        zz = (pl[:, 2] + half[2]) % 0.4
        handle = (axis == 0) & (np.abs(zz - 0.3) < 0.02) & (np.abs(np.abs(pl[:, 1]) - 0.22) < 0.08)
        col = col * (1.0 - 0.7 * seams)[:, None]
        col[handle] = [0.12, 0.12, 0.14]
        return col
    # orange box: diagonal stripes
    stripes = 0.5 + 0.5 * np.tanh(6.0 * np.sin((u + v) * 30.0))
    return _mix([0.95, 0.5, 0.08], [0.98, 0.75, 0.35], stripes)


def _box_edges(pl: np.ndarray, axis: np.ndarray, half: np.ndarray, width: float) -> np.ndarray:
    """1 near the edges of each face of a box, 0 inside."""
    closeness = half[None, :] - np.abs(pl)  # distance to each slab face
    closeness[np.arange(len(pl)), axis] = np.inf  # ignore the face the point is on
    return np.clip(1.0 - closeness.min(axis=1) / width, 0.0, 1.0)


_LIGHT = np.array([-0.35, 0.45, 0.82]) / np.linalg.norm([-0.35, 0.45, 0.82])
_LAMP_XY = np.array([0.6, -0.2])


def _shading(normal: np.ndarray, p: np.ndarray) -> np.ndarray:
    """View-independent shading: directional light + sky fill + a soft pool of light in the middle of the room."""
    diffuse = np.maximum(normal @ _LIGHT, 0.0)
    fill = 0.5 + 0.5 * normal[:, 2]
    d2 = np.sum((p[:, :2] - _LAMP_XY) ** 2, axis=1)
    pool = 0.8 + 0.3 * np.exp(-d2 / 6.0)
    return (0.28 + 0.55 * diffuse + 0.17 * fill) * pool


# -- ray casting -------------------------------------------------------------------------------------------

@lru_cache(maxsize=8)
def _camera_rays(width: int, height: int, fov_deg: float) -> np.ndarray:
    """(H*W, 3) optical-frame ray directions with z = 1 (so the ray parameter is the z-depth)."""
    k = intrinsics(SampleConfig(width=width, height=height, fov_deg=fov_deg))
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    rays = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], axis=-1)
    rays = rays.reshape(-1, 3)
    rays.flags.writeable = False
    return rays


_EPS = 1e-9


def _intersect_room(origin: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exit distance from inside the room and the face hit (0 x-, 1 x+, 2 y-, 3 y+, 4 floor, 5 ceiling)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = np.where(d > 0, ROOM_MAX, ROOM_MIN)
        t = (bound - origin) / d
    t = np.where(np.isfinite(t) & (t > 0), t, np.inf)
    axis = np.argmin(t, axis=1)
    rows = np.arange(len(d))
    face = 2 * axis + (d[rows, axis] > 0)
    return t[rows, axis], face


def _bounding_radius(obj: SceneObject) -> float:
    if obj.kind == "sphere":
        return float(obj.size[0])
    return float(np.linalg.norm(obj.size)) if obj.kind == "box" else float(np.hypot(*obj.size))


def _intersect(obj: SceneObject, pose: np.ndarray, origin: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Entry distance of rays origin + t d into the object (inf where missed). The origin is outside."""
    rot, centre = pose[:3, :3], pose[:3, 3]
    o = rot.T @ (origin - centre)  # ray in the object's frame
    dl = d @ rot
    if obj.kind == "sphere":
        r = obj.size[0]
        a = np.einsum("ij,ij->i", dl, dl)
        b = dl @ o
        c = o @ o - r * r
        disc = b * b - a * c
        hit = disc >= 0.0
        t = np.full(len(d), np.inf)
        t[hit] = (-b[hit] - np.sqrt(disc[hit])) / a[hit]
        t[t <= _EPS] = np.inf
        return t
    if obj.kind == "box":
        half = np.asarray(obj.size)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / dl
            t1 = (-half - o) * inv
            t2 = (half - o) * inv
        tnear = np.fmax.reduce(np.fmin(t1, t2), axis=1)
        tfar = np.fmin.reduce(np.fmax(t1, t2), axis=1)
        return np.where((tnear <= tfar) & (tnear > _EPS), tnear, np.inf)
    # vertical cylinder with caps
    r, hh = obj.size
    a = dl[:, 0] ** 2 + dl[:, 1] ** 2
    b = dl[:, 0] * o[0] + dl[:, 1] * o[1]
    c = o[0] ** 2 + o[1] ** 2 - r * r
    disc = b * b - a * c
    t_side = np.full(len(d), np.inf)
    hit = (disc >= 0.0) & (a > 0.0)
    t_side[hit] = (-b[hit] - np.sqrt(disc[hit])) / a[hit]
    finite = np.isfinite(t_side)
    z = o[2] + np.where(finite, t_side, 0.0) * dl[:, 2]
    t_side[~finite | (np.abs(z) > hh) | (t_side <= _EPS)] = np.inf
    with np.errstate(divide="ignore", invalid="ignore"):
        cap_z = np.where(o[2] > 0, hh, -hh)  # the cap facing the origin (origin outside the cylinder)
        t_cap = (cap_z - o[2]) / dl[:, 2]
    ok = np.isfinite(t_cap) & (t_cap > _EPS)
    px = o[0] + np.where(ok, t_cap, 0.0) * dl[:, 0]
    py = o[1] + np.where(ok, t_cap, 0.0) * dl[:, 1]
    t_cap = np.where(ok & (px * px + py * py <= r * r), t_cap, np.inf)
    return np.minimum(t_side, t_cap)


def _object_surface(obj: SceneObject, pl: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Local normals (M, 3) of surface points `pl` (object frame) and, for boxes, the face axis."""
    if obj.kind == "sphere":
        return pl / obj.size[0], None
    if obj.kind == "box":
        half = np.asarray(obj.size)
        axis = np.argmin(np.abs(np.abs(pl) - half), axis=1)
        normal = np.zeros_like(pl)
        rows = np.arange(len(pl))
        normal[rows, axis] = np.sign(pl[rows, axis])
        return normal, axis
    r, hh = obj.size
    radial = np.hypot(pl[:, 0], pl[:, 1])
    cap = np.abs(np.abs(pl[:, 2]) - hh) < np.abs(radial - r)
    normal = np.zeros_like(pl)
    normal[:, 2] = np.where(cap, np.sign(pl[:, 2]), 0.0)
    side = ~cap
    normal[side, 0] = pl[side, 0] / radial[side]
    normal[side, 1] = pl[side, 1] / radial[side]
    return normal, None


def _to_srgb8(linear: np.ndarray) -> np.ndarray:
    return np.round(255.0 * np.clip(linear, 0.0, 1.0) ** (1.0 / 2.2)).astype(np.uint8)


def render_frame(config: SampleConfig, index: int, camera: int = 0) -> Frame:
    """Render frame `index` of the sequence, seen by `camera` of the rig (0 without one): RGB, depth,
    instances and the ground-truth poses."""
    c2w = camera_to_world(config, index, camera)
    poses = object_poses(config, index)
    app = _appearance(config.seed)
    h, w = config.height, config.width
    d = _camera_rays(w, h, float(config.fov_deg)) @ c2w[:3, :3].T  # world directions, z-depth parameterised
    origin = c2w[:3, 3].copy()

    t_best, face = _intersect_room(origin, d)
    owner = np.full(len(d), -1, dtype=np.int64)
    dd = np.einsum("ij,ij->i", d, d)
    for k, obj in enumerate(_OBJECTS):
        pose = poses[obj.instance_id]
        # cull with the bounding sphere (cheap), then intersect exactly where it can hit
        oc = origin - pose[:3, 3]
        b = d @ oc
        radius = _bounding_radius(obj)
        cand = np.flatnonzero((b * b - dd * (oc @ oc - radius * radius) >= 0.0) & (b < radius * np.sqrt(dd)))
        if cand.size == 0:
            continue
        t = _intersect(obj, pose, origin, d[cand])
        closer = t < t_best[cand]
        hit = cand[closer]
        t_best[hit] = t[closer]
        owner[hit] = k

    points = origin + d * t_best[:, None]
    linear = np.empty((len(d), 3))
    room = owner < 0
    for f in range(6):
        sel = np.flatnonzero(room & (face == f))
        if sel.size == 0:
            continue
        p = points[sel]
        normal = np.zeros(3)
        normal[f // 2] = -1.0 if f % 2 else 1.0  # pointing into the room
        albedo = _room_albedo(f, p, app)
        linear[sel] = albedo * _shading(np.broadcast_to(normal, p.shape), p)[:, None]
    ids = np.zeros(len(_OBJECTS) + 1, dtype=np.uint16)
    for k, obj in enumerate(_OBJECTS):
        ids[k + 1] = obj.instance_id
        sel = np.flatnonzero(owner == k)
        if sel.size == 0:
            continue
        pose = poses[obj.instance_id]
        p = points[sel]
        pl = (p - pose[:3, 3]) @ pose[:3, :3]
        normal_l, axis = _object_surface(obj, pl)
        albedo = _object_albedo(obj, pl, axis, app)
        linear[sel] = albedo * _shading(normal_l @ pose[:3, :3].T, p)[:, None]

    return Frame(
        index=index,
        stamp_ns=stamp_ns(config, index),
        rgb=_to_srgb8(linear).reshape(h, w, 3),
        depth=t_best.astype(np.float32).reshape(h, w),
        instances=ids[owner + 1].reshape(h, w),
        K=intrinsics(config),
        camera_to_world=c2w,
        object_to_world=poses,
        camera=camera,
    )


def render_sequence(config: SampleConfig, camera: int = 0) -> Iterator[Frame]:
    for index in range(config.frames):
        yield render_frame(config, index, camera)


