"""perception-fm bench device: every GPU figure in one prepared run (scripts/device_check.sh runs it on a lent GPU
machine), each step with its own time budget.

Steps (each in its own process, so that a step that hangs or crashes costs only its budget):
  1 tests     the tests that need CUDA (pytest: tests/test_cuda_plugins.py, the CUDA/real-model tests of
              test_ray_pose.py and test_sam3d_plugins.py); per-test outcome
  2 da3       DA3 small/base/large/giant (random weights, the real architectures) at 504 px, 1/4/8 views, bf16:
              our plugin path vs upstream's DepthAnything3.inference() on the same network, ms p50/p95, peak
              memory, achieved TFLOP/s (torch.utils.flop_counter) against the H200's 790 bf16; ONNX Runtime DA3
              (perception_fm.plugins.da3_onnx) where that plugin exists
  3 sam3      SAM 3 full size (random weights) at 1008 px, 1/4/16 concepts and 1/10/50/100 objects through our
              streaming session vs transformers' reference video path; host syncs per operation
  4 body      SAM 3D Body through the real adapter where its code imports and weights are given
  5 together  all models loaded in one process: memory each and together
  6 nodes     depth_node and concept_node over DDS: peak throughput with < 5 % drops, latency at 30 Hz, node
              overhead (perception_fm.bench.node_bench's harness)

A step never overruns its budget on purpose: before each measurement it estimates the cost from the last one and
skips (recording what and why) when the time left does not cover it; a step process still running at its budget
(plus a few seconds to report) is stopped and reports what it finished. Time a step leaves unused goes to the next
ones, within --total-budget. A budget of 0 skips the step.

--dry-run: the same code path on the CPU with tiny models and short budgets (CI runs it: tests/test_device_check.py),
so the check cannot rot between GPU loans. Results: <out>/<device>.json and .md; without --dry-run also
bench/results/<device>.json (section device_check) and bench/results/<device>.md.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STUBS = REPO / "tests" / "upstream_stubs"  # stand-ins for modules upstream DA3's api imports but never uses here
SECTION = "device_check"
# Seconds per step on a GPU; the sum stays under 8 minutes with the wheel install and the interface build.
GPU_BUDGETS = {"tests": 50, "da3": 100, "sam3": 90, "body": 15, "together": 35, "nodes": 100}
DRY_BUDGETS = {"tests": 20, "da3": 15, "sam3": 15, "body": 5, "together": 15, "nodes": 45}
REPORT_GRACE_S = 5.0  # a step process past its budget gets this long to write what it has before it is stopped


@dataclass(frozen=True)
class Plan:
    """What each step measures: the GPU's full sizes, or tiny ones for the CPU dry run."""

    dry_run: bool
    frame_size: tuple[int, int] = (640, 480)  # width, height of the input frames
    da3_variants: tuple[str, ...] = ("da3-small", "da3-base", "da3-large", "da3-giant")
    da3_res: int = 504
    da3_views: tuple[int, ...] = (1, 4, 8)
    da3_iterations: int = 20
    onnx_variants: tuple[str, ...] = ("da3-small",)
    onnx_estimate_s: float = 60.0  # an export before the first run; nothing to extrapolate from
    sam3_model: str = "full"
    sam3_concepts: tuple[int, ...] = (1, 4, 16)
    sam3_objects: tuple[int, ...] = (1, 10, 50, 100)
    sam3_iterations: int = 10
    reference_frames: int = 8
    together_da3: str = "da3-large"
    node_da3: str = "da3-small"
    node_res: int = 504
    node_rates: tuple[float, ...] = (5, 10, 15, 20, 30, 60)
    node_seconds: float = 3.0
    latency_rate: float = 30.0
    node_ready_s: float = 120.0

    @classmethod
    def for_run(cls, dry_run: bool) -> "Plan":
        if not dry_run:
            return cls(dry_run=False)
        return cls(dry_run=True, frame_size=(160, 120), da3_variants=("da3-small",), da3_res=56, da3_views=(1, 2),
                   da3_iterations=2, onnx_variants=(), sam3_model="tiny", sam3_concepts=(1, 2), sam3_objects=(1, 3),
                   sam3_iterations=2, reference_frames=2, together_da3="da3-small", node_res=56,
                   node_rates=(2.0,), node_seconds=1.0, latency_rate=2.0, node_ready_s=40.0)


# ------------------------------------------------------------------------------------------------------------
# Inside a step process


