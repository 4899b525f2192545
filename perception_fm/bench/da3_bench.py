"""perception-fm bench da3: DA3 latency and throughput through our plugin path, per variant, resolution and
window size, on whatever device is present; and the same images through upstream's own inference path
(depth_anything_3.api.DepthAnything3.inference: PIL/cv2 preprocessing on the CPU, then the network) for a
ratio, where that path is importable (it needs torchvision and Pillow).

Random weights give real timings (the work does not depend on the values). Inputs are 640x480 frames of the
synthetic sample. Figures, not tests: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from perception_fm.bench.common import sample_frames, synchronize

from perception_fm.hookspecs import ModelOptions, Task
from perception_fm.plugin_manager import PluginManager




def _peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def _summary(samples_ms: list[float]) -> dict:
    values = np.asarray(samples_ms)
    return {"p50_ms": float(np.percentile(values, 50)), "p95_ms": float(np.percentile(values, 95)),
            "fps": float(1000.0 / values.mean())}


def bench_ours(model, images: list[np.ndarray], views: int, iterations: int) -> dict:
    """prepare (upload, resize, normalise on the device) + predict for the newest view of a window, as the
    depth pipeline does per frame (its keyframes are already prepared)."""
    K = np.array([[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]])
    window = [model.prepare(image, K) for image in images[: views - 1]]
    for _ in range(2):  # warm-up: allocator, kernel selection
        model.predict(window + [model.prepare(images[-1], K)], dense_views=[-1])
    samples = []
    for i in range(iterations):
        synchronize(model.device)
        started = time.perf_counter()
        view = model.prepare(images[i % len(images)], K)
        model.predict(window + [view], dense_views=[-1])  # returns host arrays: includes the output copy
        samples.append((time.perf_counter() - started) * 1e3)
    return _summary(samples)


def bench_upstream(model, images: list[np.ndarray], views: int, iterations: int, process_res: int) -> dict:
    """The same network through upstream's inference() (all views preprocessed on the CPU each call)."""
    try:
        from depth_anything_3.api import DepthAnything3
    except ImportError as error:
        return {"unavailable": f"depth_anything_3.api does not import here ({error})"}
    api = DepthAnything3(model_name=model.name)
    api.model = model.net
    api.to(model.device)
    api.device = model.device
    batch = [images[i % len(images)] for i in range(views)]
    for _ in range(2):
        api.inference(batch, process_res=process_res, ref_view_strategy="first")
    samples = []
    for _ in range(iterations):
        synchronize(model.device)
        started = time.perf_counter()
        api.inference(batch, process_res=process_res, ref_view_strategy="first")
        samples.append((time.perf_counter() - started) * 1e3)
    return _summary(samples)


def run(variants, resolutions, windows, iterations: int, device: str, upstream: bool) -> list[dict]:
    import torch

    manager = PluginManager(entry_points=False)
    images = sample_frames(max(max(windows), 4))
    rows = []
    for variant in variants:
        for process_res in resolutions:
            model = manager.create(Task.DEPTH, variant, ModelOptions(
                random_weights=True, device=device, extra={"process_res": process_res}))
            for views in windows:
                if views > 1 and not model.capabilities.multi_view:
                    continue
                if model.device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                row = {"variant": variant, "device": model.device, "process_res": process_res, "views": views,
                       "size": list(model.prepare(images[0]).size), "ours": bench_ours(model, images, views, iterations)}
                row["peak_memory_mb"] = _peak_memory_mb(model.device)
                if upstream:
                    row["upstream"] = bench_upstream(model, images, views, iterations, process_res)
                    if "p50_ms" in row["upstream"]:
                        row["speedup"] = row["upstream"]["p50_ms"] / row["ours"]["p50_ms"]
                rows.append(row)
                print(_format(row), flush=True)
            del model
            if device.startswith("cuda") or torch.cuda.is_available():
                torch.cuda.empty_cache()
    return rows


def _format(row: dict) -> str:
    ours = row["ours"]
    text = (f"{row['variant']:<22} {row['device']:<6} res {row['process_res']:>4} ({row['size'][1]}x{row['size'][0]}) "
            f"views {row['views']:>2}  ours p50 {ours['p50_ms']:8.1f} ms p95 {ours['p95_ms']:8.1f} ms "
            f"{ours['fps']:6.2f} fps  peak {row['peak_memory_mb']:8.0f} MB")
    upstream = row.get("upstream")
    if upstream and "p50_ms" in upstream:
        text += f"  upstream p50 {upstream['p50_ms']:8.1f} ms  ratio x{row['speedup']:.2f}"
    elif upstream:
        text += f"  upstream: {upstream['unavailable']}"
    return text


def main(argv=None) -> int:
    import torch

    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(prog="perception-fm bench da3", description=__doc__)
    parser.add_argument("--variants", default="da3-small,da3-base,da3-large,da3-giant,da3metric-large" if gpu
                        else "da3-small", help="comma-separated model names")
    parser.add_argument("--resolutions", default="504,280" if gpu else "280,504", help="process_res values")
    parser.add_argument("--views", default="1,4,8" if gpu else "1,4", help="window sizes")
    parser.add_argument("--iterations", type=int, default=20 if gpu else 3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-upstream", action="store_true", help="skip upstream's inference path")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    if not gpu:
        print("no CUDA device: CPU figures with small defaults (use --variants/--resolutions for more)")
    rows = run([v for v in args.variants.split(",") if v], [int(r) for r in args.resolutions.split(",")],
               [int(v) for v in args.views.split(",")], args.iterations, args.device, not args.no_upstream)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
