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
import os
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


def bench_interleaved(models: dict, images: list[np.ndarray], views: int, iterations: int) -> dict:
    """bench_ours for several models at once, their timed calls taken in turn (model A, B, C, A, B, C, ...), so
    that a change in the machine's load (a shared CI runner) reaches every backend alike."""
    K = np.array([[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]])
    windows = {}
    for backend, model in models.items():
        windows[backend] = [model.prepare(image, K) for image in images[: views - 1]]
        # warm-up: allocator, kernel selection; torch.compile recompiles while RoPE's caches fill
        for _ in range(5 if backend == "compile" else 2):
            model.predict(windows[backend] + [model.prepare(images[-1], K)], dense_views=[-1])
    samples = {backend: [] for backend in models}
    for i in range(iterations):
        for backend, model in models.items():
            synchronize(model.device)
            started = time.perf_counter()
            view = model.prepare(images[i % len(images)], K)
            model.predict(windows[backend] + [view], dense_views=[-1])
            samples[backend].append((time.perf_counter() - started) * 1e3)
    return {backend: _summary(values) for backend, values in samples.items()}


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


BACKENDS = ("torch", "onnx", "compile")


def create_model(backend: str, variant: str, process_res: int, device: str = "auto", onnx_providers: str = "auto",
                 onnx_cache_dir: str | None = None, manager: PluginManager | None = None):
    """`variant` (e.g. "da3-small") with random weights, the same values whatever the backend: "torch" (the
    PyTorch plugin, eager), "compile" (the same with torch.compile) or "onnx" (perception_fm.plugins.da3_onnx:
    ONNX Runtime on `onnx_providers`; graphs exported on first use into `onnx_cache_dir`)."""
    manager = manager or PluginManager(entry_points=False)
    extra = {"process_res": process_res}
    name = variant
    if backend == "compile":
        extra["compile"] = "default"
    elif backend == "onnx":
        name = variant + "-onnx"
        extra.update(onnx_providers=onnx_providers, onnx_cache_dir=onnx_cache_dir)
    elif backend != "torch":
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return manager.create(Task.DEPTH, name, ModelOptions(random_weights=True, device=device, extra=extra))


def _first_depth(model, images: list[np.ndarray], views: int) -> np.ndarray:
    K = np.array([[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]])
    return model.predict([model.prepare(image, K) for image in images[:views]], dense_views=[-1]).depth[0]


def run(variants, resolutions, windows, iterations: int, device: str, upstream: bool,
        backends=("torch",), onnx_providers: str = "auto", onnx_cache_dir: str | None = None) -> list[dict]:
    """One row per variant, resolution, window and backend; every backend of a (variant, resolution) runs the
    same random weights on the same frames, and rows of other backends carry their speed relative to torch's."""
    import torch

    manager = PluginManager(entry_points=False)
    images = sample_frames(max(max(windows), 4))
    backends = sorted(backends, key=lambda backend: backend != "torch")  # torch first: the others' reference
    rows = []
    for variant in variants:
        for process_res in resolutions:
            models, setup_s = {}, {}
            for backend in backends:
                started = time.perf_counter()
                models[backend] = create_model(backend, variant, process_res, device, onnx_providers,
                                               onnx_cache_dir, manager)
                setup_s[backend] = time.perf_counter() - started
            for views in windows:
                if views > 1 and not models[backends[0]].capabilities.multi_view:
                    continue
                reference_depth, first_call_s, difference, peak_mb = None, {}, {}, {}
                for backend, model in models.items():
                    if model.device.startswith("cuda"):
                        torch.cuda.reset_peak_memory_stats()
                    # The first call at this window pays the one-off work (ONNX export or cache load, torch.compile
                    # tracing and code generation): reported apart as first_call_s, not in the timings.
                    started = time.perf_counter()
                    depth = _first_depth(model, images, views)
                    first_call_s[backend] = time.perf_counter() - started
                    peak_mb[backend] = _peak_memory_mb(model.device)  # on the CPU: the process's peak so far
                    if reference_depth is None:
                        reference_depth = depth
                    else:  # same weights and frames: how far this backend's depth is from the first backend's
                        difference[backend] = float(np.abs(depth - reference_depth).max()
                                                    / np.abs(reference_depth).max())
                timings = bench_interleaved(models, images, views, iterations)
                for backend, model in models.items():
                    row = {"variant": variant, "backend": backend, "device": model.device, "process_res": process_res,
                           "views": views, "size": list(model.prepare(images[0]).size),
                           "setup_s": setup_s[backend], "first_call_s": first_call_s[backend],
                           "ours": timings[backend], "peak_memory_mb": peak_mb[backend],
                           "load_average": round(os.getloadavg()[0], 1)}
                    if backend == "onnx":
                        row["providers"] = list(model.providers)
                    if backend in difference:
                        row["depth_relative_difference"] = difference[backend]
                    torch_row = next((r for r in rows if r["backend"] == "torch" and r["variant"] == variant
                                      and r["process_res"] == process_res and r["views"] == views), None)
                    if torch_row is not None and backend != "torch":
                        row["speedup_vs_torch"] = torch_row["ours"]["p50_ms"] / row["ours"]["p50_ms"]
                    if upstream and backend == "torch":
                        row["upstream"] = bench_upstream(model, images, views, iterations, process_res)
                        if "p50_ms" in row["upstream"]:
                            row["speedup"] = row["upstream"]["p50_ms"] / row["ours"]["p50_ms"]
                    rows.append(row)
                    print(_format(row), flush=True)
            del models
            if device.startswith("cuda") or torch.cuda.is_available():
                torch.cuda.empty_cache()
    return rows


def _format(row: dict) -> str:
    ours = row["ours"]
    text = (f"{row['variant']:<22} {row.get('backend', 'torch'):<7} {row['device']:<6} res {row['process_res']:>4} "
            f"({row['size'][1]}x{row['size'][0]}) views {row['views']:>2}  p50 {ours['p50_ms']:8.1f} ms "
            f"p95 {ours['p95_ms']:8.1f} ms {ours['fps']:6.2f} fps  peak {row['peak_memory_mb']:8.0f} MB")
    if "speedup_vs_torch" in row:
        ratio = row["speedup_vs_torch"]
        text += (f"  vs torch x{ratio:.2f} ({'faster' if ratio > 1 else 'slower'}; depth rel. diff "
                 f"{row['depth_relative_difference']:.1e}; first call {row['first_call_s']:.1f} s)")
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
    parser.add_argument("--backend", default="torch",
                        help=f"comma-separated backends measured side by side on the same weights: "
                             f"{', '.join(BACKENDS)} (compile = torch.compile; onnx = ONNX Runtime, graphs exported "
                             "on first use)")
    parser.add_argument("--onnx-providers", default="auto", help="ONNX Runtime providers for --backend onnx")
    parser.add_argument("--onnx-cache", default=None, help="export cache directory for --backend onnx "
                                                           "(default ~/.cache/perception_fm/da3_onnx)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    if not gpu:
        print("no CUDA device: CPU figures with small defaults (use --variants/--resolutions for more)")
    rows = run([v for v in args.variants.split(",") if v], [int(r) for r in args.resolutions.split(",")],
               [int(v) for v in args.views.split(",")], args.iterations, args.device, not args.no_upstream,
               backends=tuple(b.strip() for b in args.backend.split(",") if b.strip()),
               onnx_providers=args.onnx_providers, onnx_cache_dir=args.onnx_cache)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
