"""What every importer writes, and how: the bag's topics, frames and units, and the per-frame writer.

Topics (the sample's, so config/sample.yaml and `perception-fm eval` work on an imported bag unchanged):
  /camera/color/image_raw     sensor_msgs/Image rgb8, frame CAMERA_FRAME
  /camera/color/camera_info   sensor_msgs/CameraInfo of that image (when the intrinsics are known)
  /gt/depth                   sensor_msgs/Image 32FC1, metres along the optical axis (REP 118); NaN = no data
  /gt/camera_info             CameraInfo of /gt/depth (its own size and intrinsics: depth may differ from colour)
  /gt/camera_pose             geometry_msgs/PoseStamped: the optical frame's pose (camera-to-world) in WORLD_FRAME
Frames: CAMERA_FRAME is an optical frame (REP 103: x right, y down, z forward); WORLD_FRAME is the dataset's fixed
frame (its own axes: TUM's motion-capture frame, 7-Scenes' / ScanNet's scene frame). Every message of a frame
carries the colour image's stamp, in header and log time alike, so the evaluator pairs them by stamp.

The output is written all or nothing (perception_fm.replay.output): an interrupted import leaves no bag.
"""
from __future__ import annotations

import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from perception_fm.errors import PerceptionFmError

IMAGE_TOPIC = "/camera/color/image_raw"
CAMERA_INFO_TOPIC = "/camera/color/camera_info"
GT_DEPTH_TOPIC = "/gt/depth"
GT_CAMERA_INFO_TOPIC = "/gt/camera_info"
GT_POSE_TOPIC = "/gt/camera_pose"
CAMERA_FRAME = "camera_color_optical_frame"
WORLD_FRAME = "world"
DEFAULT_START_NS = 1_700_000_000 * 10**9  # first stamp of formats without time stamps (as the sample's)
MAX_LISTED_SKIPS = 5  # skipped frames named one by one; the rest only counted
# builtin_interfaces/Time holds seconds in an int32 (>= 0 for a bag): a stamp past it cannot be serialised.
MAX_STAMP_NS = (2**31 - 1) * 10**9
# Stamps are whole nanoseconds counted from DEFAULT_START_NS: faster than 1 MHz they collide, slower than one
# frame per 1000 s a long sequence runs past MAX_STAMP_NS.
MIN_RATE_HZ, MAX_RATE_HZ = 1e-3, 1e6


def check_rate(rate_hz: float) -> float:
    """`rate_hz` when stamps can be made from it; DatasetError otherwise (0, negative, NaN, inf, absurd)."""
    if not (math.isfinite(rate_hz) and MIN_RATE_HZ <= rate_hz <= MAX_RATE_HZ):
        raise DatasetError(f"rate {rate_hz:g} Hz: give a rate between {MIN_RATE_HZ:g} and {MAX_RATE_HZ:g} Hz")
    return rate_hz


class DatasetError(PerceptionFmError):
    """The source cannot be imported; the text is one line naming the file and what is wrong with it."""


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels (OpenCV convention: pixel centres at integer coordinates) and the plumb_bob
    distortion coefficients (k1, k2, p1, p2, k3) of the raw image, zeros when none."""

    fx: float
    fy: float
    cx: float
    cy: float
    distortion: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)

    @property
    def matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @classmethod
    def parse(cls, text: str) -> "Intrinsics":
        """"fx,fy,cx,cy" (pixels)."""
        try:
            values = [float(v) for v in text.replace(" ", "").split(",")]
        except ValueError:
            values = []
        if len(values) != 4 or not all(math.isfinite(v) for v in values) or values[0] <= 0 or values[1] <= 0:
            raise DatasetError(f"intrinsics {text!r}: give fx,fy,cx,cy in pixels (fx, fy > 0)")
        return cls(*values)

    @classmethod
    def from_fov(cls, fov_deg: float, width: int, height: int) -> "Intrinsics":
        """Square pixels, principal point at the centre, horizontal field of view `fov_deg`."""
        if not 0 < fov_deg < 180:
            raise DatasetError(f"field of view {fov_deg} degrees: give one between 0 and 180")
        f = width / (2.0 * math.tan(math.radians(fov_deg) / 2.0))
        return cls(f, f, (width - 1) / 2.0, (height - 1) / 2.0)

    @classmethod
    def from_matrix_file(cls, path: Path) -> "Intrinsics":
        """A text file holding a 3x3 or 4x4 matrix whose upper-left 3x3 is K (ScanNet's intrinsic_*.txt)."""
        try:
            matrix = np.loadtxt(path, ndmin=2)
        except (OSError, ValueError) as error:
            raise DatasetError(f"intrinsics file {str(path)!r} unreadable: {_one_line(error)}") from error
        if matrix.shape not in ((3, 3), (4, 4)) or not np.all(np.isfinite(matrix)) or matrix[0, 0] <= 0 \
                or matrix[1, 1] <= 0:
            raise DatasetError(f"intrinsics file {str(path)!r}: expected a 3x3 or 4x4 matrix with K in its upper "
                               f"left, got shape {matrix.shape}")
        return cls(float(matrix[0, 0]), float(matrix[1, 1]), float(matrix[0, 2]), float(matrix[1, 2]))


@dataclass
class ImportSummary:
    source: str
    output: str
    format: str
    frames: int = 0  # frames written
    with_depth: int = 0
    with_pose: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> frames not written
    notes: list[str] = field(default_factory=list)  # what was assumed (intrinsics chosen, rate, ...)
    first_stamp_ns: int | None = None
    last_stamp_ns: int | None = None

    def line(self) -> str:
        skipped = sum(self.skipped.values())
        why = ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items()))
        duration = ((self.last_stamp_ns - self.first_stamp_ns) / 1e9 if self.first_stamp_ns is not None else 0.0)
        return (f"imported {self.frames} frames ({self.with_depth} with depth, {self.with_pose} with pose) over "
                f"{duration:.2f} s into {self.output}; skipped {skipped}" + (f" ({why})" if skipped else ""))