class Recorder:
    """A step's figures, skips and notes, written to `path` after every change (a stopped step keeps them)."""

    def __init__(self, path: Path, budget_s: float):
        self.path = Path(path)
        self.budget_s = float(budget_s)
        self.started = time.monotonic()
        self.data: dict = {"figures": {}, "skipped": [], "notes": []}

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def fits(self, estimate_s: float, what: str) -> bool:
        """Whether `what`, estimated at estimate_s, fits the time left; if not, it is recorded as skipped."""
        if estimate_s <= self.left():
            return True
        self.skip(what, f"time budget: needs ~{estimate_s:.0f} s, {max(self.left(), 0):.0f} s of "
                        f"{self.budget_s:.0f} s left")
        return False

    def add(self, key: str, row) -> None:
        self.data["figures"].setdefault(key, []).append(row)
        self.save()

    def set(self, key: str, value) -> None:
        self.data["figures"][key] = value
        self.save()

    def skip(self, what: str, reason: str) -> None:
        self.data["skipped"].append({"what": what, "reason": reason})
        print(f"  skipped {what}: {reason}", flush=True)
        self.save()

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        self.save()

    def save(self) -> None:
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.data, indent=1, default=float))
        temporary.replace(self.path)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_mb(device: str) -> float:
    """Peak memory since the last reset: allocated GPU memory, or the process's peak RSS on the CPU."""
    import resource

    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _free(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


@contextlib.contextmanager
def count_host_syncs(device: str):
    """Counts the CUDA host synchronisations in the block (torch.cuda.set_sync_debug_mode("warn") warns on each);
    yields a dict whose "syncs" holds the count afterwards (None off CUDA, where there are none to count)."""
    import warnings

    import torch

    result = {"syncs": None}
    if not device.startswith("cuda"):
        yield result
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield result
        finally:
            torch.cuda.set_sync_debug_mode("default")
    result["syncs"] = sum("synchroniz" in str(w.message) for w in caught)


def count_flops(function) -> int:
    """FLOPs of one call, by torch's dispatch-level counter (matrix products, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        function()
    return int(counter.get_total_flops())


def _summary(samples_ms) -> dict:
    import numpy as np

    values = np.asarray(samples_ms, float)
    return {"p50_ms": float(np.percentile(values, 50)), "p95_ms": float(np.percentile(values, 95)),
            "fps": float(1000.0 / values.mean())}


def step_tests(rec: Recorder, plan: Plan) -> None:
    """Step 1: pytest on the tests that need CUDA (they skip on the CPU, which the dry run records)."""
    import xml.etree.ElementTree as ElementTree

    selection = ["tests/test_cuda_plugins.py", "tests/test_ray_pose.py", "tests/test_sam3d_plugins.py"]
    selection = [path for path in selection if (REPO / path).exists()]
    xml = rec.path.with_name("pytest.xml")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml", str(xml),
               "-k", "cuda or real", *selection]
    rec.set("command", " ".join(command[1:]))
    if not rec.fits(5.0, "pytest"):
        return
    try:
        completed = subprocess.run(command, cwd=REPO, timeout=max(rec.left() - 2.0, 1.0), capture_output=True,
                                   text=True)
        rec.set("exit_code", completed.returncode)
        rec.set("output_tail", completed.stdout[-3000:] + completed.stderr[-1000:])
    except subprocess.TimeoutExpired:
        rec.skip("pytest (rest)", f"time budget: still running at {rec.budget_s:.0f} s; stopped")
    if not xml.exists():
        rec.note("pytest wrote no report")
        return
    tests, counts = [], {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    for case in ElementTree.parse(xml).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or child.text or "")[:400]
        counts["errors" if outcome == "error" else outcome] += 1
        tests.append({"test": f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}",
                      "outcome": outcome, "time_s": float(case.get("time", 0)), "message": message})
    rec.set("counts", counts)
    rec.set("tests", tests)


def _upstream_da3(model):
    """Upstream's DepthAnything3 api object running `model`'s own network (no second network is built), or the
    reason it does not import. Modules the api imports but never uses for inference come from tests/upstream_stubs,
    appended to sys.path: installed modules win."""
    import importlib

    if str(STUBS) not in sys.path:
        sys.path.append(str(STUBS))
    try:
        api_module = importlib.import_module("depth_anything_3.api")
    except Exception as error:  # noqa: BLE001 (any import failure is the figure: why there is no comparison)
        return None, f"depth_anything_3.api does not import: {type(error).__name__}: {error}"
    create_object = api_module.create_object
    api_module.create_object = lambda config: model.net
    try:
        api = api_module.DepthAnything3(model_name=model.name)
    finally:
        api_module.create_object = create_object
    api.device = __import__("torch").device(model.device)
    return api, None


def _time_upstream(api, images, views: int, iterations: int, process_res: int, ref_view_strategy: str) -> dict:
    from perception_fm.bench.common import synchronize

    batch = [images[i % len(images)] for i in range(views)]
    device = str(api.device)
    for _ in range(2):
        api.inference(batch, process_res=process_res, ref_view_strategy=ref_view_strategy)
    samples = []
    for _ in range(iterations):
        synchronize(device)
        started = time.perf_counter()
        api.inference(batch, process_res=process_res, ref_view_strategy=ref_view_strategy)
        synchronize(device)
        samples.append((time.perf_counter() - started) * 1e3)
    return _summary(samples)


def step_da3(rec: Recorder, plan: Plan) -> None:
    """Step 2: DA3 variants x view counts, ours vs upstream, FLOPs, peak memory; then the ONNX backend."""
    import numpy as np
    import torch

    from perception_fm.bench.common import sample_frames
    from perception_fm.bench.da3_bench import bench_ours
    from perception_fm.plugins import da3

    device = _device()
    precision = "bf16" if device == "cuda" else "fp32"
    images = sample_frames(max(max(plan.da3_views), 4), *plan.frame_size)
    K = np.array([[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]])
    variant_s = None  # wall time of the last variant: the next (larger) one is estimated at 3x
    torch_p50 = {}
    for name in plan.da3_variants:
        if not rec.fits(3.0 * variant_s if variant_s else 1.0, f"da3 {name}"):
            continue
        started = time.monotonic()
        variant = next(v for v in da3.VARIANTS if v.name == name)
        torch.manual_seed(0)
        with torch.device(device):  # parameters initialised on the GPU: a Giant built on the CPU takes a minute
            net = da3.build_network(name)
        model = da3.Da3DepthModel(variant, net, weights=da3.RANDOM_WEIGHTS, device=device,
                                  process_res=plan.da3_res, precision=precision)
        parameters = sum(p.numel() for p in net.parameters())
        api, upstream_problem = _upstream_da3(model)
        if upstream_problem:
            rec.note(upstream_problem)
        views_s = None
        for views in plan.da3_views:
            what = f"da3 {name} {views} view(s)"
            if views_s and not rec.fits(views_s[1] * views / views_s[0], what):
                continue
            view_started = time.monotonic()
            _reset_peak(device)
            row = {"variant": name, "parameters": parameters, "device": device, "precision": precision,
                   "process_res": plan.da3_res, "views": views, "size": list(model.prepare(images[0]).size),
                   "weights": da3.RANDOM_WEIGHTS, "ours": bench_ours(model, images, views, plan.da3_iterations)}
            row["peak_mb"] = _peak_mb(device)
            window = [model.prepare(images[i % len(images)], K) for i in range(views)]
            flops = count_flops(lambda: model.predict(window, dense_views=[-1]))
            row["gflop_per_frame"] = flops / 1e9
            row["tflops"] = flops / (row["ours"]["p50_ms"] / 1e3) / 1e12
            with count_host_syncs(device) as syncs:
                model.predict(window, dense_views=[-1])
            row["host_syncs_per_predict"] = syncs["syncs"]
            if api is not None:
                try:
                    row["upstream"] = _time_upstream(api, images, views, plan.da3_iterations, plan.da3_res,
                                                     model.ref_view_strategy)
                    row["speedup"] = row["upstream"]["p50_ms"] / row["ours"]["p50_ms"]
                except Exception as error:  # noqa: BLE001 (recorded; our own figures stand)
                    row["upstream"] = {"error": f"{type(error).__name__}: {error}"[:400]}
            else:
                row["upstream"] = {"error": upstream_problem}
            rec.add("rows", row)
            torch_p50[(name, views)] = row["ours"]["p50_ms"]
            print(f"  {name} {views} view(s): ours p50 {row['ours']['p50_ms']:.1f} ms, "
                  f"{row['tflops']:.2f} TFLOP/s, peak {row['peak_mb']:.0f} MB, upstream "
                  f"{row['upstream'].get('p50_ms', float('nan')):.1f} ms", flush=True)
            views_s = (views, time.monotonic() - view_started)
        del model, net, api
        _free(device)
        variant_s = time.monotonic() - started
    _da3_onnx(rec, plan, device, precision, images, K, torch_p50)


def _da3_onnx(rec: Recorder, plan: Plan, device: str, precision: str, images, K, torch_p50: dict) -> None:
    """The ONNX Runtime backend (TensorRT / CUDA execution providers where present), where the plugin exists."""
    import importlib.util

    from perception_fm.bench.da3_bench import bench_ours

    if importlib.util.find_spec("perception_fm.plugins.da3_onnx") is None:
        rec.skip("da3 onnx", "perception_fm.plugins.da3_onnx does not exist in this checkout")
        return
    from perception_fm.hookspecs import ModelOptions, Task
    from perception_fm.plugin_manager import PluginManager
    from perception_fm.plugins import BUILTIN_PLUGINS

    if not plan.onnx_variants:
        rec.skip("da3 onnx", "not in the dry-run plan: an ONNX export takes 30-60 s on a CPU; tests/test_da3_onnx.py "
                             "covers the backend there")
        return
    manager = PluginManager(builtin=tuple(dict.fromkeys(BUILTIN_PLUGINS + ("perception_fm.plugins.da3_onnx",))),
                            entry_points=False)
    for name in plan.onnx_variants:
        views = plan.da3_views[0]
        if not rec.fits(plan.onnx_estimate_s, f"da3 onnx {name}"):
            continue
        try:
            with tempfile.TemporaryDirectory(prefix="da3-onnx-") as cache:
                model = manager.create(Task.DEPTH, f"{name}-onnx", ModelOptions(
                    random_weights=True, device=device, extra={
                        "process_res": plan.da3_res, "precision": precision, "onnx_views": str(views),
                        "onnx_cache_dir": cache}))
                row = {"variant": f"{name}-onnx", "views": views, "size": list(model.prepare(images[0]).size),
                       "providers": list(getattr(model, "providers", []) or []),
                       "ours": bench_ours(model, images, views, plan.da3_iterations),
                       "torch_p50_ms": torch_p50.get((name, views))}
                rec.add("onnx", row)
                del model
        except Exception as error:  # noqa: BLE001 (the figure is why it did not run)
            rec.skip(f"da3 onnx {name}", f"{type(error).__name__}: {error}"[:400])


def _sam3_reference(model, images, concepts: int, frames: int) -> dict:
    """transformers' own streaming path (Sam3VideoModel.forward one frame at a time, as tests/test_sam3_parity.py
    drives it) on the same network and precision: ms per frame, objects it tracked."""
    import numpy as np
    import torch
    from transformers.models.sam3_video.modeling_sam3_video import Sam3VideoInferenceSession

    from perception_fm.bench.common import synchronize
    from perception_fm.bench.sam3_bench import PHRASES

    session = Sam3VideoInferenceSession(video=None, inference_device=model.device,
                                        inference_state_device=model.device, dtype=torch.float32)
    for i in range(concepts):
        encoded = model.encode_concept(PHRASES[i % len(PHRASES)])
        index = session.add_prompt(encoded.text)
        session.prompt_input_ids[index] = encoded.input_ids
        session.prompt_attention_masks[index] = encoded.attention_mask
    samples, objects = [], []
    for t in range(frames + 2):  # two warm-up frames
        pixels = model.preprocess(images[t % len(images)])[0]
        synchronize(model.device)
        started = time.perf_counter()
        with model.inference():
            output = model.network(inference_session=session, frame=pixels)
        synchronize(model.device)
        if t >= 2:
            samples.append((time.perf_counter() - started) * 1e3)
            objects.append(len(output.obj_id_to_mask))
    return {"concepts": concepts, "frame_ms": float(np.median(samples)), "objects_mean": float(np.mean(objects)),
            "objects_max": int(max(objects)), "frames": frames}


def step_sam3(rec: Recorder, plan: Plan) -> None:
    """Step 3: SAM 3 through our streaming session by concepts and objects; transformers' reference video path."""
    from perception_fm.bench import sam3_bench
    from perception_fm.bench.common import sample_frames

    device = _device()
    precision = "bf16" if device == "cuda" else "fp32"
    if not rec.fits(2.0, "sam3 model"):
        return
    model, weights = sam3_bench.create_model(plan.sam3_model, device, 0, precision)
    rec.set("parameters", sum(p.numel() for p in model.network.parameters()))
    images = sample_frames(8, *plan.frame_size)
    base_concepts, base_objects = min(plan.sam3_concepts), min(plan.sam3_objects)
    pairs = [(c, base_objects) for c in plan.sam3_concepts]
    pairs += [(base_concepts, o) for o in plan.sam3_objects if o != base_objects]
    pairs.append((max(plan.sam3_concepts), max(plan.sam3_objects)))  # the worst case of both
    last = None  # (concepts, objects, seconds) of the last row
    for concepts, objects in pairs:
        what = f"sam3 {concepts} concept(s) x {objects} object(s)"
        if last and not rec.fits(last[2] * max(concepts / last[0], objects / last[1], 1.0), what):
            continue
        started = time.monotonic()
        _reset_peak(device)
        row = sam3_bench.bench(model, images, concepts, objects, plan.sam3_iterations, 0)
        row.update(model=plan.sam3_model, weights=weights, device=device, image_size=model.image_size,
                   precision=precision, peak_mb=_peak_mb(device))
        rec.add("ours", row)
        print(f"  {what}: {row['frame_ms']:.1f} ms/frame", flush=True)
        last = (concepts, objects, time.monotonic() - started)
    if device == "cuda" and rec.fits(5.0, "sam3 host syncs"):
        rec.set("host_syncs", _sam3_syncs(model, images))
    reference_s = None
    for concepts in plan.sam3_concepts:
        what = f"sam3 reference {concepts} concept(s)"
        if not rec.fits(reference_s * 1.5 if reference_s else 2.0, what):
            continue
        started = time.monotonic()
        try:
            row = _sam3_reference(model, images, concepts, plan.reference_frames)
            print(f"  {what}: {row['frame_ms']:.1f} ms/frame, {row['objects_mean']:.0f} objects", flush=True)
        except Exception as error:  # noqa: BLE001 (recorded: the reference's failure is the figure)
            row = {"concepts": concepts, "error": f"{type(error).__name__}: {error}"[:400]}
        rec.add("reference", row)
        reference_s = time.monotonic() - started


