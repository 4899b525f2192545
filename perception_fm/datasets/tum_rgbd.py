"""TUM RGB-D benchmark sequences (a folder with rgb.txt, depth.txt, groundtruth.txt and the rgb/, depth/ images).

Each list is "timestamp value…" per line ('#' comments), timestamps in seconds. Colour, depth and ground truth
come from unsynchronised streams; as the benchmark's own tools do, each colour image is paired with the depth
image and the ground-truth pose nearest in time within `max_difference` (0.02 s by default), greedily by
smallest time difference, each used once (associate()). A frame is a colour image with its depth; it carries the
colour image's stamp; its pose is the associated ground-truth line written as given (a frame without one within
the tolerance is written without pose and counted). Depth PNGs are uint16, 5000 units per metre (0: no data).
Ground truth is "tx ty tz qx qy qz qw": the colour camera's optical centre and orientation in the
motion-capture world, i.e. the optical frame's camera-to-world pose, which is what /gt/camera_pose holds. The
depth images are registered to the colour camera, so both use the colour intrinsics.

Intrinsics: the calibrations TUM publishes for its three Kinects (Freiburg 1, 2, 3; chosen from the folder name,
rgbd_dataset_freiburgN_…, or `camera`), or given as fx,fy,cx,cy.
"""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np

from perception_fm.datasets.bag import (DatasetError, FrameWriter, ImportSummary, Intrinsics, Unreadable,
                                        check_sizes, read_depth, read_rgb, write_bag)

DEPTH_UNITS_PER_METRE = 5000.0
MAX_DIFFERENCE_S = 0.02
# TUM's published colour-camera calibrations (plumb_bob distortion k1, k2, p1, p2, k3), per Kinect.
CAMERAS = {
    "fr1": Intrinsics(517.3, 516.5, 318.6, 255.3, (0.2624, -0.9531, -0.0054, 0.0026, 1.1633)),
    "fr2": Intrinsics(520.9, 521.0, 325.1, 249.7, (0.2312, -0.7849, -0.0033, -0.0001, 0.9172)),
    "fr3": Intrinsics(535.4, 539.2, 320.1, 247.6),
}


