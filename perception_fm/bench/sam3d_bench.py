"""perception-fm bench sam3d: SAM 3D Objects latency per object against the number of sampling steps, and SAM 3D
Body latency per image and per person against the number of people, with peak memory, on the present device,
through our plugins (perception_fm.plugins.sam3d_objects / sam3d_body) and Meta's real networks and weights.

Both models run only on a CUDA GPU with Meta's code and the gated weights (see the plugins' docstrings). Where
that is not the case the suite says, per model, that it cannot run and why, and exits 0: it never prints numbers
it did not measure, and there is no random-weights mode (the architectures come with the checkpoints).

Inputs: a 640x480 render of the synthetic sample (perception_fm.replay.synthetic). Objects: the largest object's
mask with the render's metric pointmap (depth x pixel rays) as the layout conditioning. Body: the scene has no
people; the boxes of its objects stand in for person boxes (the work per box does not depend on the content).
Each row: one warm-up call, then `--iterations` timed calls (medians). Figures, not tests.
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from perception_fm.bench.common import synchronize

OBJECTS_PLUGIN = "perception_fm.plugins.sam3d_objects"
BODY_PLUGIN = "perception_fm.plugins.sam3d_body"


def _manager():
    from perception_fm.plugin_manager import PluginManager
    from perception_fm.plugins import BUILTIN_PLUGINS

    return PluginManager(builtin=tuple(dict.fromkeys(BUILTIN_PLUGINS + (OBJECTS_PLUGIN, BODY_PLUGIN))),
                         entry_points=False)


def _scene():
    """(rgb, pointmap in the optical frame, instance ids, K) of a synthetic frame."""
    from perception_fm.geometry.camera import pixel_rays
    from perception_fm.replay.synthetic import SampleConfig, intrinsics, render_frame

    config = SampleConfig(width=640, height=480, frames=2)
    frame = render_frame(config, 0)
    K = intrinsics(config)
    rays = pixel_rays(config.height, config.width, K)  # (H, W, 3) with z = 1
    pointmap = (rays * frame.depth[..., None]).astype(np.float32)
    return frame.rgb, pointmap, frame.instances, K


def _boxes(instances: np.ndarray) -> np.ndarray:
    boxes = []
    for label in np.unique(instances):
        if label == 0:
            continue
        ys, xs = np.nonzero(instances == label)
        if len(xs) > 200:
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return np.asarray(boxes, np.float32).reshape(-1, 4)



def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> dict:
    if device.startswith("cuda"):
        import torch

        return {"peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20}
    return {"process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _timed(function, device: str, iterations: int) -> tuple[list[float], object]:
    result = function()  # warm-up
    times = []
    for _ in range(iterations):
        synchronize(device)
        started = time.perf_counter()
        result = function()
        synchronize(device)
        times.append((time.perf_counter() - started) * 1e3)
    return times, result


def _create(task, name: str, weights: str, device: str, offline: bool, extra: dict):
    """(model, None) or (None, why it cannot run here)."""
    from perception_fm.errors import PerceptionFmError
    from perception_fm.hookspecs import ModelOptions

    try:
        return _manager().create(task, name, ModelOptions(weights=weights, device=device, offline=offline,
                                                          extra=extra)), None
    except (PerceptionFmError, ValueError) as error:
        return None, f"{type(error).__name__}: {error}"


def bench_objects(model, steps: list, iterations: int) -> list[dict]:
    from perception_fm.tasks.object_mesh import ObjectMeshRequest

    rgb, pointmap, instances, K = _scene()
    labels, counts = np.unique(instances[instances > 0], return_counts=True)
    mask = instances == labels[np.argmax(counts)]
    rows = []
    for count in steps:
        request = ObjectMeshRequest(image=rgb, mask=mask, pointmap=pointmap, intrinsics=K, steps=count)
        _reset_peak(model.device)
        times, result = _timed(lambda: model.reconstruct(request), model.device, iterations)
        rows.append({"model": model.name, "steps": count or "default", "object_ms": float(np.median(times)),
                     "vertices": int(len(result.vertices)), "faces": int(len(result.faces)), **_peak(model.device)})
    return rows


def bench_body(model, people: list, iterations: int) -> list[dict]:
    from perception_fm.tasks.body_mesh import BodyRequest

    rgb, _, instances, K = _scene()
    boxes = _boxes(instances)
    if len(boxes) == 0:
        boxes = np.array([[160, 60, 480, 460]], np.float32)
    rows = []
    for count in people:
        chosen = boxes[np.arange(count) % len(boxes)]
        request = BodyRequest(image=rgb, boxes=chosen, intrinsics=K)
        _reset_peak(model.device)
        times, _ = _timed(lambda: model.estimate(request), model.device, iterations)
        image_ms = float(np.median(times))
        rows.append({"model": model.name, "people": count, "image_ms": image_ms, "person_ms": image_ms / count,
                     **_peak(model.device)})
    return rows


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return "cpu"


def main(argv=None) -> int:
    from perception_fm.hookspecs import Task

    parser = argparse.ArgumentParser(prog="perception-fm bench sam3d", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="objects,body", help="comma-separated: objects, body")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--objects-weights", default="", help="hub id or local directory (default: the model's)")
    parser.add_argument("--body-weights", default="", help="hub id or local directory (default: the model's)")
    parser.add_argument("--offline", action="store_true", help="only local directories and the local hub cache")
    parser.add_argument("--steps", default="0,1,2,4,8,16", help="Objects sampling steps; 0 = the pipeline's default "
                                                              "(25 flow-matching steps with CFG), others shortcut")
    parser.add_argument("--no-layout-postprocess", action="store_true", help="skip the Objects layout refinement")
    parser.add_argument("--people", default="1,2,4", help="Body: people per image")
    parser.add_argument("--inference-type", default="full", choices=("full", "body"))
    parser.add_argument("--iterations", type=int, default=3, help="timed calls per row (after one warm-up)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(wanted) - {"objects", "body"})
    if unknown:
        parser.error(f"unknown models {unknown}")

    rows: list[dict] = []
    if "objects" in wanted:
        extra = {"layout_postprocess": not args.no_layout_postprocess}
        started = time.perf_counter()
        model, why = _create(Task.OBJECT_MESH, "sam3d-objects", args.objects_weights, args.device, args.offline,
                             extra)
        if model is None:
            print(f"sam3d-objects: cannot run here: {why}")
        else:
            print(f"sam3d-objects on {model.device} ({_device_name(model.device)}), weights {model.weights}, "
                  f"loaded in {time.perf_counter() - started:.1f} s")
            steps = [int(s) or None for s in args.steps.split(",") if s.strip()]
            print(f"{'steps':>8} {'object ms':>10} {'vertices':>9} {'peak MB':>9}")
            for row in bench_objects(model, steps, args.iterations):
                rows.append(row)
                peak = row.get("peak_gpu_mb", row.get("process_peak_rss_mb", 0.0))
                print(f"{row['steps']!s:>8} {row['object_ms']:10.0f} {row['vertices']:9d} {peak:9.0f}", flush=True)
            del model
    if "body" in wanted:
        started = time.perf_counter()
        model, why = _create(Task.BODY_MESH, "sam3d-body", args.body_weights, args.device, args.offline,
                             {"inference_type": args.inference_type})
        if model is None:
            print(f"sam3d-body: cannot run here: {why}")
        else:
            print(f"sam3d-body ({args.inference_type}) on {model.device} ({_device_name(model.device)}), weights "
                  f"{model.weights}, loaded in {time.perf_counter() - started:.1f} s")
            people = [int(p) for p in args.people.split(",") if p.strip()]
            print(f"{'people':>6} {'image ms':>9} {'person ms':>10} {'peak MB':>9}")
            for row in bench_body(model, people, args.iterations):
                rows.append(row)
                peak = row.get("peak_gpu_mb", row.get("process_peak_rss_mb", 0.0))
                print(f"{row['people']:6d} {row['image_ms']:9.0f} {row['person_ms']:10.0f} {peak:9.0f}", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