def _sam3_syncs(model, images) -> dict:
    """Host synchronisations of one frame's operations (the tracker's per-frame path), with 10 objects."""
    from perception_fm.bench.sam3_bench import PHRASES, _box_masks

    session = model.new_session()
    first = session.add_frame(images[0])
    session.add_objects(first, dict(enumerate(_box_masks(10, model.capabilities.mask_size), start=1)))
    concepts = {1: model.encode_concept(PHRASES[0])}
    counts = {}
    for index in range(1, 3):  # the second frame is counted (the first warms caches up)
        with count_host_syncs(model.device) as encode:
            frame = session.add_frame(images[index])
        with count_host_syncs(model.device) as propagate:
            propagation = session.propagate(frame)
        with count_host_syncs(model.device) as detect:
            session.detect(frame, concepts)
        with count_host_syncs(model.device) as commit:
            session.commit(frame, dict(zip(propagation.obj_ids, propagation.masks)))
        counts = {"encode": encode["syncs"], "propagate": propagate["syncs"], "detect": detect["syncs"],
                  "commit": commit["syncs"]}
    return counts


def _body_weights() -> str:
    return os.environ.get("PERCEPTION_FM_SAM3D_BODY_WEIGHTS", "")


def step_body(rec: Recorder, plan: Plan) -> None:
    """Step 4: SAM 3D Body through the real adapter (Meta's code, from PyPI sam3d where carried)."""
    from perception_fm.bench import sam3d_bench
    from perception_fm.hookspecs import Task
    from perception_fm.plugins.sam3d_body import UPSTREAM_PACKAGE
    from perception_fm.plugins.sam3d_objects import upstream_source

    source = upstream_source(UPSTREAM_PACKAGE)
    rec.set("code", source or "not installed")
    device = _device()
    if source is None:
        rec.skip("sam3d body", "SAM 3D Body's code is not installed (PyPI sam3d vendors it)")
        return
    if device != "cuda":
        rec.skip("sam3d body", "SAM 3D Body's estimator runs only on CUDA")
        return
    if not _body_weights():
        rec.skip("sam3d body", "no weights: SAM 3D Body has no random-weights build (its architecture comes from "
                               "the checkpoint's model_config.yaml and the MHR TorchScript asset); set "
                               "PERCEPTION_FM_SAM3D_BODY_WEIGHTS to a local checkpoint directory")
        return
    model, problem = sam3d_bench._create(Task.BODY_MESH, "sam3d-body", _body_weights(), device, True, {})
    if model is None:
        rec.skip("sam3d body", problem)
        return
    for row in sam3d_bench.bench_body(model, [1, 2, 4], 3):
        rec.add("rows", row)


