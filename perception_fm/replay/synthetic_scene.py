"""The synthetic sample's scene: configuration, objects, the camera's path, the objects' motions and the camera
rig. No rendering, no bag writing (perception_fm.replay.synthetic_render, .synthetic_bag); the overview and
the conventions are in perception_fm.replay.synthetic.

Rig (``rig_cameras`` > 1): 2-3 cameras rigidly mounted on the moving camera_link, with known extrinsics
(`rig_mount`) that the bag writer puts on /tf_static. Every mount translation is a multiple of
``rig_baseline`` (the distance between cameras 0 and 1), so doubling the baseline doubles the rig while the
directions the cameras look in stay the same. ``rig_cameras`` = 1 is the single-camera sample, unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

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

PER_CAMERA_TOPICS = ("image", "image_compressed", "camera_info", "depth", "instances", "camera_pose")

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
    # rig: 1 = the single camera (camera_frame on TOPICS); 2-3 = cameras mounted on camera_link (rig_mount),
    # each on its own topics and optical frame (rig_topics, rig_camera_frame)
    rig_cameras: int = 1
    rig_baseline: float = 0.3  # metres between cameras 0 and 1 (every mount offset scales with it)

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
        if not 1 <= self.rig_cameras <= RIG_MAX_CAMERAS:
            raise ValueError(f"rig_cameras must be in [1, {RIG_MAX_CAMERAS}], got {self.rig_cameras}")
        if not (self.rig_baseline > 0 and math.isfinite(self.rig_baseline)):
            raise ValueError(f"rig_baseline must be positive, got {self.rig_baseline}")


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
    camera: int = 0  # which camera of the rig (0 without a rig)


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


def camera_to_world(config: SampleConfig, index: int, camera: int = 0) -> np.ndarray:
    """c2w of the optical frame of `camera` (0 for the single camera): camera_link_to_world @ rig_mount @
    T_LINK_OPTICAL (the mount is the identity without a rig)."""
    return camera_link_to_world(config, index) @ rig_mount(config, camera) @ T_LINK_OPTICAL


# -- camera rig --------------------------------------------------------------------------------------------

RIG_MAX_CAMERAS = 3
# Mounts on camera_link (x forward, y left, z up): (offset in units of rig_baseline, yaw in degrees). Cameras
# 0 and 1 are a stereo pair toed out by 8 degrees each, so most of their views overlap; camera 2 sits between
# and above them looking 45 degrees left, overlapping camera 0 by about 25 degrees.
_RIG_MOUNTS = (
    ((0.0, 0.5, 0.0), 8.0),
    ((0.0, -0.5, 0.0), -8.0),
    ((0.1, 0.0, 0.4), 45.0),
)


def rig_mount(config: SampleConfig, camera: int) -> np.ndarray:
    """camera_link -> the camera's body frame (x forward, y left, z up), 4x4: the rig's known extrinsics
    (the identity for the single camera)."""
    if not 0 <= camera < config.rig_cameras:
        raise IndexError(f"camera {camera} outside the rig's {config.rig_cameras} cameras")
    if config.rig_cameras == 1:
        return np.eye(4)
    offset, yaw = _RIG_MOUNTS[camera]
    return _pose(_rot_z(math.radians(yaw)), config.rig_baseline * np.asarray(offset))


def rig_camera_frame(config: SampleConfig, camera: int) -> str:
    """The optical frame of `camera`: camera_frame for the single camera, cam<i>_color_optical_frame in a rig."""
    return config.camera_frame if config.rig_cameras == 1 else f"cam{camera}_color_optical_frame"


def rig_topics(config: SampleConfig, camera: int) -> dict[str, str]:
    """The per-camera topics of `camera` (TOPICS' keys image, image_compressed, camera_info, depth, instances,
    camera_pose): TOPICS itself for the single camera, under /cam<i> and /gt/cam<i> in a rig."""
    if config.rig_cameras == 1:
        return {key: TOPICS[key] for key in PER_CAMERA_TOPICS}
    return {
        "image": f"/cam{camera}/color/image_raw",
        "image_compressed": f"/cam{camera}/color/image_raw/compressed",
        "camera_info": f"/cam{camera}/color/camera_info",
        "depth": f"/gt/cam{camera}/depth",
        "instances": f"/gt/cam{camera}/instances",
        "camera_pose": f"/gt/cam{camera}/camera_pose",
    }


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
