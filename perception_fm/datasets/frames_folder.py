"""Per-frame folders: 7-Scenes and ScanNet-style (exported) sequences. No time stamps: frames are stamped at a
given rate from DEFAULT_START_NS, in frame-number order.

  7-Scenes  one folder: frame-000000.color.png, frame-000000.depth.png, frame-000000.pose.txt, …
  ScanNet   color/0.jpg, depth/0.png, pose/0.txt, intrinsic/intrinsic_color.txt, intrinsic/intrinsic_depth.txt

Depth PNGs are uint16 millimetres (`depth_scale` units per metre, 1000 by default; 0 and 65535 mean no data).
Pose files hold the 4x4 camera-to-world matrix of the camera's optical frame (x right, y down, z forward), as
both datasets define it; a pose that is not a rigid transform (ScanNet marks lost tracking with -inf) leaves its
frame without pose, counted. Intrinsics: ScanNet's intrinsic files when present; otherwise `intrinsics`
(fx,fy,cx,cy) or an intrinsics file, and for 7-Scenes the calibration it publishes (585, 585, 320, 240) when none
is given. Depth may be stored smaller than colour (ScanNet): it keeps its own size and intrinsics on
/gt/camera_info (the evaluator resamples it to the prediction's size).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perception_fm.datasets.bag import (DEFAULT_START_NS, DatasetError, FrameWriter, ImportSummary, Intrinsics,
                                        Unreadable, check_rate, check_sizes, read_depth, read_rgb, write_bag)

SEVEN_SCENES_INTRINSICS = Intrinsics(585.0, 585.0, 320.0, 240.0)  # published with the dataset
INVALID_DEPTH = (0, 65535)
DEFAULT_RATE_HZ = 30.0  # both datasets were recorded at 30 Hz


@dataclass
class FrameFiles:
    number: int
    colour: Path
    depth: Path | None
    pose: Path | None


def _natural(path: Path) -> int:
    return int(re.search(r"(\d+)", path.name).group(1))


def find_frames(folder: Path) -> tuple[str, list[FrameFiles]]:
    """("7scenes" | "scannet", frames in number order); DatasetError when the folder is neither layout."""
    if not folder.is_dir():
        raise DatasetError(f"{str(folder)!r} is not a folder")
    seven = sorted(folder.glob("frame-*.color.png"), key=_natural)
    if seven:
        return "7scenes", [FrameFiles(_natural(c), c, c.with_name(c.name.replace(".color.png", ".depth.png")),
                                      c.with_name(c.name.replace(".color.png", ".pose.txt"))) for c in seven]
    if (folder / "color").is_dir():
        colours = sorted((p for p in (folder / "color").iterdir() if re.fullmatch(r"\d+\.(jpg|jpeg|png)", p.name)),
                         key=_natural)
        if not colours:
            raise DatasetError(f"{str(folder / 'color')!r} holds no numbered colour images (0.jpg, 1.jpg, …)")
        return "scannet", [FrameFiles(_natural(c), c, folder / "depth" / f"{_natural(c)}.png",
                                      folder / "pose" / f"{_natural(c)}.txt") for c in colours]
    raise DatasetError(f"{str(folder)!r} is neither a 7-Scenes sequence (frame-NNNNNN.color.png, .depth.png, "
                       ".pose.txt) nor a ScanNet-style export (color/, depth/, pose/, intrinsic/)")


def read_pose(path: Path, pose_class):
    """geometry_msgs/Pose of a 4x4 camera-to-world text file; Unreadable when missing or not a rigid transform."""
    from perception_fm.ros.tf import matrix_to_pose

    if not path.is_file():
        raise Unreadable("missing_file", f"{str(path)!r} does not exist")
    try:
        matrix = np.loadtxt(path, ndmin=2)
    except ValueError as error:
        raise Unreadable("bad_pose", f"{str(path)!r}: not a 4x4 matrix ({' '.join(str(error).split())})") from error
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise Unreadable("bad_pose", f"{str(path)!r}: not a finite 4x4 matrix")
    rotation = matrix[:3, :3]
    if (not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-3) or abs(np.linalg.det(rotation) - 1) > 1e-3
            or not np.allclose(matrix[3], [0, 0, 0, 1], atol=1e-6)):
        raise Unreadable("bad_pose", f"{str(path)!r}: not a rigid transform")
    return matrix_to_pose(matrix)


def import_frames(source: str | Path, output: str | Path, *, rate_hz: float = DEFAULT_RATE_HZ,
                  intrinsics: str | None = None, intrinsics_file: str | None = None,
                  depth_intrinsics: str | None = None, depth_scale: float = 1000.0,
                  overwrite: bool = False) -> ImportSummary:
    from geometry_msgs.msg import Pose

    folder = Path(source)
    layout, files = find_frames(folder)
    check_rate(rate_hz)
    if not depth_scale > 0:
        raise DatasetError(f"depth scale {depth_scale}: give the depth PNGs' units per metre (1000 for mm)")
    summary = ImportSummary(str(folder), str(output), f"frames ({layout})", notes=[f"stamped at {rate_hz:g} Hz"])
    colour_k, depth_k = _intrinsics(folder, layout, intrinsics, intrinsics_file, depth_intrinsics, summary)
    period_ns = 1e9 / rate_hz

    def frames(writer: FrameWriter) -> None:
        first = files[0].number
        for frame in files:
            name = f"frame {frame.number}"
            try:
                rgb = read_rgb(frame.colour)
                depth = read_depth(frame.depth, depth_scale, INVALID_DEPTH)
                check_sizes(writer, rgb, depth, name, same_aspect=layout == "scannet")
            except Unreadable as error:
                writer.skip(error.reason, f"{name}: {error}")
                continue
            try:
                pose = read_pose(frame.pose, Pose)
            except Unreadable as error:  # the frame still counts for depth; the summary says how many have poses
                writer.note(f"{name} without pose: {error}")
                pose = None
            writer.write(DEFAULT_START_NS + round((frame.number - first) * period_ns), rgb, colour_k,
                         depth_m=depth, depth_intrinsics=depth_k, pose=pose)

    return write_bag(output, summary, frames, overwrite=overwrite)


def _intrinsics(folder: Path, layout: str, intrinsics, intrinsics_file, depth_intrinsics,
                summary: ImportSummary) -> tuple[Intrinsics, Intrinsics]:
    """(colour, depth) intrinsics: given ones first, then the layout's own files, then its published ones."""
    colour = None
    if intrinsics:
        colour = Intrinsics.parse(intrinsics)
    elif intrinsics_file:
        colour = Intrinsics.from_matrix_file(Path(intrinsics_file))
    elif layout == "scannet" and (folder / "intrinsic" / "intrinsic_color.txt").is_file():
        colour = Intrinsics.from_matrix_file(folder / "intrinsic" / "intrinsic_color.txt")
        summary.notes.append("colour intrinsics: intrinsic/intrinsic_color.txt")
    elif layout == "7scenes":
        colour = SEVEN_SCENES_INTRINSICS
        summary.notes.append("intrinsics: 7-Scenes' published 585, 585, 320, 240")
    if colour is None:
        raise DatasetError(f"no intrinsics for {str(folder)!r}: give --intrinsics fx,fy,cx,cy or --intrinsics-file "
                           "(a 3x3 or 4x4 matrix)")
    if depth_intrinsics:
        depth = Intrinsics.parse(depth_intrinsics)
    elif layout == "scannet" and (folder / "intrinsic" / "intrinsic_depth.txt").is_file():
        depth = Intrinsics.from_matrix_file(folder / "intrinsic" / "intrinsic_depth.txt")
        summary.notes.append("depth intrinsics: intrinsic/intrinsic_depth.txt")
    else:
        depth = colour
    return colour, depth