def step_together(rec: Recorder, plan: Plan) -> None:
    """Step 5: DA3, SAM 3 (and SAM 3D Body where it builds) in one process: memory each, together."""
    import numpy as np
    import torch

    from perception_fm.bench import sam3_bench
    from perception_fm.bench.common import sample_frames
    from perception_fm.plugins import da3

    device = _device()
    precision = "bf16" if device == "cuda" else "fp32"
    images = sample_frames(2, *plan.frame_size)
    K = np.array([[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]])
    allocated = (lambda: torch.cuda.memory_allocated() / 2**20) if device == "cuda" else (lambda: None)
    held = []

    def measure(name: str, build, frame) -> None:
        before = allocated()
        model = build()
        held.append(model)
        after = allocated()
        _reset_peak(device)
        frame(model)
        rec.add("models", {"model": name, "weights_mb": None if before is None else after - before,
                           "frame_peak_mb": _peak_mb(device)})

    if rec.fits(5.0, f"together {plan.together_da3}"):
        def build_da3():
            variant = next(v for v in da3.VARIANTS if v.name == plan.together_da3)
            with torch.device(device):
                net = da3.build_network(plan.together_da3)
            return da3.Da3DepthModel(variant, net, weights=da3.RANDOM_WEIGHTS, device=device,
                                     process_res=plan.da3_res, precision=precision)

        measure(plan.together_da3, build_da3,
                lambda m: m.predict([m.prepare(images[0], K), m.prepare(images[1], K)], dense_views=[-1]))
    if rec.fits(5.0, "together sam3"):
        def sam3_frame(model):
            session = model.new_session()
            frame = session.add_frame(images[0])
            session.detect(frame, {1: model.encode_concept("chair")})
            session.add_objects(frame, dict(enumerate(sam3_bench._box_masks(10, model.capabilities.mask_size), 1)))
            frame = session.add_frame(images[1])
            propagation = session.propagate(frame)
            session.commit(frame, dict(zip(propagation.obj_ids, propagation.masks)))
            propagation.masks.cpu()

        measure(f"sam3 ({plan.sam3_model})", lambda: sam3_bench.create_model(plan.sam3_model, device, 0, precision)[0],
                sam3_frame)
    if device == "cuda" and _body_weights() and rec.fits(20.0, "together sam3d body"):
        from perception_fm.bench import sam3d_bench
        from perception_fm.hookspecs import Task

        model, problem = sam3d_bench._create(Task.BODY_MESH, "sam3d-body", _body_weights(), device, True, {})
        if model is None:
            rec.skip("together sam3d body", problem)
        else:
            held.append(model)
    else:
        rec.skip("together sam3d body", "not loaded: needs CUDA and PERCEPTION_FM_SAM3D_BODY_WEIGHTS (step body)")
    total = {"peak_mb": _peak_mb(device)}
    if device == "cuda":
        free, capacity = torch.cuda.mem_get_info()
        total.update(allocated_mb=allocated(), reserved_mb=torch.cuda.memory_reserved() / 2**20,
                     device_used_mb=(capacity - free) / 2**20, device_capacity_mb=capacity / 2**20,
                     peak_mb=torch.cuda.max_memory_allocated() / 2**20)
    rec.set("total", total)


