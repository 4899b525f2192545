"""The memory budget: what each model of a graph needs (the plugins' estimate_memory hook, computed from the
architecture) against what its device has, checked by `perception-fm up` before anything starts.

Estimates come from the architecture, never from weights or the device: a plugin builds its network on the
meta device (build_on_meta: shapes, no storage) and counts parameter bytes at the dtype its weights load in,
then runs one forward pass on meta tensors at the configured workload (forward_peak_bytes) and records the
peak of the bytes its intermediate tensors hold at once. That peak is what an allocator that frees a tensor at
its last use needs (PyTorch's caching allocator on CUDA adds fragmentation on top; tests/test_vram_budget.py
checks the figure against the measured peak on CPU).
"""
from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from perception_fm.hookspecs import MemoryEstimate, ModelOptions, Task

MiB = 1 << 20
GiB = 1 << 30
# Task -> (node parameter -> workload key) for the estimate_memory hook.
WORKLOAD_PARAMS = {
    Task.DEPTH: {"window_size": "views"},
    Task.SEGMENTATION: {"max_objects": "objects", "max_concepts": "concepts"},
    Task.OBJECT_MESH: {"max_objects": "objects"},
    Task.BODY_MESH: {"max_people": "objects"},
    Task.SPEECH: {},
}


def node_workload(task: Task | str, values: Mapping[str, Any]) -> dict[str, int]:
    """The estimate_memory hook's workload from a node's parameter values."""
    return {key: int(values[name]) for name, key in WORKLOAD_PARAMS.get(Task(task), {}).items() if name in values}


def format_bytes(count: int | None) -> str:
    if count is None:
        return "unknown"
    return f"{count / GiB:.2f} GiB" if count >= GiB else f"{count / MiB:.1f} MiB"


# -- helpers for plugins ----------------------------------------------------------------------------------

_META = threading.local()  # build_on_meta is active in this thread
_PATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def build_on_meta():
    """Modules built inside, in this thread, have every parameter and buffer on the meta device (shapes and
    dtypes, no storage): an architecture of billions of parameters costs nothing to build. Unlike `with
    torch.device("meta")`, code that computes plain values while building (e.g. drop-path rates through
    torch.linspace(...).item()) still runs on the CPU: only what a module registers goes to meta. Other
    threads (another node's worker loading its weights in the same process) are not affected."""
    _install_meta_registration()
    _META.depth = getattr(_META, "depth", 0) + 1
    try:
        yield
    finally:
        _META.depth -= 1


def _install_meta_registration() -> None:
    """Wrap nn.Module.register_parameter/register_buffer once per process; the wrappers move what is
    registered to meta only in a thread inside build_on_meta."""
    import torch

    with _PATCH_LOCK:
        if getattr(torch.nn.Module.register_parameter, "_perception_fm_meta", False):
            return
        register_parameter = torch.nn.Module.register_parameter
        register_buffer = torch.nn.Module.register_buffer

        def parameter_on_meta(module, name, param):
            if getattr(_META, "depth", 0) and param is not None and param.device.type != "meta":
                param = torch.nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
            register_parameter(module, name, param)

        def buffer_on_meta(module, name, tensor, persistent=True):
            if getattr(_META, "depth", 0) and tensor is not None:
                tensor = tensor.to("meta")
            register_buffer(module, name, tensor, persistent)

        parameter_on_meta._perception_fm_meta = True
        torch.nn.Module.register_parameter = parameter_on_meta
        torch.nn.Module.register_buffer = buffer_on_meta


def module_bytes(module, dtype=None) -> tuple[int, int, int]:
    """(parameter count, parameter bytes, buffer bytes) of `module`, floating-point parameters counted at
    `dtype` (None: as they are)."""
    import torch

    def size(tensor) -> int:
        itemsize = torch.tensor([], dtype=dtype).element_size() if dtype is not None and tensor.is_floating_point() \
            else tensor.element_size()
        return tensor.numel() * itemsize

    params = list(module.parameters())
    return (sum(p.numel() for p in params), sum(size(p) for p in params),
            sum(b.numel() * b.element_size() for b in module.buffers()))


# safetensors dtype -> (torch's name, bytes per element)
SAFETENSORS_DTYPES = {"F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
                      "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1),
                      "U8": ("uint8", 1), "BOOL": ("bool", 1), "F8_E4M3": ("float8_e4m3fn", 1),
                      "F8_E5M2": ("float8_e5m2", 1)}


