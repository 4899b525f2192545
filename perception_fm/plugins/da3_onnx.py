"""Depth Anything 3 through ONNX Runtime: the any-view DA3 networks exported to ONNX once, then run by ONNX
Runtime's CPU, CUDA or TensorRT execution provider.

Models: ``da3-small-onnx``, ``da3-base-onnx``, ``da3-large-onnx``, ``da3-giant-onnx`` (the same weights and
options as the PyTorch ``da3-*`` models; preprocessing, pose conventions, known-pose conditioning and the
output are the PyTorch plugin's own code: this backend only replaces the network call).

What is exported (torch.onnx.export with dynamo=True), per processed image size:

* graph kinds: the camera-head path (depth, confidence, extrinsics, intrinsics), the ray path (depth,
  confidence, ray map + its confidence; our ray-pose solver runs on the result as in the PyTorch plugin) and,
  for each, the known-pose conditioned variant (extra inputs: world-to-camera extrinsics and intrinsics);
* view counts: upstream's network changes its control flow with the view count (reference-view selection
  from 3 views on, the DPT head in chunks of 8 views), so one graph covers one "segment" of counts: 1, 2,
  3-8, 9-16, ... A segment of more than one count is exported with a dynamic view axis.
  ``onnx_views`` chooses: "auto" (default: any count; each segment's graph is exported on first use),
  "N" (exactly N views, one fixed graph) or "A-B" (A to B views; graphs per segment, dynamic where a
  segment spans several counts). A count outside the chosen ones is a clear error (a counted drop in a node).

Exports are cached on disk (``onnx_cache_dir``, default ~/.cache/perception_fm/da3_onnx) keyed by the weights
(path + size + mtime of model.safetensors, or a hash of the random-init tensors), the architecture, the
processed size, the view segment, the graph kind, the reference-view strategy, the opset and the torch
version. An entry is written to a temporary directory and renamed into place when complete (a crash leaves no
half-written entry), and carries a manifest with the files' digests: an entry that fails the check or that
ONNX Runtime cannot load is logged, deleted and exported again. TensorRT's engines go to a sub-directory of
the entry keyed by the provider options.

Options (ModelOptions.extra; environment variables give node users the same choices, since depth_node passes
only its own model parameters): onnx_views; onnx_providers ("auto" or a comma-separated list of ONNX Runtime
provider names; env PERCEPTION_FM_ONNX_PROVIDERS); onnx_cache_dir (env PERCEPTION_FM_ONNX_CACHE);
onnx_opset (default 18). "auto" providers: TensorRT, CUDA, CPU, those present, when the device is a GPU;
CPU alone when the device is the CPU. TensorRT runs fp16 unless precision is fp32; CUDA and CPU run fp32.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perception_fm.errors import BadInputError, PluginUnavailableError
from perception_fm.hookspecs import ModelOptions, ModelSpec, Task, hookimpl
from perception_fm.plugins import da3
from perception_fm.tasks.depth import POSE_CAMERA_HEAD, POSE_RAY

log = logging.getLogger(__name__)

SUFFIX = "-onnx"
EXTRA = "onnx"  # the setup.py extra that installs what this backend needs
ONNX_MODULES = ("onnxruntime", "onnx", "onnxscript")
DEFAULT_OPSET = 18  # the dynamo exporter's minimum
CACHE_ENV = "PERCEPTION_FM_ONNX_CACHE"
PROVIDERS_ENV = "PERCEPTION_FM_ONNX_PROVIDERS"
TENSORRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
# Upstream's control flow by view count (depth_anything_3: THRESH_FOR_REF_SELECTION, the heads' chunk_size).
REF_SELECTION_VIEWS = 3
HEAD_CHUNK_VIEWS = 8
KNOWN_POSE_INPUTS = ("known_extrinsics", "known_intrinsics")
GRAPH_FILE, DATA_FILE, MANIFEST_FILE = "model.onnx", "model.onnx.data", "manifest.json"
# Bump when the exported graphs' inputs/outputs change, so old cache entries are not reused.
FORMAT_VERSION = 1

ANYVIEW_VARIANTS = tuple(variant for variant in da3.VARIANTS if variant.kind == "anyview")


@hookimpl
def register_models() -> list[ModelSpec]:
    return [
        ModelSpec(
            name=variant.name + SUFFIX,
            task=Task.DEPTH,
            summary=f"{variant.summary}; exported to ONNX, run by ONNX Runtime (needs the '{EXTRA}' extra)",
            license=variant.license,
            default_weights=variant.hub_id,
            # onnxruntime & co. are checked by create, whose error names the extra that installs them.
            requires=da3.GIANT_REQUIRES if "giant" in variant.name else da3.REQUIRES,
            create=functools.partial(Da3OnnxDepthModel.from_options, variant),
        )
        for variant in ANYVIEW_VARIANTS
    ]


@hookimpl
def estimate_memory(task, name, options, workload):
    """The PyTorch plugin's estimate at fp32 (the exported graphs are fp32), with the weights counted twice on
    the CPU: ONNX Runtime's copy and the PyTorch network kept for exports. ONNX Runtime's activation arena is
    not modelled: PyTorch's forward peak stands in for it (the note says so)."""
    import dataclasses

    if Task(task) is not Task.DEPTH or not name.endswith(SUFFIX):
        return None
    base = name[: -len(SUFFIX)]
    if base not in {variant.name for variant in ANYVIEW_VARIANTS}:
        return None
    fp32 = dataclasses.replace(options, extra={**dict(options.extra), "precision": "fp32"})
    estimate = da3.estimate_memory(task, base, fp32, workload)
    on_cpu = not str(options.device).startswith("cuda")
    note = ("weights twice: ONNX Runtime's copy and the PyTorch network kept for exports" if on_cpu else
            "ONNX Runtime's copy of the weights on the GPU; the PyTorch network (kept for exports) is in host RAM")
    return dataclasses.replace(estimate, parameter_bytes=estimate.parameter_bytes * (2 if on_cpu else 1),
                               note=f"{note}; activations: PyTorch's forward peak as a stand-in for ONNX Runtime's")