def _node_run(rec: Recorder, plan: Plan, kind: str) -> None:
    """One node in its own process fed over DDS (node_bench's harness): rate sweep, then latency at a rate."""
    from perception_fm.bench.common import sample_frames
    from perception_fm.bench.node_bench import _Harness

    frames = sample_frames(8, *plan.frame_size)
    device = _device()
    with contextlib.ExitStack() as stack:
        if kind == "depth":
            model, process_res, weights = plan.node_da3, plan.node_res, "random-init"
            arguments = ["-m", "perception_fm.nodes.depth_node", "--ros-args", "-p", f"model:={model}",
                         "-p", f"process_res:={process_res}", "-p", "random_weights:=true"]
            output_type, output_topic = None, "/depth/info"
        else:
            from perception_fm.msg import InstanceArray

            output_type, output_topic, model = InstanceArray, "/instances", f"sam3 ({plan.sam3_model})"
            if plan.sam3_model == "tiny":
                from perception_fm.bench.sam3_tiny import TINY_IMAGE_SIZE, WEIGHTS_LABEL, save_tiny_checkpoint

                directory = save_tiny_checkpoint(stack.enter_context(tempfile.TemporaryDirectory(prefix="sam3-")))
                arguments, process_res, weights = ["-p", f"weights:={directory}"], TINY_IMAGE_SIZE, WEIGHTS_LABEL
            else:
                arguments, process_res, weights = ["-p", "random_weights:=true"], 1008, "random-init"
            arguments = ["-m", "perception_fm.nodes.concept_node", "--ros-args", *arguments]
        command = [sys.executable, *arguments, "-p", f"device:={device}", "-p", "input_qos:=reliable",
                   "-r", "image:=/bench/image"]
        log = stack.enter_context(tempfile.TemporaryFile(mode="w+"))
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=os.environ.copy(),
                                   start_new_session=True)
        harness = _Harness(frames, output_type, output_topic)
        try:
            if kind == "concept":
                from rclpy.qos import QoSProfile, ReliabilityPolicy
                from std_msgs.msg import String

                from perception_fm.ros.segmentation_io import TOPIC_CONCEPTS

                publisher = harness.node.create_publisher(String, "/" + TOPIC_CONCEPTS,
                                                          QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
                deadline = time.monotonic() + min(plan.node_ready_s, max(rec.left(), 0))
                while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
                    time.sleep(0.2)
                publisher.publish(String(data="chair, table, lamp"))
            if not harness.wait_ready(min(plan.node_ready_s, max(rec.left() - 2.0, 0))):
                log.seek(0)
                rec.skip(f"{kind}_node", "no output before its ready deadline or the budget; its log ends: "
                                         + log.read()[-600:].replace("\n", " | "))
                return
            sweep = _peak_search(rec, harness, plan, kind)
            passing = [r["rate_hz"] for r in sweep if r["drop_ratio"] < 0.05]
            result = {"node": f"{kind}_node", "model": model, "process_res": process_res, "weights": weights,
                      "sweep": sweep, "peak_throughput_hz": max(passing, default=0.0)}
            at_rate = [r for r in sweep if r["rate_hz"] == plan.latency_rate]
            if at_rate:
                result["latency_at_rate"] = at_rate[0]
            rec.add("nodes", result)
        finally:
            harness.close()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _peak_search(rec: Recorder, harness, plan: Plan, kind: str) -> list[dict]:
    """Input rates tried for the peak throughput (the highest rate with < 5 % drops), fewest first: the latency
    rate, then upwards while rates pass, or downwards until one passes (the rates beyond add nothing)."""
    rates = sorted(set(plan.node_rates) | {plan.latency_rate})
    start = rates.index(plan.latency_rate)
    sweep = []

    def attempt(rate: float):
        if not rec.fits(plan.node_seconds + 2.5, f"{kind}_node at {rate:g} Hz"):
            return None
        result = harness.run(rate, plan.node_seconds)
        sweep.append(result)
        print(f"  {kind}_node {rate:g} Hz: {result['processed']}/{result['sent']} frames, latency p50 "
              f"{result['p50_ms']:.0f} ms", flush=True)
        return result["drop_ratio"] < 0.05

    passed = attempt(rates[start])
    if passed:
        for rate in rates[start + 1:]:
            if not attempt(rate):
                break
    elif passed is not None:
        for rate in reversed(rates[:start]):
            if attempt(rate) is not False:
                break
    return sweep


def step_nodes(rec: Recorder, plan: Plan) -> None:
    """Step 6: depth_node, then concept_node, over DDS on this device."""
    try:
        import rclpy  # noqa: F401

        from perception_fm.msg import DepthInfo  # noqa: F401  (our interfaces, built for this interpreter)
    except Exception as error:  # noqa: BLE001
        rec.skip("nodes", f"ROS 2 or perception_fm's interfaces do not import: {type(error).__name__}: {error}")
        return
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    for kind in ("depth", "concept"):
        if rec.fits(plan.node_seconds * 2 + 10.0, f"{kind}_node"):
            try:
                _node_run(rec, plan, kind)
            except Exception as error:  # noqa: BLE001 (recorded; the other node still runs)
                rec.skip(f"{kind}_node", f"{type(error).__name__}: {error}"[:400])


STEP_FUNCTIONS = {"tests": step_tests, "da3": step_da3, "sam3": step_sam3, "body": step_body,
                  "together": step_together, "nodes": step_nodes}


def run_step(name: str, budget_s: float, partial: Path, dry_run: bool) -> int:
    """The step process: run one step, its figures in `partial` (written as they come)."""
    rec = Recorder(partial, budget_s)
    rec.save()
    try:
        STEP_FUNCTIONS[name](rec, Plan.for_run(dry_run))
    except Exception as error:  # noqa: BLE001 (recorded with its traceback; the check goes on with the next step)
        rec.data["error"] = f"{type(error).__name__}: {error}"[:600]
        rec.data["traceback"] = traceback.format_exc()[-3000:]
        rec.save()
        traceback.print_exc()
        return 1
    return 0


# ------------------------------------------------------------------------------------------------------------
# The orchestrating process


@dataclass
class StepOutcome:
    status: str  # ok | partial | skipped | failed | stopped
    budget_s: float
    wall_s: float = 0.0
    reason: str = ""
    figures: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    traceback: str = ""


def _launch_step(name: str, budget_s: float, dry_run: bool, workdir: Path) -> StepOutcome:
    if budget_s <= 0:
        return StepOutcome("skipped", budget_s, reason="time budget: 0 s left for this step")
    partial = workdir / f"{name}.json"
    command = [sys.executable, "-m", "perception_fm.bench.device_bench", "--step", name, "--step-budget",
               f"{budget_s:.1f}", "--partial", str(partial)] + (["--dry-run"] if dry_run else [])
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO, start_new_session=True)
    stopped = False
    try:
        process.wait(timeout=budget_s + REPORT_GRACE_S)
    except subprocess.TimeoutExpired:
        stopped = True
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    wall = time.monotonic() - started
    data = json.loads(partial.read_text()) if partial.exists() else {}
    outcome = StepOutcome("ok", budget_s, wall, figures=data.get("figures", {}), skipped=data.get("skipped", []),
                          notes=data.get("notes", []), traceback=data.get("traceback", ""))
    if stopped:
        outcome.status, outcome.reason = "stopped", f"still running at its {budget_s:.0f} s budget; stopped " \
                                                    f"(figures up to then kept)"
    elif process.returncode != 0:
        outcome.status = "failed"
        outcome.reason = data.get("error") or f"the step process exited with code {process.returncode}"
    elif outcome.skipped and not any(outcome.figures.get(k) for k in outcome.figures
                                     if k not in ("command", "code", "parameters")):
        outcome.status = "skipped"
        outcome.reason = "; ".join(f"{s['what']}: {s['reason']}" for s in outcome.skipped)[:600]
    elif outcome.skipped:
        outcome.status = "partial"
    return outcome