class FrameWriter:
    """Writes one frame at a time (bounded memory). Skips are counted (`skip`) and the first few named."""

    def __init__(self, writer, summary: ImportSummary):
        self.writer, self.summary = writer, summary
        self._last_stamp: int | None = None
        self._sizes: dict[str, tuple[int, int]] = {}
        self._notes = 0

    def skip(self, reason: str, text: str) -> None:
        self.summary.skipped[reason] += 1
        if sum(self.summary.skipped.values()) <= MAX_LISTED_SKIPS:
            print(f"warning: skipped: {text}", file=sys.stderr)

    def note(self, text: str) -> None:
        """Something about a frame that is written anyway (e.g. without pose): the first few are printed."""
        self._notes += 1
        if self._notes <= MAX_LISTED_SKIPS:
            print(f"warning: {text}", file=sys.stderr)

    def same_size(self, what: str, shape: tuple[int, int]) -> bool:
        """Whether `shape` (H, W) is that of the first `what` image (a sequence keeps one size)."""
        return self._sizes.setdefault(what, shape) == shape

    def write(self, stamp_ns: int, rgb: np.ndarray, intrinsics: Intrinsics | None, *,
              depth_m: np.ndarray | None = None, depth_intrinsics: Intrinsics | None = None,
              pose=None) -> None:
        """One frame: `rgb` (H, W, 3) uint8, `depth_m` float32 metres (NaN: no data), `pose` a
        geometry_msgs/Pose of the optical frame in WORLD_FRAME. Stamps must increase."""
        from geometry_msgs.msg import PoseStamped

        from perception_fm.ros.camera_info import make_camera_info
        from perception_fm.ros.image_codec import numpy_to_image
        from perception_fm.ros.tf import ns_to_time

        if not 0 <= stamp_ns <= MAX_STAMP_NS:
            raise DatasetError(f"stamp {stamp_ns / 1e9:.9g} s is outside what a ROS time holds (0 to "
                               f"{MAX_STAMP_NS // 10**9} s since 1970)")
        if self._last_stamp is not None and stamp_ns <= self._last_stamp:
            raise DatasetError(f"stamps must increase: {stamp_ns} ns follows {self._last_stamp} ns")
        self._last_stamp = stamp_ns
        stamp = ns_to_time(stamp_ns)

        def header():
            from std_msgs.msg import Header

            return Header(stamp=stamp, frame_id=CAMERA_FRAME)

        self.writer.write(IMAGE_TOPIC, numpy_to_image(rgb, "rgb8", header()), stamp_ns)
        if intrinsics is not None:
            self.writer.write(CAMERA_INFO_TOPIC, _camera_info(make_camera_info, intrinsics, rgb.shape, header()),
                              stamp_ns)
        if depth_m is not None:
            self.writer.write(GT_DEPTH_TOPIC, numpy_to_image(depth_m.astype(np.float32), "32FC1", header()),
                              stamp_ns)
            if depth_intrinsics is not None:
                self.writer.write(GT_CAMERA_INFO_TOPIC, _camera_info(make_camera_info, depth_intrinsics,
                                                                     depth_m.shape, header()), stamp_ns)
            self.summary.with_depth += 1
        if pose is not None:
            message = PoseStamped(pose=pose)
            message.header.stamp, message.header.frame_id = stamp, WORLD_FRAME
            self.writer.write(GT_POSE_TOPIC, message, stamp_ns)
            self.summary.with_pose += 1
        self.summary.frames += 1
        if self.summary.first_stamp_ns is None:
            self.summary.first_stamp_ns = stamp_ns
        self.summary.last_stamp_ns = stamp_ns