def require_onnx_stack():
    """onnxruntime, or PluginUnavailableError naming the extra that installs the export + runtime stack."""
    missing = []
    for module in ONNX_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise PluginUnavailableError(
            f"the ONNX backend of Depth Anything 3 needs {', '.join(missing)} (not installed): "
            f"pip install 'perception_fm[{EXTRA}]'"
        )
    import onnxruntime

    return onnxruntime


# ----------------------------------------------------------------------------------------------------------
# View counts


def segment_of(views: int) -> tuple[int, int]:
    """The range of view counts over which upstream's network runs the same operations as for `views`."""
    if views < REF_SELECTION_VIEWS:
        return views, views
    chunk = (views - 1) // HEAD_CHUNK_VIEWS
    return max(REF_SELECTION_VIEWS, chunk * HEAD_CHUNK_VIEWS + 1), (chunk + 1) * HEAD_CHUNK_VIEWS


def parse_views(spec) -> tuple[int, int] | None:
    """onnx_views → (lowest, highest) view count served, or None for "auto" (any count)."""
    text = str(spec).strip().lower()
    if text in ("", "auto"):
        return None
    try:
        low, _, high = text.partition("-")
        bounds = (int(low), int(high) if high else int(low))
    except ValueError:
        bounds = None
    if bounds is None or not 1 <= bounds[0] <= bounds[1]:
        raise ValueError(f"onnx_views must be \"auto\", a view count N >= 1 or a range \"A-B\" (1 <= A <= B), "
                         f"got {spec!r}")
    return bounds


def graph_views(views: int, served: tuple[int, int] | None) -> tuple[int, int]:
    """The view counts of the graph that serves a `views`-view call: its segment, clipped to `served`."""
    if served is not None and not served[0] <= views <= served[1]:
        allowed = str(served[0]) if served[0] == served[1] else f"{served[0]} to {served[1]}"
        raise BadInputError("view_count", f"this ONNX backend was configured for {allowed} views "
                                          f"(onnx_views), got {views}")
    low, high = segment_of(views)
    if served is not None:
        low, high = max(low, served[0]), min(high, served[1])
    return low, high


# ----------------------------------------------------------------------------------------------------------
# Providers