def _environment() -> dict:
    import platform

    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "gpu": torch.cuda.is_available()}
    for package in ("transformers", "onnxruntime", "depth_anything_3"):
        try:
            info[package] = __import__(package).__version__
        except Exception:  # noqa: BLE001
            info[package] = None
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info.update(device_name=properties.name, device_memory_mb=properties.total_memory / 2**20,
                    multiprocessors=properties.multi_processor_count)
    return info


def run_check(steps, budgets: dict, total_budget_s: float, dry_run: bool, out: Path | None,
              results_dir: Path | None) -> dict:
    from datetime import datetime, timezone

    from perception_fm.bench import device_table
    from perception_fm.bench.common import device_name, results_path

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(int.from_bytes(os.urandom(1), "little") % 100 + 1))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched: a missing file is a clear error, not a wait
    started = time.monotonic()
    device, gpu = device_name()
    check = {"device": device, "dry_run": dry_run, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "environment": _environment(), "total_budget_s": total_budget_s, "steps": {}}
    carry = 0.0  # what earlier steps left unused
    with tempfile.TemporaryDirectory(prefix="device-check-") as workdir:
        for name in device_table.STEPS:
            if name not in steps:
                check["steps"][name] = asdict(StepOutcome("skipped", 0.0, reason="not selected (--steps)"))
                continue
            remaining = total_budget_s - (time.monotonic() - started) - REPORT_GRACE_S
            budget = max(0.0, min(budgets[name] + carry, remaining)) if budgets[name] > 0 else 0.0
            print(f"== step {name} (budget {budget:.0f} s)", flush=True)
            outcome = _launch_step(name, budget, dry_run, Path(workdir))
            carry = max(0.0, budget - outcome.wall_s) if budgets[name] > 0 else carry
            check["steps"][name] = asdict(outcome)
            print(f"   {name}: {outcome.status} in {outcome.wall_s:.0f} s{': ' + outcome.reason if outcome.reason else ''}",
                  flush=True)
            if name == "tests" and (Path(workdir) / "pytest.xml").exists() and out is not None:
                out.mkdir(parents=True, exist_ok=True)
                (out / "pytest.xml").write_bytes((Path(workdir) / "pytest.xml").read_bytes())
    check["wall_s"] = time.monotonic() - started
    results = {"device": device, "gpu": gpu, SECTION: check}
    stem = results_path(device).stem + ("-dry-run" if dry_run else "")
    targets = [out] if out is not None else []
    if results_dir is not None and not dry_run:
        targets.append(results_dir)
    for directory in targets:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{stem}.json"
        merged = json.loads(path.read_text()) if path.exists() else {"device": device, "gpu": gpu}
        merged[SECTION] = check  # the file's other sections (bench suite --save) are kept
        merged.setdefault("section_dates", {})[SECTION] = check["date"]
        path.write_text(json.dumps(merged, indent=2, default=float) + "\n")
        (directory / f"{stem}.md").write_text(device_table.markdown(merged, path.name))
        print(f"wrote {path} and {path.with_suffix('.md')}")
    print()
    print(device_table.markdown(results))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="perception-fm bench device", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny models, short budgets (CI)")
    parser.add_argument("--steps", default=",".join(STEP_FUNCTIONS), help="comma-separated subset of the steps")
    parser.add_argument("--budget", action="append", default=[], metavar="STEP=SECONDS",
                        help="override a step's time budget (0 skips it); repeatable")
    parser.add_argument("--total-budget", type=float, default=None,
                        help="seconds for all steps together (default: 470 on a GPU, 150 dry)")
    parser.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
                        help="also write <device>.json/.md here (default: $OUT when set)")
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results",
                        help="bench/results: where a GPU run's <device>.json/.md go (not written by --dry-run)")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # internal: run one step in this process
    parser.add_argument("--step-budget", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--partial", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        return run_step(args.step, args.step_budget, args.partial, args.dry_run)
    budgets = dict(DRY_BUDGETS if args.dry_run else GPU_BUDGETS)
    for item in args.budget:
        name, _, value = item.partition("=")
        if name not in budgets or not value:
            parser.error(f"--budget takes STEP=SECONDS with STEP one of {', '.join(budgets)}; got {item!r}")
        budgets[name] = float(value)
    steps = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(steps) - set(STEP_FUNCTIONS))
    if unknown:
        parser.error(f"unknown steps {unknown}; known: {', '.join(STEP_FUNCTIONS)}")
    total = args.total_budget if args.total_budget is not None else (150.0 if args.dry_run else 470.0)
    run_check(steps, budgets, total, args.dry_run, args.out, args.results_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
