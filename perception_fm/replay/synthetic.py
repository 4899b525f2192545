"""Deterministic synthetic RGB-D sequence with ground truth, and a writer that puts it into a rosbag2 (MCAP) bag.

This is the project's bundled sample: a closed, procedurally textured room (wood-tiled floor, patterned walls)
with static and moving objects in front of the walls (depth steps at their outlines), seen by a camera that tours
a loop with turns and changes of speed, height and pitch (camera_link_to_world), so that a trivial trajectory or
a constant depth scores clearly worse than a correct estimate (tests/test_eval_baselines.py). Every frame is ray cast analytically (numpy, all pixels of a primitive
at once), so the ground truth is exact:

- depth: z-depth in metres along the optical axis (REP 118), float32. The room is closed, so every pixel hits
  something and the depth is always finite and > 0.
- instances: uint16 instance id per pixel, 0 for the room (floor, walls, ceiling).
- camera pose: camera_to_world (c2w) of the REP 103 optical frame (x right, y down, z forward) in a z-up world
  (x forward, y left, z up), 4x4 float64.
- intrinsics: pinhole K, OpenCV convention (pixel centres at integer coordinates), no distortion.

Appearance is view-independent: albedo is a function of the point on the surface (in the object's own frame for
objects, so textures move with them) and shading depends only on the surface normal and the world position
(fixed lights, no specular highlights, no shadows). Textures are band-limited where cheap (soft checker edges) but
not anti-aliased by supersampling. A static surface point therefore has the same colour
in every frame it is visible in, which the tests use to check the geometry.

What the seed changes: the room's textures (noise, checker phases and a small jitter of the room palette) and the
noise on the objects. Geometry, layout, motions, camera path and the objects' colours (their concept names say
"red ball", so the ball stays red) do not depend on it: depth, instances and poses are the same for every seed.

Timing: frame ``i`` is stamped ``start_ns + round(i * 1e9 / rate_hz)``; the motion is parameterised over the
sequence (phase ``i / (frames - 1)``), so shorter sequences cover the same path in bigger steps.

CLI: ``python -m perception_fm.replay.synthetic OUT_BAG_DIR [--frames N --width W --height H --seed S
--compressed --no-tf --force]``.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

__all__ = [
    "CAMERA_LINK_FRAME",
    "Frame",
    "SampleConfig",
    "SceneObject",
    "TOPICS",
    "T_LINK_OPTICAL",
    "camera_link_to_world",
    "camera_to_world",
    "instance_labels",
    "intrinsics",
    "main",
    "moving_instance_ids",
    "object_poses",
    "render_frame",
    "render_sequence",
    "scene_objects",
    "stamp_ns",
    "write_sample_bag",
]

CAMERA_LINK_FRAME = "camera_link"

# camera_link (x forward, y left, z up) -> optical frame (x right, y down, z forward): columns are the optical
# axes expressed in camera_link. T_link_optical maps optical-frame points into camera_link.
T_LINK_OPTICAL = np.array(
    [
        [0.0, 0.0, 1.0, 0.0],
        [-1.0, 0.0, 0.0, 0.0],
        [0.0, -1.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)

TOPICS = {
    "image": "/camera/color/image_raw",
    "image_compressed": "/camera/color/image_raw/compressed",
    "camera_info": "/camera/color/camera_info",
    "depth": "/gt/depth",
    "instances": "/gt/instances",
    "camera_pose": "/gt/camera_pose",
    "instance_labels": "/gt/instance_labels",
    "tf": "/tf",
    "tf_static": "/tf_static",
}

CAMERA_PATHS = ("tour", "walk")

# Room: x in [-3, 3], y in [-2.5, 2.5], z in [0, 2.6] (metres, world frame, z up).
ROOM_MIN = np.array([-3.0, -2.5, 0.0])
ROOM_MAX = np.array([3.0, 2.5, 2.6])


# -- configuration -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SampleConfig:
    """Everything that determines the sample. Same config -> byte-identical frames and bag."""

    width: int = 320
    height: int = 240
    frames: int = 48
    rate_hz: float = 10.0
    fov_deg: float = 70.0  # horizontal field of view
    seed: int = 0  # appearance only (textures, room palette); geometry and motion are fixed
    start_ns: int = 1_700_000_000 * 10**9
    camera_frame: str = "camera_color_optical_frame"
    world_frame: str = "odom"
    camera_link_frame: str = CAMERA_LINK_FRAME
    # scene knobs
    camera_motion: float = 1.0  # scales the camera's translation and rotation away from its start pose
    # "tour": the default, a loop with turns and changes of speed and height that trivial trajectories cannot
    # follow (the eval's baselines); "walk": the earlier, almost straight 1.4 m walk, kept for tests written
    # against its views (same first frame)
    camera_path: str = "tour"
    object_motion: float = 1.0  # scales how far the moving objects travel (0 freezes them)
    jpeg_quality: int = 90  # for write_sample_bag(compressed=True)

    def __post_init__(self) -> None:
        if self.width < 2 or self.height < 2:
            raise ValueError(f"image size must be at least 2x2, got {self.width}x{self.height}")
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if not (self.rate_hz > 0 and math.isfinite(self.rate_hz)):
            raise ValueError(f"rate_hz must be positive, got {self.rate_hz}")
        if not 1.0 <= self.fov_deg <= 170.0:
            raise ValueError(f"fov_deg must be in [1, 170], got {self.fov_deg}")
        if self.camera_path not in CAMERA_PATHS:
            raise ValueError(f"camera_path must be one of {CAMERA_PATHS}, got {self.camera_path!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")


@dataclass(frozen=True)
class SceneObject:
    """One object of the scene. Sizes in metres: sphere (radius,), box (half x, half y, half z) and cylinder
    (radius, half height), all in the object's own frame (z up; the object's pose places its centre)."""

    instance_id: int
    concept: str
    kind: str  # "sphere" | "box" | "cylinder"
    size: tuple[float, ...]
    moving: bool


@dataclass(frozen=True, eq=False)
class Frame:
    index: int
    stamp_ns: int
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32, metres (z-depth), finite and > 0
    instances: np.ndarray  # (H, W) uint16, 0 = room
    K: np.ndarray  # (3, 3) float64
    camera_to_world: np.ndarray  # (4, 4) float64, optical frame -> world
    object_to_world: dict[int, np.ndarray] = field(default_factory=dict)  # instance id -> (4, 4) pose


_OBJECTS: tuple[SceneObject, ...] = (
    SceneObject(1, "red ball", "sphere", (0.15,), True),
    SceneObject(2, "blue box", "box", (0.18, 0.18, 0.18), True),
    SceneObject(3, "yellow ball", "sphere", (0.12,), True),
    SceneObject(4, "green cylinder", "cylinder", (0.2, 0.35), False),
    SceneObject(5, "wooden crate", "box", (0.3, 0.25, 0.25), False),
    SceneObject(6, "purple ball", "sphere", (0.14,), False),
    SceneObject(7, "grey cabinet", "box", (0.25, 0.45, 0.8), False),
    SceneObject(8, "orange box", "box", (0.15, 0.2, 0.12), False),
)


def scene_objects(config: SampleConfig | None = None) -> tuple[SceneObject, ...]:
    """The objects of the scene (the same for every config)."""
    return _OBJECTS


def instance_labels(config: SampleConfig | None = None) -> dict[int, str]:
    """Instance id -> concept name ("red ball", ...). Id 0 (the room) is not listed."""
    return {obj.instance_id: obj.concept for obj in _OBJECTS}


def moving_instance_ids(config: SampleConfig | None = None) -> frozenset[int]:
    return frozenset(obj.instance_id for obj in _OBJECTS if obj.moving)


# -- time, camera, motion ----------------------------------------------------------------------------------

def stamp_ns(config: SampleConfig, index: int) -> int:
    """Stamp of frame `index` in nanoseconds."""
    return int(config.start_ns) + int(round(index * 1e9 / config.rate_hz))


def _phase(config: SampleConfig, index: int) -> float:
    if not 0 <= index < config.frames:
        raise IndexError(f"frame index {index} outside [0, {config.frames})")
    return index / (config.frames - 1) if config.frames > 1 else 0.0


def intrinsics(config: SampleConfig) -> np.ndarray:
    """Pinhole K (OpenCV: pixel centres at integers), square pixels, principal point at the image centre."""
    fx = (config.width / 2.0) / math.tan(math.radians(config.fov_deg) / 2.0)
    return np.array(
        [[fx, 0.0, (config.width - 1) / 2.0], [0.0, fx, (config.height - 1) / 2.0], [0.0, 0.0, 1.0]]
    )


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_axis(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    x = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + math.sin(angle) * x + (1.0 - math.cos(angle)) * (x @ x)


def _pose(rotation: np.ndarray, translation: Sequence[float]) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rotation
    m[:3, 3] = translation
    return m


# The camera's tour (camera_link, world frame): one loop and a bit around an ellipse in the free half of the room
# (x < -0.3, away from the objects), looking towards the objects while panning left and right. It starts where
# the earlier, straight walk started (frame 0 is unchanged), so the objects seen at the start stay the same.
_TOUR_START = np.array([-2.1, -0.7, 1.25])  # position at s = 0
_TOUR_AXES = (0.85, 0.75)  # ellipse half axes along world x and y (m)
_TOUR_THETA0 = math.radians(-140.0)  # the start's angle on the ellipse
_TOUR_TURNS = 1.15  # loops: past the start again, so the path revisits where it began (a loop closure)
_TOUR_SPEED_SWING = 0.55  # speed along the loop = mean * (1 - swing * cos(2 pi s)): 0.45x at the ends, 1.55x
_TOUR_TARGET = np.array([1.5, 0.0])  # the point the camera faces, panning about it
_TOUR_START_YAW = math.radians(20.0)
_TOUR_START_PITCH = math.radians(12.5 + 4.5 * math.sin(0.6))


def camera_link_to_world(config: SampleConfig, index: int) -> np.ndarray:
    """Pose of the camera body (camera_link: x forward, y left, z up) in the world, 4x4.

    A tour that a trivial trajectory cannot imitate: 1.15 loops (6.1 m) around an ellipse 1.7 m x 1.5 m, so
    the direction of travel turns through 414 degrees and the path comes back past its start (a loop closure);
    the speed along it changes smoothly between 0.45x and 1.55x of its mean (0.7 to 2 m/s at the default 48
    frames at 10 Hz); the height goes up and down by 0.25 m (1.5 cycles); the camera faces the objects while
    panning +-28 degrees (1.5 cycles), pitches 15-29 degrees down (two cycles) and rolls a little. Sim(3)-aligned
    to it, a fixed pose and the best straight line both miss it by about 0.75 m RMS (ATE), where the old,
    almost straight walk let a straight line come within 0.11 m.
    `camera_motion` scales every offset from the start pose (0: the camera stays at the start)."""
    s = _phase(config, index)
    k = config.camera_motion
    if config.camera_path == "walk":
        return _walk(s, k)
    progress = s - _TOUR_SPEED_SWING / (2.0 * math.pi) * math.sin(2.0 * math.pi * s)  # 0 -> 1, speed varies
    theta = _TOUR_THETA0 + 2.0 * math.pi * _TOUR_TURNS * progress
    rx, ry = _TOUR_AXES
    loop = np.array([rx * (math.cos(theta) - math.cos(_TOUR_THETA0)), ry * (math.sin(theta) - math.sin(_TOUR_THETA0)),
                     0.25 * math.sin(3.0 * math.pi * s)])
    position = _TOUR_START + k * loop
    to_target = _TOUR_TARGET - position[:2]
    start_to_target = _TOUR_TARGET - _TOUR_START[:2]
    facing = math.atan2(to_target[1], to_target[0]) - math.atan2(start_to_target[1], start_to_target[0])
    yaw = _TOUR_START_YAW + k * (facing + math.radians(28.0) * math.sin(3.0 * math.pi * s))
    # positive = looking down: 15 degrees at the start, down to 29 twice, so the floor near the camera (1 m) and
    # the far wall (5-6 m) share the frame
    pitch = _TOUR_START_PITCH + k * math.radians(7.0) * (1.0 - math.cos(4.0 * math.pi * s))
    roll = math.radians(k * 2.5 * math.sin(3.0 * math.pi * s))
    return _pose(_rot_z(yaw) @ _rot_y(pitch) @ _rot_x(roll), position)


def _walk(s: float, k: float) -> np.ndarray:
    """camera_path "walk" (the sample's path before the tour): about 1.4 m of translation, 45 degrees of yaw
    (left to right while walking left and forward), pitch 8-17 degrees down and a little roll."""
    w = 2.0 * math.pi * s
    # offsets about the path's mid-point, scaled by camera_motion
    dx = 1.1 * (s - 0.5) + 0.06 * math.sin(w)
    dy = 0.9 * (s - 0.5) + 0.22 * math.sin(w)
    dz = 0.10 * math.sin(math.pi * s) - 0.05 + 0.04 * math.sin(3.0 * math.pi * s)
    position = (-1.55 + k * dx, -0.25 + k * dy, 1.3 + k * dz)
    yaw = math.radians(k * (20.0 - 45.0 * s + 4.0 * math.sin(w)))
    pitch = math.radians(12.5 + k * 4.5 * math.sin(w + 0.6))  # positive = looking down
    roll = math.radians(k * 2.5 * math.sin(3.0 * math.pi * s))
    return _pose(_rot_z(yaw) @ _rot_y(pitch) @ _rot_x(roll), position)


def camera_to_world(config: SampleConfig, index: int) -> np.ndarray:
    """c2w of the optical frame: camera_link_to_world @ T_LINK_OPTICAL."""
    return camera_link_to_world(config, index) @ T_LINK_OPTICAL


def object_poses(config: SampleConfig, index: int) -> dict[int, np.ndarray]:
    """Instance id -> object_to_world (4x4) at frame `index`."""
    s = _phase(config, index)
    m = config.object_motion
    poses: dict[int, np.ndarray] = {}
    # 1: red ball rolls (without slipping) along a straight line on the floor.
    r = 0.15
    a, b = np.array([0.2, -1.3]), np.array([1.35, 0.05])
    travel = m * s * float(np.linalg.norm(b - a))
    direction = (b - a) / np.linalg.norm(b - a)
    centre = a + direction * travel
    axis = np.cross([0.0, 0.0, 1.0], [direction[0], direction[1], 0.0])
    poses[1] = _pose(_rot_axis(axis, travel / r), (centre[0], centre[1], r))
    # 2: blue box slides on the floor and turns.
    h = 0.18
    a, b = np.array([1.5, 1.25]), np.array([0.75, 0.45])
    centre = a + (b - a) * (m * s)
    poses[2] = _pose(_rot_z(math.radians(10.0 + 70.0 * m * s)), (centre[0], centre[1], h))
    # 3: yellow ball bounces (three hops) while drifting and spinning.
    r = 0.12
    a, b = np.array([0.8, 0.6]), np.array([1.7, -0.9])
    centre = a + (b - a) * (m * s)
    z = r + m * 0.45 * abs(math.sin(3.0 * math.pi * s))
    poses[3] = _pose(_rot_z(m * 4.0 * math.pi * s) @ _rot_x(0.4), (centre[0], centre[1], z))
    # static objects
    poses[4] = _pose(np.eye(3), (2.0, -1.5, 0.35))
    poses[5] = _pose(_rot_z(math.radians(15.0)), (2.4, 0.3, 0.25))
    poses[6] = _pose(_rot_x(0.5) @ _rot_y(0.3), (2.4, 0.3, 0.5 + 0.14))
    poses[7] = _pose(np.eye(3), (2.72, 1.75, 0.8))
    poses[8] = _pose(_rot_z(math.radians(-30.0)), (-0.2, 1.45, 0.12))
    return poses


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


def render_frame(config: SampleConfig, index: int) -> Frame:
    """Render frame `index` of the sequence: RGB, depth, instances and the ground-truth poses."""
    c2w = camera_to_world(config, index)
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
    )


def render_sequence(config: SampleConfig) -> Iterator[Frame]:
    for index in range(config.frames):
        yield render_frame(config, index)


# -- rosbag2 writer ----------------------------------------------------------------------------------------

def _rotation_to_quaternion(r: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, z, w) with w >= 0 of a rotation matrix (Shepperd's method)."""
    m = np.asarray(r, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0.0:
        s = 2.0 * math.sqrt(1.0 + trace)
        q = (
            (m[2, 1] - m[1, 2]) / s,
            (m[0, 2] - m[2, 0]) / s,
            (m[1, 0] - m[0, 1]) / s,
            0.25 * s,
        )
    elif m[0, 0] >= m[1, 1] and m[0, 0] >= m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = (0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s)
    elif m[1, 1] >= m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = ((m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s)
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = ((m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s)
    qa = np.array(q)
    qa /= np.linalg.norm(qa)
    if qa[3] < 0:
        qa = -qa
    return tuple(float(v) for v in qa)  # type: ignore[return-value]


class _Messages:
    """Builds the bag's messages with a rosbags typestore (no rclpy needed)."""

    def __init__(self, config: SampleConfig) -> None:
        from rosbags.typesys import Stores, get_typestore

        self.config = config
        self.store = get_typestore(Stores.ROS2_KILTED)
        self.t = self.store.types

    def serialize(self, msg: object) -> bytes:
        return bytes(self.store.serialize_cdr(msg, msg.__msgtype__))  # type: ignore[attr-defined]

    def header(self, stamp: int, frame_id: str):
        time = self.t["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9)
        return self.t["std_msgs/msg/Header"](stamp=time, frame_id=frame_id)

    def image(self, stamp: int, array: np.ndarray, encoding: str):
        h, w = array.shape[:2]
        data = np.ascontiguousarray(array)
        if data.dtype.itemsize > 1:
            data = data.astype(data.dtype.newbyteorder("<"), copy=False)
        raw = np.frombuffer(data.tobytes(), dtype=np.uint8)
        return self.t["sensor_msgs/msg/Image"](
            header=self.header(stamp, self.config.camera_frame),
            height=h,
            width=w,
            encoding=encoding,
            is_bigendian=0,
            step=len(raw) // h,
            data=raw,
        )

    def compressed(self, stamp: int, rgb: np.ndarray):
        import cv2

        ok, buf = cv2.imencode(
            ".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality]
        )
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        return self.t["sensor_msgs/msg/CompressedImage"](
            header=self.header(stamp, self.config.camera_frame),
            format="rgb8; jpeg compressed bgr8",
            data=np.asarray(buf, dtype=np.uint8).reshape(-1),
        )

    def camera_info(self, stamp: int, k: np.ndarray):
        p = np.zeros((3, 4))
        p[:, :3] = k
        roi = self.t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        return self.t["sensor_msgs/msg/CameraInfo"](
            header=self.header(stamp, self.config.camera_frame),
            height=self.config.height,
            width=self.config.width,
            distortion_model="plumb_bob",
            d=np.zeros(5),
            k=k.reshape(-1).astype(np.float64),
            r=np.eye(3).reshape(-1),
            p=p.reshape(-1),
            binning_x=0,
            binning_y=0,
            roi=roi,
        )

    def _xyzq(self, matrix: np.ndarray):
        x, y, z, w = _rotation_to_quaternion(matrix[:3, :3])
        q = self.t["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w)
        tx, ty, tz = (float(v) for v in matrix[:3, 3])
        return (tx, ty, tz), q

    def pose_stamped(self, stamp: int, matrix: np.ndarray):
        (x, y, z), q = self._xyzq(matrix)
        pose = self.t["geometry_msgs/msg/Pose"](position=self.t["geometry_msgs/msg/Point"](x=x, y=y, z=z), orientation=q)
        return self.t["geometry_msgs/msg/PoseStamped"](header=self.header(stamp, self.config.world_frame), pose=pose)

    def tf(self, stamp: int, transforms: Sequence[tuple[str, str, np.ndarray]]):
        items = []
        for parent, child, matrix in transforms:
            (x, y, z), q = self._xyzq(matrix)
            transform = self.t["geometry_msgs/msg/Transform"](
                translation=self.t["geometry_msgs/msg/Vector3"](x=x, y=y, z=z), rotation=q
            )
            items.append(
                self.t["geometry_msgs/msg/TransformStamped"](
                    header=self.header(stamp, parent), child_frame_id=child, transform=transform
                )
            )
        return self.t["tf2_msgs/msg/TFMessage"](transforms=items)

    def string(self, text: str):
        return self.t["std_msgs/msg/String"](data=text)


def _latched_qos():
    """The QoS rosbag2 records for a transient-local (latched) publisher such as tf_static."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    infinite = QosTime(9223372036, 854775807)  # RMW_DURATION_INFINITE as rosbag2 writes it
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=1,
        reliability=QosReliability.RELIABLE,
        durability=QosDurability.TRANSIENT_LOCAL,
        deadline=infinite,
        lifespan=infinite,
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=infinite,
        avoid_ros_namespace_conventions=False,
    )


def write_sample_bag(
    path: str | Path,
    config: SampleConfig = SampleConfig(),
    *,
    compressed: bool = False,
    with_tf: bool = True,
) -> dict:
    """Render the sequence and write it as a rosbag2 MCAP bag directory at `path` (which must not exist).

    Topics (all stamped with the frame's stamp, header and bag log time alike):
    /camera/color/image_raw (rgb8 Image) or, with compressed, /camera/color/image_raw/compressed (JPEG),
    /camera/color/camera_info, /gt/depth (32FC1, metres), /gt/instances (16UC1), /gt/camera_pose (PoseStamped
    of the optical frame in world_frame), /gt/instance_labels (String, JSON {"id": "concept"}, once, latched),
    and with with_tf /tf (world_frame -> camera_link per frame) and /tf_static (camera_link -> camera_frame,
    once, latched). Returns a summary: path, topics -> message counts, types, frames, start/duration, bytes.
    """
    from rosbags.rosbag2 import Writer

    from perception_fm.replay.bag_io import rosbag2_writer

    path = Path(path)
    msgs = _Messages(config)
    store = msgs.store
    image_topic = TOPICS["image_compressed"] if compressed else TOPICS["image"]
    image_type = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    latched = [_latched_qos()]
    plan: list[tuple[str, str, list]] = [
        (TOPICS["instance_labels"], "std_msgs/msg/String", latched),
    ]
    if with_tf:
        plan.append((TOPICS["tf_static"], "tf2_msgs/msg/TFMessage", latched))
        plan.append((TOPICS["tf"], "tf2_msgs/msg/TFMessage", []))
    plan += [
        (image_topic, image_type, []),
        (TOPICS["camera_info"], "sensor_msgs/msg/CameraInfo", []),
        (TOPICS["depth"], "sensor_msgs/msg/Image", []),
        (TOPICS["instances"], "sensor_msgs/msg/Image", []),
        (TOPICS["camera_pose"], "geometry_msgs/msg/PoseStamped", []),
    ]
    counts = {topic: 0 for topic, _, _ in plan}
    types = {topic: msgtype for topic, msgtype, _ in plan}
    labels = {str(k): v for k, v in sorted(instance_labels(config).items())}

    # MCAP written with chunk CRCs (as `ros2 bag record` writes it), so damage to the sample can be detected
    writer = rosbag2_writer(path, version=Writer.VERSION_LATEST)
    writer.open()
    try:
        conns = {
            topic: writer.add_connection(topic, msgtype, typestore=store, offered_qos_profiles=qos)
            for topic, msgtype, qos in plan
        }

        def put(topic: str, stamp: int, msg: object) -> None:
            writer.write(conns[topic], stamp, msgs.serialize(msg))
            counts[topic] += 1

        t0 = stamp_ns(config, 0)
        put(TOPICS["instance_labels"], t0, msgs.string(json.dumps(labels, sort_keys=True)))
        if with_tf:
            put(TOPICS["tf_static"], t0,
                msgs.tf(t0, [(config.camera_link_frame, config.camera_frame, T_LINK_OPTICAL)]))
        k = intrinsics(config)
        for frame in render_sequence(config):
            t = frame.stamp_ns
            if with_tf:
                link = camera_link_to_world(config, frame.index)
                put(TOPICS["tf"], t, msgs.tf(t, [(config.world_frame, config.camera_link_frame, link)]))
            if compressed:
                put(image_topic, t, msgs.compressed(t, frame.rgb))
            else:
                put(image_topic, t, msgs.image(t, frame.rgb, "rgb8"))
            put(TOPICS["camera_info"], t, msgs.camera_info(t, k))
            put(TOPICS["depth"], t, msgs.image(t, frame.depth, "32FC1"))
            put(TOPICS["instances"], t, msgs.image(t, frame.instances, "16UC1"))
            put(TOPICS["camera_pose"], t, msgs.pose_stamped(t, frame.camera_to_world))
    except BaseException:
        writer.close()
        raise
    writer.close()

    start = stamp_ns(config, 0)
    end = stamp_ns(config, config.frames - 1)
    return {
        "path": str(path),
        "topics": counts,
        "types": types,
        "frames": config.frames,
        "messages": sum(counts.values()),
        "start_ns": start,
        "duration_ns": end - start,
        "duration_s": (end - start) / 1e9,
        "bytes": sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
    }


# -- CLI ---------------------------------------------------------------------------------------------------

def _looks_like_bag(path: Path) -> bool:
    if not path.is_dir():
        return False
    entries = list(path.iterdir())
    return not entries or (path / "metadata.yaml").exists() or any(e.suffix == ".mcap" for e in entries)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m perception_fm.replay.synthetic",
        description="Write the deterministic synthetic RGB-D sample (with ground truth) as a rosbag2 MCAP bag.",
    )
    defaults = SampleConfig()
    parser.add_argument("out", type=Path, help="output bag directory (must not exist unless --force)")
    parser.add_argument("--frames", type=int, default=defaults.frames)
    parser.add_argument("--width", type=int, default=defaults.width)
    parser.add_argument("--height", type=int, default=defaults.height)
    parser.add_argument("--rate", type=float, default=defaults.rate_hz, help="frame rate in Hz")
    parser.add_argument("--fov", type=float, default=defaults.fov_deg, help="horizontal field of view, degrees")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="appearance seed (textures)")
    parser.add_argument("--compressed", action="store_true", help="JPEG CompressedImage instead of raw rgb8")
    parser.add_argument("--no-tf", action="store_true", help="leave out /tf and /tf_static")
    parser.add_argument("--force", action="store_true", help="replace an existing bag directory")
    args = parser.parse_args(argv)

    out: Path = args.out
    if out.exists() or out.is_symlink():
        if not args.force:
            print(f"error: {out} exists; use --force to replace it", file=sys.stderr)
            return 2
        if not _looks_like_bag(out) or out.is_symlink():
            print(f"error: {out} is not a bag directory; refusing to remove it", file=sys.stderr)
            return 2
        shutil.rmtree(out)
    try:
        config = SampleConfig(width=args.width, height=args.height, frames=args.frames, rate_hz=args.rate,
                              fov_deg=args.fov, seed=args.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = write_sample_bag(out, config, compressed=args.compressed, with_tf=not args.no_tf)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