def choose_providers(requested, device: str, available: list[str]) -> list[str]:
    """ONNX Runtime providers in preference order: `requested` ("auto" or names, comma-separated or a list)."""
    if isinstance(requested, str):
        names = [name.strip() for name in requested.split(",") if name.strip()]
    else:
        names = [str(name) for name in requested]
    if names in ([], ["auto"]):
        wanted = (TENSORRT, CUDA, CPU) if device.startswith("cuda") else (CPU,)
        return [name for name in wanted if name in available] or [CPU]
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ValueError(f"ONNX Runtime providers {unknown} are not available here; available: {available} "
                         f"(CUDA/TensorRT need the onnxruntime-gpu package)")
    return names


def provider_options(providers: list[str], device: str, precision: str, engine_dir: Path) -> list:
    """(name, options) per provider: the GPU of `device`; TensorRT's engine cache in `engine_dir`."""
    index = int(device.split(":")[1]) if device.startswith("cuda:") else 0
    result = []
    for name in providers:
        if name == TENSORRT:
            result.append((name, {"device_id": index, "trt_fp16_enable": precision != "fp32",
                                  "trt_engine_cache_enable": True, "trt_engine_cache_path": str(engine_dir),
                                  "trt_timing_cache_enable": True, "trt_timing_cache_path": str(engine_dir)}))
        elif name == CUDA:
            result.append((name, {"device_id": index}))
        else:
            result.append((name, {}))
    return result


# ----------------------------------------------------------------------------------------------------------
# Export


@dataclass(frozen=True)
class GraphKey:
    """What one exported graph is: everything its content depends on."""

    weights_id: str
    architecture: str
    size: tuple[int, int]  # processed (rows, columns)
    views: tuple[int, int]  # lowest, highest view count (equal: a fixed view axis)
    ray: bool  # outputs the ray map (pose_method "ray") instead of the camera head's pose
    conditioned: bool  # takes known extrinsics + intrinsics
    ref_view_strategy: str
    opset: int

    def digest(self) -> str:
        import torch

        fields = {**self.__dict__, "torch": torch.__version__, "format": FORMAT_VERSION}
        return hashlib.sha256(json.dumps(fields, sort_keys=True, default=list).encode()).hexdigest()[:24]

    def label(self) -> str:
        views = str(self.views[0]) if self.views[0] == self.views[1] else f"{self.views[0]}-{self.views[1]}"
        return (f"{self.architecture} {self.size[1]}x{self.size[0]} {views} view(s) "
                f"{'ray' if self.ray else 'camera head'}{' + known poses' if self.conditioned else ''}")


def graph_module(net, ray: bool, conditioned: bool, ref_view_strategy: str):
    """The torch module torch.onnx.export traces for one graph kind (positional tensors in, a tuple out)."""
    import torch

    class Graph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, images, extrinsics=None, intrinsics=None):
            height, width = images.shape[-2:]
            if not ray:
                out = self.net(images, extrinsics, intrinsics, export_feat_layers=[], use_ray_pose=False,
                               ref_view_strategy=ref_view_strategy)
                return out["depth"], out["depth_conf"], out["extrinsics"], out["intrinsics"]
            # The ray path stops before upstream's pose solve: ours (ray_pose) runs on the ray map.
            cam_token = None if extrinsics is None else self.net.cam_enc(extrinsics, intrinsics, (height, width))
            features, _ = self.net.backbone(images, cam_token=cam_token, export_feat_layers=[],
                                            ref_view_strategy=ref_view_strategy)
            head = self.net.head(features, height, width, patch_start_idx=0)
            return head["depth"], head["depth_conf"], head["ray"], head["ray_conf"]

    return Graph().eval()


def output_names(ray: bool) -> list[str]:
    return ["depth", "depth_conf", "ray", "ray_conf"] if ray else ["depth", "depth_conf", "extrinsics", "intrinsics"]