def read_list(path: Path, columns: int) -> tuple[np.ndarray, list[int], list[list[str]]]:
    """(timestamps in s, stamps in ns, the other columns) of a TUM list file; DatasetError naming the file and
    line when one is malformed or the timestamps do not increase."""
    if not path.is_file():
        raise DatasetError(f"{str(path)!r} does not exist (a TUM RGB-D folder has rgb.txt, depth.txt and "
                           "groundtruth.txt)")
    seconds, stamps, values = [], [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.replace(",", " ").split()
        try:
            if len(fields) != columns + 1:
                raise ValueError(f"expected {columns + 1} fields, got {len(fields)}")
            stamp = int(Decimal(fields[0]) * 10**9)  # exact: no float rounding of the nanoseconds
            if columns > 1:  # numbers (ground truth), not file names
                [float(v) for v in fields[1:]]
        except (ValueError, InvalidOperation) as error:
            raise DatasetError(f"{str(path)!r} line {number}: malformed, expected a timestamp and {columns} "
                               f"{'numbers' if columns > 1 else 'file name'} ({line[:60]!r})") from error
        if stamps and stamp <= stamps[-1]:
            raise DatasetError(f"{str(path)!r} line {number}: timestamp {fields[0]} does not increase (previous "
                               f"{stamps[-1] / 1e9:.6f})")
        stamps.append(stamp)
        seconds.append(float(fields[0]))
        values.append(fields[1:])
    if not stamps:
        raise DatasetError(f"{str(path)!r} lists nothing")
    return np.array(seconds), stamps, values


def associate(first: np.ndarray, second: np.ndarray, max_difference: float = MAX_DIFFERENCE_S,
              offset: float = 0.0) -> list[tuple[int, int]]:
    """Index pairs (i, j), sorted by i, matching `first[i]` with `second[j] + offset` where they differ by less
    than `max_difference`: candidate pairs taken in order of increasing difference, each index used at most once
    (the greedy matching of the TUM benchmark's associate tool)."""
    shifted = np.asarray(second, np.float64) + offset
    first = np.asarray(first, np.float64)
    order = np.argsort(shifted, kind="stable")
    ordered = shifted[order]
    low = np.searchsorted(ordered, first - max_difference, "left")
    high = np.searchsorted(ordered, first + max_difference, "right")
    counts = high - low
    i = np.repeat(np.arange(len(first)), counts)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    j = order[np.repeat(low, counts) + within]
    difference = np.abs(first[i] - shifted[j])
    keep = difference < max_difference
    i, j, difference = i[keep], j[keep], difference[keep]
    pairs, used_i, used_j = [], set(), set()
    for k in np.lexsort((j, i, difference)):
        a, b = int(i[k]), int(j[k])
        if a not in used_i and b not in used_j:
            used_i.add(a)
            used_j.add(b)
            pairs.append((a, b))
    return sorted(pairs)


def camera_of(folder: Path, camera: str | None, intrinsics: str | None) -> tuple[Intrinsics, str]:
    """The colour camera's intrinsics and a note saying where they came from."""
    if intrinsics:
        return Intrinsics.parse(intrinsics), f"intrinsics given: {intrinsics}"
    if camera is None:
        match = re.search(r"(?:freiburg|fr)([123])(?![0-9])", folder.resolve().name.lower())
        if match is None:
            raise DatasetError(f"cannot tell the Kinect (Freiburg 1, 2 or 3) from the folder name "
                               f"{folder.resolve().name!r}; give --camera fr1|fr2|fr3 or --intrinsics fx,fy,cx,cy")
        camera = f"fr{match.group(1)}"
    if camera not in CAMERAS:
        raise DatasetError(f"camera {camera!r}: one of {', '.join(CAMERAS)}")
    return CAMERAS[camera], f"intrinsics: TUM's published {camera} calibration"


def import_tum(source: str | Path, output: str | Path, *, camera: str | None = None, intrinsics: str | None = None,
               max_difference: float = MAX_DIFFERENCE_S, overwrite: bool = False) -> ImportSummary:
    from geometry_msgs.msg import Pose

    folder = Path(source)
    if not folder.is_dir():
        raise DatasetError(f"{str(folder)!r} is not a folder (a TUM RGB-D sequence is a folder with rgb.txt, "
                           "depth.txt and groundtruth.txt)")
    if not max_difference > 0:
        raise DatasetError(f"max difference {max_difference} s: give a positive tolerance")
    colour_k, note = camera_of(folder, camera, intrinsics)
    rgb_s, rgb_ns, rgb_files = read_list(folder / "rgb.txt", 1)
    depth_s, _, depth_files = read_list(folder / "depth.txt", 1)
    gt_s, _, gt_rows = read_list(folder / "groundtruth.txt", 7)
    with_depth = dict(associate(rgb_s, depth_s, max_difference))
    if not with_depth:
        raise DatasetError(f"no colour image of {str(folder)!r} has a depth image within {max_difference} s "
                           f"(colour {rgb_s[0]:.3f}–{rgb_s[-1]:.3f} s, depth {depth_s[0]:.3f}–{depth_s[-1]:.3f} s)")
    with_pose = dict(associate(rgb_s[list(with_depth)], gt_s, max_difference))
    summary = ImportSummary(str(folder), str(output), "tum", notes=[note])
    summary.skipped["no_depth_within_tolerance"] = len(rgb_s) - len(with_depth)
    if not summary.skipped["no_depth_within_tolerance"]:
        del summary.skipped["no_depth_within_tolerance"]

    def frames(writer: FrameWriter) -> None:
        for n, (i, j) in enumerate(sorted(with_depth.items())):
            name = f"rgb.txt entry {rgb_files[i][0]!r}"
            try:
                rgb = read_rgb(folder / rgb_files[i][0])
                depth = read_depth(folder / depth_files[j][0], DEPTH_UNITS_PER_METRE)
                check_sizes(writer, rgb, depth, name)
            except Unreadable as error:
                writer.skip(error.reason, f"{name}: {error}")
                continue
            pose = None
            if n in with_pose:
                row = gt_rows[with_pose[n]]
                pose = _pose(Pose, row)
            writer.write(rgb_ns[i], rgb, colour_k, depth_m=depth, depth_intrinsics=colour_k, pose=pose)

    return write_bag(output, summary, frames, overwrite=overwrite)


def _pose(pose_class, row: list[str]):
    """geometry_msgs/Pose of "tx ty tz qx qy qz qw" (quaternion normalised, sign as given); None when the
    numbers are not a pose (not finite, zero quaternion): the frame is then written without one."""
    values = np.array([float(v) for v in row])
    q = values[3:]
    norm = float(np.linalg.norm(q))
    if not np.all(np.isfinite(values)) or norm < 1e-6:
        return None
    q = q / norm
    pose = pose_class()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in values[:3])
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = (float(v) for v in q)
    return pose
