"""perception-fm bench rig: what a camera rig costs through one model. For N = 2 and 3 cameras of the synthetic
rig, the time of one group (ONE N-view DA3 call conditioned on the rig's extrinsics, per-camera clouds and the
fused cloud: perception_fm.pipelines.depth_rig) against N single-camera calls (perception_fm.pipelines.
depth_pipeline, window_size 1, the per-camera way), median of --repeats after a warm-up, and the process's
peak memory. DA3-Small with random weights (timing does not depend on the weights). Figures, not a test.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import time


def _median_ms(function, repeats: int) -> float:
    function()  # warm-up: allocations, kernel selection
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def measure(cameras: int, process_res: int, width: int, height: int, repeats: int, device: str, model=None) -> dict:
    from perception_fm.hookspecs import ModelOptions, Task
    from perception_fm.pipelines.depth_pipeline import DepthInput, DepthPipeline
    from perception_fm.pipelines.depth_rig import DepthRigPipeline, RigView
    from perception_fm.plugin_manager import PluginManager
    from perception_fm.replay import synthetic as syn

    if model is None:
        model = PluginManager(entry_points=False).create(
            Task.DEPTH, "da3-small", ModelOptions(random_weights=True, device=device,
                                                  extra={"process_res": process_res}))
    config = syn.SampleConfig(width=width, height=height, frames=2, rig_cameras=cameras)
    frames = [syn.render_frame(config, 1, camera) for camera in range(cameras)]
    views = [RigView(f"cam{c}", f.rgb, f.stamp_ns, f.K, syn.rig_mount(config, c) @ syn.T_LINK_OPTICAL)
             for c, f in enumerate(frames)]
    rig = DepthRigPipeline(model)
    singles = [DepthPipeline(model) for _ in range(cameras)]
    group_ms = _median_ms(lambda: rig.process(views), repeats)
    separate_ms = _median_ms(lambda: [pipeline.process(DepthInput(f.rgb, f.stamp_ns, f.K))
                                      for pipeline, f in zip(singles, frames)], repeats)
    return {"cameras": cameras, "process_res": process_res, "image": f"{width}x{height}", "device": model.device,
            "group_ms": round(group_ms, 1), "separate_ms": round(separate_ms, 1),
            "group_over_separate": round(group_ms / separate_ms, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="perception-fm bench rig", description=__doc__)
    parser.add_argument("--res", type=int, default=280, help="process_res (longest side the model works at)")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="one JSON line per rig size instead of a table")
    args = parser.parse_args(argv)
    from perception_fm.hookspecs import ModelOptions, Task
    from perception_fm.plugin_manager import PluginManager

    model = PluginManager(entry_points=False).create(
        Task.DEPTH, "da3-small", ModelOptions(random_weights=True, device=args.device,
                                              extra={"process_res": args.res}))
    if not args.json:
        print(f"DA3-Small (random weights) on {model.device}, {args.width}x{args.height} images at process_res "
              f"{args.res}, median of {args.repeats}:")
        print(f"{'cameras':>8}{'1 group call (ms)':>20}{'N single calls (ms)':>22}{'ratio':>8}{'peak RSS MB':>13}")
    for cameras in (2, 3):
        result = measure(cameras, args.res, args.width, args.height, args.repeats, args.device, model)
        if args.json:
            print(json.dumps(result), flush=True)
        else:
            print(f"{cameras:>8}{result['group_ms']:>20.0f}{result['separate_ms']:>22.0f}"
                  f"{result['group_over_separate']:>8.2f}{result['peak_rss_mb']:>13}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