@contextlib.contextmanager
def exportable(net, table_length: int):
    """Upstream's network made traceable by torch.export, for the duration of an export.

    Its 2-D RoPE sizes its cos/sin table by ``int(positions.max()) + 1``, a value read from a tensor, which
    torch.export cannot trace. The table's rows do not depend on its length (row i holds position i), so a
    constant length that covers every position (the longest side in patches + 2) gives the same values.
    RoPE's table cache and the position cache would keep tensors made during tracing: both are emptied for
    the export and restored after it."""
    from depth_anything_3.model.dinov2.layers.rope import RotaryPositionEmbedding2D

    def fixed_table_forward(self, tokens, positions):
        import torch

        half = tokens.size(-1) // 2
        cos, sin = self._compute_frequency_components(half, table_length, tokens.device, tokens.dtype)
        vertical, horizontal = tokens.chunk(2, dim=-1)
        return torch.cat((self._apply_1d_rope(vertical, positions[..., 0], cos, sin),
                          self._apply_1d_rope(horizontal, positions[..., 1], cos, sin)), dim=-1)

    ropes = [module for module in net.modules() if isinstance(module, RotaryPositionEmbedding2D)]
    getters = [module.position_getter for module in net.modules()
               if getattr(module, "position_getter", None) is not None]
    saved_tables = [rope.frequency_cache for rope in ropes]
    saved_positions = [getter.position_cache for getter in getters]
    try:
        for rope in ropes:
            rope.frequency_cache = {}
            rope.forward = types.MethodType(fixed_table_forward, rope)
        for getter in getters:
            getter.position_cache = {}
        yield
    finally:
        for rope, table in zip(ropes, saved_tables):
            rope.frequency_cache = table
            rope.__dict__.pop("forward", None)
        for getter, positions in zip(getters, saved_positions):
            getter.position_cache = positions


def export_graph(net, key: GraphKey, path: Path) -> None:
    """Export the graph `key` describes to `path` (GRAPH_FILE with its weights in DATA_FILE beside it)."""
    import warnings

    import torch

    height, width = key.size
    low, high = key.views
    # Trace with a count inside the range (not 1: torch.export treats sizes 0 and 1 specially).
    views = low if low == high else min(low + 1, high)
    inputs = [torch.zeros(1, views, 3, height, width)]
    names = ["images"]
    if key.conditioned:
        inputs += [torch.eye(4).expand(1, views, 4, 4).contiguous(),
                   torch.tensor([[width, 0.0, width / 2], [0.0, width, height / 2], [0.0, 0.0, 1.0]])
                   .expand(1, views, 3, 3).contiguous()]
        names += list(KNOWN_POSE_INPUTS)  # not "extrinsics": ONNX names must differ from the outputs'
    dynamic_shapes = None
    if low != high:
        axis = torch.export.Dim("views", min=low, max=high)
        dynamic_shapes = tuple({1: axis} for _ in inputs)
    module = graph_module(net, key.ray, key.conditioned, key.ref_view_strategy)
    longest = max(height, width) // da3.PATCH_SIZE + 2
    # A lazy export runs inside predict: out of its inference mode and GPU autocast.
    with exportable(net, longest), warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad(), \
            torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings
        program = torch.onnx.export(module, tuple(inputs), dynamo=True, opset_version=key.opset,
                                    input_names=names, output_names=output_names(key.ray),
                                    dynamic_shapes=dynamic_shapes, verbose=False)
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(path), external_data=True)


# ----------------------------------------------------------------------------------------------------------
# Cache


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "perception_fm" / "da3_onnx"


def _file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _entry_files(directory: Path) -> list[Path]:
    return sorted(path for path in directory.iterdir() if path.is_file() and path.name != MANIFEST_FILE)