def checkpoint_parameters(files, dtype=None) -> tuple[int, int, str]:
    """(element count, bytes, dtypes) of the tensors stored in checkpoint files, read from their headers and
    pickles without loading any data: safetensors headers, and torch .ckpt/.pt/.pth files opened on the meta
    device (a Lightning checkpoint's "state_dict" only, not its optimiser state). For plugins whose architecture
    only upstream's own code can build: the checkpoint's tensors are the model's parameters and buffers.
    Floating-point tensors are counted at `dtype` (None: as stored)."""
    import json as json_module
    import struct

    import torch

    itemsize = torch.tensor([], dtype=dtype).element_size() if dtype is not None else None
    count = size = 0
    dtypes: set[str] = set()
    for path in files:
        path = str(path)
        if path.endswith(".safetensors"):
            with open(path, "rb") as stream:
                (length,) = struct.unpack("<Q", stream.read(8))
                header = json_module.loads(stream.read(length))
            for name, entry in header.items():
                if name == "__metadata__":
                    continue
                numel = 1
                for dim in entry["shape"]:
                    numel *= int(dim)
                stored, stored_bytes = SAFETENSORS_DTYPES[entry["dtype"]]
                cast = itemsize is not None and stored.startswith(("float", "bfloat"))
                count += numel
                size += numel * (itemsize if cast else stored_bytes)
                dtypes.add(str(dtype).replace("torch.", "") if cast else stored)
            continue
        state = torch.load(path, map_location="meta", weights_only=True, mmap=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        stack = [state]
        while stack:
            item = stack.pop()
            if isinstance(item, torch.Tensor):
                floating = item.is_floating_point()
                count += item.numel()
                size += item.numel() * (itemsize if itemsize and floating else item.element_size())
                dtypes.add(str(dtype if itemsize and floating else item.dtype).replace("torch.", ""))
            elif isinstance(item, dict):
                stack.extend(item.values())
            elif isinstance(item, (list, tuple)):
                stack.extend(item)
    return count, size, "+".join(sorted(dtypes))


def forward_peak_bytes(forward: Callable[[], Any]) -> int:
    """Peak bytes held at once by the tensors `forward()` allocates (its inputs and the module's weights not
    counted), run on meta tensors under torch.inference_mode. Autocast does not act on meta tensors: for mixed
    precision, run the meta module and its inputs in the autocast dtype (the activations of matmuls and
    convolutions are then in that dtype, as under autocast; normalisations that autocast keeps in fp32 are
    counted at the lower precision). A value read back from a meta tensor (`.item()`, `int(t.max())`) reads as 1
    (False for a bool) and nonzero() selects every element: such values steer small index tables or masks, not
    the size of the large activations; a model whose large activations depend on its data must not use this."""
    import torch

    tracker = _PeakTracker()
    autocast = torch.autocast

    class _MetaAutocast(autocast):  # model code asks autocast for its input's device type, here "meta"
        def __init__(self, device_type, *args, **kwargs):
            super().__init__("cpu" if device_type == "meta" else device_type, *args, **kwargs)

    torch.autocast = _MetaAutocast
    # nonzero() and masked selects on meta tensors: as if every element were selected (an upper bound)
    from torch.fx.experimental import _config as fx_config

    nonzero_all = fx_config.meta_nonzero_assume_all_nonzero
    fx_config.meta_nonzero_assume_all_nonzero = True
    try:
        with torch.inference_mode(), tracker:
            result = forward()
        del result
    finally:
        torch.autocast = autocast
        fx_config.meta_nonzero_assume_all_nonzero = nonzero_all
    return tracker.peak


class _PeakTracker:
    """A TorchDispatchMode counting the bytes of the storages its ops create, until each is freed."""

    def __new__(cls):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        class Tracker(TorchDispatchMode):
            def __init__(self):
                super().__init__()
                self.live = self.peak = 0
                self.sizes: dict[int, int] = {}

            def _freed(self, key: int) -> None:
                self.live -= self.sizes.pop(key, 0)

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                import torch

                if func.__name__.split(".")[0] in ("_local_scalar_dense", "item", "is_nonzero") and args[0].device.type == "meta":
                    return False if args[0].dtype == torch.bool else 1
                out = func(*args, **(kwargs or {}))
                inputs = {id(t.untyped_storage()) for t in tree_flatten((args, kwargs))[0]
                          if isinstance(t, torch.Tensor)}
                for tensor in tree_flatten(out)[0]:
                    if not isinstance(tensor, torch.Tensor):
                        continue
                    storage = tensor.untyped_storage()
                    key = id(storage)
                    if key in inputs or key in self.sizes:  # a view or an in-place result: no new memory
                        continue
                    self.sizes[key] = storage.nbytes()
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._freed, key)
                return out

        return Tracker()


def estimate_device(device: str) -> str:
    """The device a node's `device` parameter means here ("auto": CUDA when torch sees a GPU)."""
    if device != "auto":
        return device
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


# -- the graph's budget -----------------------------------------------------------------------------------

