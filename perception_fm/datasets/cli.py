"""`perception-fm import FORMAT SRC OUT_BAG`: the import subcommand's options, one sub-parser per format."""
from __future__ import annotations

import argparse


def add_import_parser(sub) -> None:
    """Add `import` to the perception-fm subcommands `sub`."""
    from perception_fm.datasets import frames_folder, images_video, tum_rgbd

    parser = sub.add_parser("import", help="a dataset (TUM RGB-D, 7-Scenes/ScanNet, images, video) into an MCAP "
                                           "bag with ground truth on /gt/*")
    formats = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")

    def common(p: argparse.ArgumentParser, src_help: str) -> None:
        p.add_argument("src", metavar="SRC", help=src_help)
        p.add_argument("out", metavar="OUT_BAG", help="output bag directory (MCAP); must not exist unless --overwrite")
        p.add_argument("--overwrite", action="store_true", help="replace an existing output once the new one is "
                                                                "complete")
        p.set_defaults(func=cmd_import)

    tum = formats.add_parser("tum", help="TUM RGB-D folder (rgb.txt, depth.txt, groundtruth.txt)")
    common(tum, "the sequence folder, e.g. rgbd_dataset_freiburg1_xyz")
    tum.add_argument("--camera", choices=sorted(tum_rgbd.CAMERAS),
                     help="which Kinect's published calibration (default: from the folder name)")
    tum.add_argument("--intrinsics", metavar="FX,FY,CX,CY", help="colour intrinsics instead of TUM's calibration")
    tum.add_argument("--max-difference", type=float, default=tum_rgbd.MAX_DIFFERENCE_S,
                     help=f"association tolerance in seconds (default {tum_rgbd.MAX_DIFFERENCE_S})")

    frames = formats.add_parser("frames", help="7-Scenes / ScanNet-style per-frame colour, depth and pose files")
    common(frames, "the sequence folder (7-Scenes seq-01/, or a ScanNet export with color/ depth/ pose/)")
    frames.add_argument("--rate", type=float, default=frames_folder.DEFAULT_RATE_HZ, help="frame rate in Hz")
    frames.add_argument("--intrinsics", metavar="FX,FY,CX,CY", help="colour intrinsics")
    frames.add_argument("--intrinsics-file", metavar="PATH", help="colour intrinsics as a 3x3 or 4x4 matrix file")
    frames.add_argument("--depth-intrinsics", metavar="FX,FY,CX,CY", help="depth intrinsics (default: colour's, "
                                                                          "or ScanNet's intrinsic_depth.txt)")
    frames.add_argument("--depth-scale", type=float, default=1000.0, help="depth PNG units per metre (1000: mm)")

    for name, help_text, src_help in (("images", "a folder of images (no ground truth)", "the image folder"),
                                      ("video", "a video file (no ground truth)", "the video file")):
        p = formats.add_parser(name, help=help_text)
        common(p, src_help)
        default = f"default {images_video.DEFAULT_RATE_HZ:g}" if name == "images" else "default: the video's own"
        p.add_argument("--rate", type=float, default=images_video.DEFAULT_RATE_HZ if name == "images" else None,
                       help=f"frame rate in Hz ({default})")
        p.add_argument("--intrinsics", metavar="FX,FY,CX,CY", help="intrinsics (then camera_info is written)")
        p.add_argument("--fov", type=float, metavar="DEG", help="or the horizontal field of view in degrees")


def cmd_import(args) -> int:
    from perception_fm.datasets import frames_folder, images_video, tum_rgbd

    if args.format == "tum":
        summary = tum_rgbd.import_tum(args.src, args.out, camera=args.camera, intrinsics=args.intrinsics,
                                      max_difference=args.max_difference, overwrite=args.overwrite)
    elif args.format == "frames":
        summary = frames_folder.import_frames(args.src, args.out, rate_hz=args.rate, intrinsics=args.intrinsics,
                                              intrinsics_file=args.intrinsics_file,
                                              depth_intrinsics=args.depth_intrinsics, depth_scale=args.depth_scale,
                                              overwrite=args.overwrite)
    elif args.format == "images":
        summary = images_video.import_images(args.src, args.out, rate_hz=args.rate, intrinsics=args.intrinsics,
                                             fov_deg=args.fov, overwrite=args.overwrite)
    else:
        summary = images_video.import_video(args.src, args.out, rate_hz=args.rate, intrinsics=args.intrinsics,
                                            fov_deg=args.fov, overwrite=args.overwrite)
    for note in summary.notes:
        print(f"  {note}")
    print(summary.line())
    return 0
