"""perception-fm eval OUT_BAG [--gt GT_BAG] [--report PATH] [--json PATH]: evaluate a replay's output bag
against ground truth, print the metric table, optionally write the HTML report and the numbers as JSON."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from perception_fm.eval import depth as depth_eval


def build_parser(prog: str = "perception-fm eval") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0],
        epilog="Ground truth comes from the output bag's own /gt/* topics (the replay passes its input through) "
               "unless --gt names another bag (e.g. the replay's input). Metrics whose topics are missing are "
               "skipped and listed; rows marked * in the table are the headline numbers.")
    parser.add_argument("out_bag", metavar="OUT_BAG", help="the replay's output bag")
    parser.add_argument("--gt", metavar="GT", help="bag with the ground-truth topics (default: OUT_BAG itself)")
    parser.add_argument("--report", metavar="PATH", help="write a self-contained HTML report here")
    parser.add_argument("--json", metavar="PATH", help="write the numbers as JSON here")
    add_eval_arguments(parser)
    return parser


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The evaluation settings (shared by `perception-fm eval` and `perception-fm batch`)."""
    tuning = parser.add_argument_group("evaluation settings")
    tuning.add_argument("--max-depth", type=float, help="ignore ground truth beyond this depth (m)")
    tuning.add_argument("--min-depth", type=float, default=0.0, help="ignore ground truth at or below this depth")
    tuning.add_argument("--depth-alignment", choices=("auto",) + depth_eval.MODES, default="auto",
                        help="depth alignment; auto: from /depth/info (metric → none, relative → per-frame or "
                             "per-sequence median scale)")
    tuning.add_argument("--shift-space", choices=("depth", "disparity"), default="depth",
                        help="space of the scale_shift least-squares fit")
    tuning.add_argument("--estimated-frame", default="da3_camera", help="TF child frame of the estimated pose")
    tuning.add_argument("--world-frame", default="", help="its parent (default: whichever publishes it)")
    tuning.add_argument("--max-time-diff", type=float, default=0.01,
                        help="trajectory association tolerance in seconds (default 0.01)")
    tuning.add_argument("--rpe-delta", type=int, default=1, help="RPE pose distance in frames (default 1)")
    tuning.add_argument("--rpe-all-pairs", action="store_true", help="RPE over every pair, not consecutive ones")
    tuning.add_argument("--trajectory", choices=("auto", "metric", "relative"), default="auto",
                        help="metric: SE(3) (and Sim(3)) alignment; relative: Sim(3) only; auto: from /depth/info")
    tuning.add_argument("--fscore-threshold", type=float, default=0.05, metavar="M",
                        help="depth F-score distance threshold in metres (default 0.05, DA3's indoor setting)")
    tuning.add_argument("--iou-threshold", type=float, default=0.5, help="IoU of a true positive (default 0.5)")
    tuning.add_argument("--samples", type=int, default=4, help="sample frames in the report (at most 4)")
    tuning.add_argument("--max-pending", type=int, default=16,
                        help="frames that may wait for their other half before being evaluated with what they have "
                             "(raise it when predictions were recorded long after their inputs)")
    tuning.add_argument("--topic", action="append", default=[], metavar="NAME=TOPIC",
                        help="override a topic, e.g. --topic depth=/cam/depth/image (names: depth, depth_info, "
                             "tf, camera_path, instances, rgb, rgb_compressed, camera_info, gt_depth, gt_pose, "
                             "gt_instances, gt_labels)")


def eval_config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """An EvalConfig from the options add_eval_arguments added (parser.error on a bad value)."""
    from perception_fm.eval.config import EvalConfig, EvalTopics

    topics = EvalTopics()
    for item in args.topic:
        name, sep, topic = item.partition("=")
        if not sep or not hasattr(topics, name) or not topic:
            parser.error(f"--topic takes NAME=TOPIC with NAME one of {', '.join(EvalTopics.__dataclass_fields__)}; "
                         f"got {item!r}")
        setattr(topics, name, topic)
    if args.samples < 0:
        parser.error("--samples must be >= 0")
    if args.rpe_delta < 1:
        parser.error("--rpe-delta must be >= 1")
    if not args.fscore_threshold > 0:
        parser.error("--fscore-threshold must be > 0")
    return EvalConfig(
        topics=topics, estimated_frame=args.estimated_frame, world_frame=args.world_frame,
        max_time_diff_s=args.max_time_diff, rpe_delta=args.rpe_delta, rpe_all_pairs=args.rpe_all_pairs,
        min_depth=args.min_depth, max_depth=args.max_depth,
        depth_modes=None if args.depth_alignment == "auto" else (args.depth_alignment,),
        shift_space=args.shift_space, iou_threshold=args.iou_threshold, samples=args.samples,
        max_pending=max(1, args.max_pending), fscore_threshold_m=args.fscore_threshold,
        trajectory_metric={"auto": None, "metric": True, "relative": False}[args.trajectory],
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from perception_fm.eval.report import write_json, write_report
    from perception_fm.eval.config import EvalError
    from perception_fm.eval.runner import evaluate

    config = eval_config_from_args(args, parser)
    from perception_fm.eval.rig import main_rig

    rig = main_rig(args, config)  # a camera rig's bag (/gt/<camera>/depth): per-camera and fused metrics
    if rig is not None:
        return rig
    try:
        result = evaluate(args.out_bag, args.gt, config)
    except EvalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    provenance = result.provenance
    if provenance.get("random_init"):
        print("WARNING: RANDOM-INIT WEIGHTS: the model was not trained; these numbers only check the plumbing",
              file=sys.stderr)
    for model in provenance.get("models", []):
        print(f"{model.get('task')}: {model.get('model')} ({model.get('weights')})")
    print(result.table())
    for line in result.skipped:
        print(f"skipped: {line}", file=sys.stderr)
    for line in result.warnings:
        print(f"warning: {line}", file=sys.stderr)
    if args.report:
        print(f"wrote {write_report(result, args.report)}")
    if args.json:
        print(f"wrote {write_json(result, args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
