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

Rig (``SampleConfig(rig_cameras=2 or 3)``): the same scene seen at once by 2-3 cameras rigidly mounted on the
moving camera_link with known extrinsics (synthetic_scene.rig_mount, on /tf_static), each on its own topics
(synthetic_scene.rig_topics) with its own ground truth; ``rig_baseline`` scales the rig.

Modules: synthetic_scene (configuration, objects, motions, rig), synthetic_render (appearance, ray casting),
synthetic_bag (the rosbag2 writer); this module re-exports their public names and holds the CLI.

CLI: ``python -m perception_fm.replay.synthetic OUT_BAG_DIR [--frames N --width W --height H --seed S
--compressed --no-tf --rig N --baseline M --force]``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Sequence

from perception_fm.replay.synthetic_bag import write_sample_bag
from perception_fm.replay.synthetic_render import render_frame, render_sequence
from perception_fm.replay.synthetic_scene import (
    CAMERA_LINK_FRAME,
    ROOM_MAX,
    ROOM_MIN,
    TOPICS,
    T_LINK_OPTICAL,
    Frame,
    SampleConfig,
    SceneObject,
    camera_link_to_world,
    camera_to_world,
    instance_labels,
    intrinsics,
    moving_instance_ids,
    object_poses,
    rig_camera_frame,
    rig_mount,
    rig_topics,
    scene_objects,
    stamp_ns,
)
from perception_fm.replay.synthetic_scene import _rot_x, _rot_y, _rot_z  # noqa: F401  (tests build rotations)

__all__ = [
    "CAMERA_LINK_FRAME",
    "Frame",
    "ROOM_MAX",
    "ROOM_MIN",
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
    "rig_camera_frame",
    "rig_mount",
    "rig_topics",
    "scene_objects",
    "stamp_ns",
    "write_sample_bag",
]


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
    parser.add_argument("--rig", type=int, default=defaults.rig_cameras,
                        help="cameras: 1 = the single camera; 2-3 = a rig with known extrinsics on /tf_static")
    parser.add_argument("--baseline", type=float, default=defaults.rig_baseline,
                        help="rig baseline in metres (distance between cameras 0 and 1)")
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
                              fov_deg=args.fov, seed=args.seed, rig_cameras=args.rig, rig_baseline=args.baseline)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = write_sample_bag(out, config, compressed=args.compressed, with_tf=not args.no_tf)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