@dataclass
class NodeEstimate:
    node: str
    model: str
    device: str
    estimate: MemoryEstimate | None
    error: str = ""


def node_estimate(config, manager=None) -> NodeEstimate:
    """The estimate_memory hook's answer for one NodeConfig of a graph (its model at its parameters)."""
    from perception_fm.nodes.node_base import model_options
    from perception_fm.plugin_manager import default_manager
    from perception_fm.runtime.container import node_class

    manager = manager or default_manager()
    values = config.resolved_parameters()
    cls = node_class(config.module)
    options = model_options(values, cls.model_extra_params)
    device = estimate_device(options.device)
    options = ModelOptions(weights=options.weights, device=device, offline=True,
                           random_weights=options.random_weights, extra=options.extra)
    workload = node_workload(cls.task, values)
    model = values["model"]
    try:
        estimate = manager.estimate_memory(cls.task, model, options, workload)
    except Exception as error:  # a plugin's estimate failing must not stop `up`; the line says so
        first = " ".join(str(error).split()).split(". ")[0].rstrip(".")  # the what, not the how-to-fix
        return NodeEstimate(config.name, model, device, None, f"{type(error).__name__}: {first}")
    return NodeEstimate(config.name, model, device, estimate, "" if estimate else "no estimate from its plugin")


def device_memory(device: str) -> tuple[int, int, str]:
    """(available bytes, total bytes, what) of a device: CUDA's free and total memory, or the machine's
    available RAM (MemAvailable) for the CPU. CUDA is asked in a short child process so that this process (the
    one that starts the nodes) never holds a CUDA context of its own."""
    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        code = f"import torch; print(*torch.cuda.mem_get_info({index}))"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"cannot read the memory of {device}: {result.stderr.strip().splitlines()[-1:]}")
        free, total = (int(v) for v in result.stdout.split())
        return free, total, f"{device} free"
    fields = {}
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            name, value = line.split(":", 1)
            fields[name] = int(value.split()[0]) * 1024
    return fields["MemAvailable"], fields["MemTotal"], "available RAM"


@dataclass
class Budget:
    nodes: list[NodeEstimate]
    devices: dict[str, tuple[int, int, int, str]]  # device -> (needed, available, total, what)

    @property
    def over(self) -> list[str]:
        """Devices whose models need more than they have."""
        return [device for device, (needed, available, _, _) in self.devices.items() if needed > available]

    def lines(self) -> list[str]:
        out = []
        for entry in self.nodes:
            e = entry.estimate
            if e is None:
                out.append(f"  {entry.node}: {entry.model} on {entry.device}: unknown ({entry.error})")
                continue
            activations = format_bytes(e.activation_bytes) + (f" at {e.workload}" if e.workload else "")
            out.append(f"  {entry.node}: {entry.model} on {entry.device}: {format_bytes(e.total_bytes)} "
                       f"(weights {format_bytes(e.parameter_bytes + e.buffer_bytes)} {e.dtype}, activations "
                       f"{activations})")
        for device, (needed, available, total, what) in self.devices.items():
            verdict = "fits" if needed <= available else "DOES NOT FIT"
            unknown = sum(1 for entry in self.nodes if entry.device == device and entry.estimate is None)
            out.append(f"  {device}: {format_bytes(needed)} needed of {format_bytes(available)} {what} "
                       f"({format_bytes(total)} total): {verdict}"
                       + (f" ({unknown} model{'s' if unknown > 1 else ''} without an estimate not counted)"
                          if unknown else ""))
        return out


def graph_budget(graph, manager=None, memory: Callable[[str], tuple[int, int, str]] | None = None) -> Budget:
    """Every node's estimate, summed per device, against that device's memory (`memory`: device_memory)."""
    memory = memory or device_memory
    entries = [node_estimate(config, manager) for config in graph.nodes]
    devices: dict[str, tuple[int, int, int, str]] = {}
    for device in dict.fromkeys(entry.device for entry in entries):
        needed = sum(entry.estimate.total_bytes for entry in entries
                     if entry.device == device and entry.estimate is not None)
        available, total, what = memory(device)
        devices[device] = (needed, available, total, what)
    return Budget(entries, devices)


def estimate_values(estimate: MemoryEstimate | None) -> Mapping[str, str]:
    """An estimate as /diagnostics key/values (MiB)."""
    if estimate is None:
        return {}
    values = {"memory_parameters_mib": f"{estimate.parameter_bytes / MiB:.1f}",
              "memory_weights_dtype": estimate.dtype}
    if estimate.activation_bytes is not None:
        values["memory_activations_mib"] = f"{estimate.activation_bytes / MiB:.1f}"
    values["memory_total_mib"] = f"{estimate.total_bytes / MiB:.1f}"
    return values