class GraphCache:
    """Exported graphs on disk, one directory per GraphKey digest, complete or absent."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory).expanduser()
        self.exports = 0  # graphs exported by this process (not found complete in the cache)
        self.rebuilds = 0  # entries found damaged and exported again

    def entry(self, key: GraphKey) -> Path:
        return self.directory / key.digest()

    def check(self, key: GraphKey) -> str | None:
        """Why the entry of `key` cannot be used ("absent", or what is damaged); None when it is complete."""
        directory = self.entry(key)
        if not directory.is_dir():
            return "absent"
        try:
            manifest = json.loads((directory / MANIFEST_FILE).read_text())
            recorded = manifest["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return "its manifest is missing or unreadable"
        if manifest.get("key") != key.digest():
            return "its manifest belongs to another graph"
        present = {path.name: path for path in _entry_files(directory)}
        if set(present) != set(recorded):
            return f"its files {sorted(present)} are not the recorded {sorted(recorded)}"
        for name, digest in recorded.items():
            if _file_digest(present[name]) != digest:
                return f"{name} does not match its recorded digest"
        return None

    def _remove_abandoned(self, age_s: float = 24 * 3600.0) -> None:
        """Delete temporary export directories a killed process left (older than `age_s`: not in progress)."""
        for staging in self.directory.glob(".*.partial"):
            with contextlib.suppress(OSError):
                if time.time() - staging.stat().st_mtime > age_s:
                    shutil.rmtree(staging, ignore_errors=True)

    def discard(self, key: GraphKey, why: str) -> None:
        log.warning("DA3 ONNX cache entry %s (%s) is damaged: %s; deleting and exporting it again",
                    self.entry(key), key.label(), why)
        shutil.rmtree(self.entry(key), ignore_errors=True)
        self.rebuilds += 1

    def build(self, key: GraphKey, net) -> Path:
        """Export `key` into a temporary directory beside the entry, then rename it into place."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._remove_abandoned()
        staging = Path(tempfile.mkdtemp(prefix=f".{key.digest()}.", suffix=".partial", dir=self.directory))
        try:
            started = time.perf_counter()
            log.info("exporting DA3 to ONNX: %s (first use; cached in %s)", key.label(), self.directory)
            export_graph(net, key, staging / GRAPH_FILE)
            manifest = {"key": key.digest(), "graph": key.label(), "fields": {**key.__dict__},
                        "files": {path.name: _file_digest(path) for path in _entry_files(staging)}}
            (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, default=list))
            target = self.entry(key)
            try:
                os.rename(staging, target)  # atomic: the entry appears complete or not at all
            except OSError:
                if self.check(key) is not None:  # not another process's complete entry: ours replaces it
                    shutil.rmtree(target, ignore_errors=True)
                    os.rename(staging, target)
            self.exports += 1
            log.info("exported %s in %.1f s", key.label(), time.perf_counter() - started)
            return target
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def weights_identity(net, weights: str, directory: Path | None) -> str:
    """A cache key for the network's values: the safetensors file's path, size and mtime when loaded from one;
    a digest of every tensor for random-init networks (no file to name)."""
    if directory is not None:
        stat = (directory / da3.WEIGHTS_FILE).stat()
        return f"file:{(directory / da3.WEIGHTS_FILE).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    digest = hashlib.blake2b(digest_size=20)
    for name, tensor in net.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return f"{weights}:{digest.hexdigest()}"


# ----------------------------------------------------------------------------------------------------------
# The model