def _camera_info(make_camera_info, intrinsics: Intrinsics, shape, header):
    try:
        info = make_camera_info(intrinsics.matrix, shape[1], shape[0], header)
    except ValueError as error:  # e.g. a calibration for 640x480 on images of another size
        raise DatasetError(f"intrinsics fx={intrinsics.fx:g} fy={intrinsics.fy:g} cx={intrinsics.cx:g} "
                           f"cy={intrinsics.cy:g} do not fit the {shape[1]}x{shape[0]} images ({_one_line(error)}); "
                           "give --intrinsics fx,fy,cx,cy for this size") from error
    info.d = [float(v) for v in intrinsics.distortion]
    return info


def write_bag(output: str | Path, summary: ImportSummary, frames: Callable[[FrameWriter], None], *,
              overwrite: bool = False) -> ImportSummary:
    """Run `frames(writer)` into a new MCAP bag at `output` (all or nothing); DatasetError when no frame
    could be written."""
    from perception_fm.replay.bag_io import BagWriter
    from perception_fm.replay.output import write_atomically

    def write(partial: Path) -> ImportSummary:
        with BagWriter(partial, compress=True) as writer:  # depth and images: zstd chunks, about half the size
            frames(FrameWriter(writer, summary))
        if summary.frames == 0:
            why = ", ".join(f"{count} {reason}" for reason, count in sorted(summary.skipped.items()))
            raise DatasetError(f"no frame of {summary.source!r} could be imported" + (f" ({why})" if why else ""))
        return summary

    return write_atomically(Path(output), overwrite, write, DatasetError)


# -- reading images -----------------------------------------------------------------------------------------

class Unreadable(Exception):
    """An image file that cannot be used; `reason` is the skip counter's key."""

    def __init__(self, reason: str, text: str):
        self.reason = reason
        super().__init__(text)


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a colour image file (8-bit; grey images are expanded to three channels)."""
    import cv2

    if not path.is_file():
        raise Unreadable("missing_file", f"{str(path)!r} does not exist")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise Unreadable("unreadable_image", f"{str(path)!r} is not a readable image")
    return np.ascontiguousarray(image[:, :, ::-1])


def read_depth(path: Path, units_per_metre: float, invalid: tuple[int, ...] = (0,)) -> np.ndarray:
    """Metres (float32, NaN where the sensor had no value) of a uint16 depth PNG holding `units_per_metre`
    units per metre (TUM: 5000; 7-Scenes / ScanNet: 1000)."""
    import cv2

    if not path.is_file():
        raise Unreadable("missing_file", f"{str(path)!r} does not exist")
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise Unreadable("unreadable_image", f"{str(path)!r} is not a readable image")
    if raw.dtype != np.uint16 or raw.ndim != 2:
        raise Unreadable("depth_not_uint16", f"{str(path)!r} is {raw.dtype} with shape {raw.shape}, not a "
                         "single-channel 16-bit depth image")
    depth = raw.astype(np.float32) / np.float32(units_per_metre)
    depth[np.isin(raw, invalid)] = np.nan
    return depth


def check_sizes(writer: FrameWriter, rgb: np.ndarray, depth: np.ndarray | None, name: str,
                same_aspect: bool = False) -> None:
    """Raise Unreadable("size_mismatch") when the frame's images are not the sequence's size, or depth is not
    the colour's size (`same_aspect`: only its aspect ratio, within 2%, for layouts that store depth smaller)."""
    if not writer.same_size("colour", rgb.shape[:2]):
        raise Unreadable("size_mismatch", f"{name}: colour is {rgb.shape[1]}x{rgb.shape[0]}, the sequence's "
                         f"first is {writer._sizes['colour'][1]}x{writer._sizes['colour'][0]}")
    if depth is None:
        return
    if not writer.same_size("depth", depth.shape):
        raise Unreadable("size_mismatch", f"{name}: depth is {depth.shape[1]}x{depth.shape[0]}, the sequence's "
                         f"first is {writer._sizes['depth'][1]}x{writer._sizes['depth'][0]}")
    if same_aspect:
        ratio = (depth.shape[1] / depth.shape[0]) / (rgb.shape[1] / rgb.shape[0])
        if abs(ratio - 1.0) > 0.02:
            raise Unreadable("size_mismatch", f"{name}: depth {depth.shape[1]}x{depth.shape[0]} and colour "
                             f"{rgb.shape[1]}x{rgb.shape[0]} differ in aspect ratio")
    elif depth.shape != rgb.shape[:2]:
        raise Unreadable("size_mismatch", f"{name}: depth {depth.shape[1]}x{depth.shape[0]} and colour "
                         f"{rgb.shape[1]}x{rgb.shape[0]} differ in size")


def _one_line(error) -> str:
    return " ".join(str(error).split())