class Da3OnnxDepthModel(da3.Da3DepthModel):
    """The PyTorch plugin's model with its network call replaced by ONNX Runtime sessions. The PyTorch network
    stays on the CPU, used only to export graphs not yet in the cache."""

    def __init__(self, variant: da3.Da3Variant, net, *, weights: str, weights_dir: Path | None, device: str,
                 views="auto", providers="auto", cache_dir: str | os.PathLike | None = None,
                 opset: int = DEFAULT_OPSET, precision: str = "auto", **options):
        ort = require_onnx_stack()
        self.served_views = parse_views(views)
        self.opset = int(opset)
        if self.opset < DEFAULT_OPSET:
            raise ValueError(f"onnx_opset must be >= {DEFAULT_OPSET} (torch's dynamo exporter), got {opset}")
        self.providers = choose_providers(providers, device, ort.get_available_providers())
        self._ort = ort
        self._precision = precision
        super().__init__(variant, net.cpu(), weights=weights, device="cpu", precision=precision, **options)
        self.device = device  # preprocessing runs here; the network on the ONNX Runtime providers
        self._mean, self._std = self._mean.to(device), self._std.to(device)
        self.name = variant.name + SUFFIX
        self.cache = GraphCache(cache_dir or os.environ.get(CACHE_ENV) or default_cache_dir())
        self._weights_id = weights_identity(self.net, weights, weights_dir)
        self._sessions: dict[GraphKey, object] = {}
        self._lock = threading.Lock()  # one export / session creation at a time
        log.info("DA3 ONNX backend: providers %s, cache %s", self.providers, self.cache.directory)

    @classmethod
    def from_options(cls, variant: da3.Da3Variant, options: ModelOptions) -> "Da3OnnxDepthModel":
        import torch

        ort = require_onnx_stack()
        device = da3.select_device(options.device)
        extra = dict(options.extra)
        providers = extra.get("onnx_providers") or os.environ.get(PROVIDERS_ENV) or "auto"
        # Bad options fail here, before the network is built or loaded.
        parse_views(extra.get("onnx_views", "auto"))
        choose_providers(providers, device, ort.get_available_providers())
        weights_dir = None
        if options.random_weights:
            torch.manual_seed(0)  # the PyTorch plugin's random network, value for value
            net, weights = da3.build_network(variant.name), da3.RANDOM_WEIGHTS
        else:
            weights_dir = da3.resolve_weights(options.weights or variant.hub_id, options)
            architecture = da3.read_architecture(weights_dir)
            if architecture != variant.name:
                raise da3.WeightsMismatchError(f"weights in {str(weights_dir)!r} are for {architecture!r}, but model "
                                               f"{variant.name + SUFFIX!r} was asked for")
            net = da3.build_network(architecture)
            da3.load_state(net, weights_dir)
            weights = options.weights or variant.hub_id
        return cls(
            variant, net, weights=weights, weights_dir=weights_dir, device=device,
            views=extra.get("onnx_views", "auto"), providers=providers,
            cache_dir=extra.get("onnx_cache_dir") or None,
            opset=int(extra.get("onnx_opset", DEFAULT_OPSET)),
            process_res=int(extra.get("process_res", 504)),
            pose_method=str(extra.get("pose_method", POSE_CAMERA_HEAD)),
            precision=str(extra.get("precision", "auto")),
            resize=str(extra.get("resize", da3.RESIZE_UPSTREAM)),
            ref_view_strategy=str(extra.get("ref_view_strategy", da3.DEFAULT_REF_VIEW_STRATEGY)),
        )

    # -- graphs -----------------------------------------------------------------------------------------

    def graph_key(self, views: int, size: tuple[int, int], ray: bool, conditioned: bool) -> GraphKey:
        return GraphKey(weights_id=self._weights_id, architecture=self.variant.name, size=tuple(size),
                        views=graph_views(views, self.served_views), ray=ray, conditioned=conditioned,
                        ref_view_strategy=self.ref_view_strategy, opset=self.opset)

    def session(self, key: GraphKey):
        """The ONNX Runtime session of `key`: from this process, the disk cache, or a new export."""
        session = self._sessions.get(key)
        if session is not None:
            return session
        with self._lock:
            if key in self._sessions:
                return self._sessions[key]
            why = self.cache.check(key)
            if why is not None and why != "absent":
                self.cache.discard(key, why)
            if why is not None:
                self.cache.build(key, self.net)
            try:
                session = self._open(key)
            except Exception as error:  # noqa: BLE001 - ONNX Runtime raises its own untyped errors for bad files
                if why is not None:
                    raise  # freshly exported: not a cache problem
                self.cache.discard(key, f"ONNX Runtime cannot load it ({error})")
                self.cache.build(key, self.net)
                session = self._open(key)
            self._sessions[key] = session
            return session

    def _open(self, key: GraphKey):
        entry = self.cache.entry(key)
        engines = entry / ("engines-" + hashlib.sha256(json.dumps(
            [self.providers, self.device, self._precision]).encode()).hexdigest()[:12])
        if TENSORRT in self.providers:
            engines.mkdir(exist_ok=True)
        session_options = self._ort.SessionOptions()
        session_options.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.log_severity_level = 3  # errors only: its warnings repeat per session
        session = self._ort.InferenceSession(
            str(entry / GRAPH_FILE), sess_options=session_options,
            providers=provider_options(self.providers, self.device, self._precision, engines))
        log.info("ONNX Runtime session for %s on %s", key.label(), session.get_providers())
        return session

    def prebuild(self, views: int = 1, size: tuple[int, int] | None = None, ray: bool | None = None,
                 conditioned: bool = False) -> GraphKey:
        """Export (or load) the graph for `views`-view calls at processed `size` (default: a 640x480 camera's)
        before the first frame, so that no frame waits for an export. Returns its key."""
        size = size or da3.processed_size(480, 640, self.process_res)
        key = self.graph_key(views, size, self.pose_method == POSE_RAY if ray is None else ray, conditioned)
        self.session(key)
        return key

    # -- inference --------------------------------------------------------------------------------------

    def _forward_anyview(self, net, x, extrinsics, intrinsics, method):
        import torch
        from addict import Dict

        from perception_fm.geometry.ray_pose import solve_ray_pose

        ray = method == POSE_RAY
        key = self.graph_key(x.shape[1], tuple(x.shape[-2:]), ray, extrinsics is not None)
        session = self.session(key)
        inputs = {"images": x}
        if extrinsics is not None:
            inputs.update(zip(KNOWN_POSE_INPUTS, (extrinsics, intrinsics)))
        outputs = [torch.from_numpy(array) for array in self._run(session, inputs)]
        if not ray:
            depth, confidence, world_to_camera, K = outputs
            return Dict(depth=depth, depth_conf=confidence, extrinsics=world_to_camera, intrinsics=K)
        depth, confidence, rays, ray_confidence = outputs
        K, world_to_camera = solve_ray_pose(rays[0], ray_confidence[0], tuple(x.shape[-2:]))
        return Dict(depth=depth, depth_conf=confidence,
                    extrinsics=world_to_camera[None, :, :3, :].float(), intrinsics=K[None].float())

    def _run(self, session, inputs: dict) -> list[np.ndarray]:
        """Run `session`; GPU tensors are handed to ONNX Runtime in place (IO binding), host ones as arrays."""
        tensors = {name: value.float().contiguous() for name, value in inputs.items()}
        gpu_session = any(provider in (CUDA, TENSORRT) for provider in session.get_providers())
        if not (gpu_session and any(tensor.is_cuda for tensor in tensors.values())):
            # (a CPU-only onnxruntime with preprocessing on a GPU: the inputs come to the host)
            return session.run(None, {name: tensor.cpu().numpy() for name, tensor in tensors.items()})
        binding = session.io_binding()
        for name, tensor in tensors.items():
            binding.bind_input(name=name, device_type="cuda", device_id=tensor.device.index or 0,
                               element_type=np.float32, shape=tuple(tensor.shape), buffer_ptr=tensor.data_ptr())
        for output in session.get_outputs():
            binding.bind_output(output.name, "cpu")  # predict copies every output to the host anyway
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


def main(argv=None) -> int:
    """python -m perception_fm.plugins.da3_onnx: export (or check) the graphs a depth node will use, before it
    runs, so that no frame waits for an export."""
    import argparse

    from perception_fm.plugin_manager import PluginManager

    parser = argparse.ArgumentParser(prog="python -m perception_fm.plugins.da3_onnx", description=main.__doc__)
    parser.add_argument("--model", default="da3-small", help="PyTorch model name (da3-small, -base, -large, -giant)")
    parser.add_argument("--weights", default="", help="hub id or local directory (default: the model's hub id)")
    parser.add_argument("--random-weights", action="store_true", help="random weights (benchmarks)")
    parser.add_argument("--process-res", type=int, default=504)
    parser.add_argument("--image-size", default="640x480", help="camera image WIDTHxHEIGHT")
    parser.add_argument("--views", default="1", help="view counts to prepare: N or A-B (a node's 1-window_size)")
    parser.add_argument("--pose-method", default=POSE_CAMERA_HEAD, choices=(POSE_CAMERA_HEAD, POSE_RAY))
    parser.add_argument("--known-poses", action="store_true", help="also the known-pose graphs (2+ views)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--providers", default="auto")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--ref-view-strategy", default=da3.DEFAULT_REF_VIEW_STRATEGY, choices=da3.REF_VIEW_STRATEGIES)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    low, high = parse_views(args.views)
    width, height = (int(v) for v in args.image_size.lower().split("x"))
    model = PluginManager(entry_points=False).create(Task.DEPTH, args.model + SUFFIX, ModelOptions(
        weights=args.weights, random_weights=args.random_weights, device=args.device, extra={
            "process_res": args.process_res, "onnx_views": args.views, "onnx_providers": args.providers,
            "onnx_cache_dir": args.cache_dir, "pose_method": args.pose_method,
            "ref_view_strategy": args.ref_view_strategy}))
    size = da3.processed_size(height, width, model.process_res)
    views, done = low, set()
    while views <= high:
        for conditioned in (False, True) if args.known_poses and views >= 2 else (False,):
            key = model.graph_key(views, size, model.pose_method == POSE_RAY, conditioned)
            if key not in done:
                model.session(key)
                done.add(key)
                print(f"ready: {key.label()} in {model.cache.entry(key)}")
        views = graph_views(views, model.served_views)[1] + 1
    print(f"{len(done)} graph(s) ready ({model.cache.exports} exported, {model.cache.rebuilds} rebuilt) "
          f"for providers {model.providers}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
