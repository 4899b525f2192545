"""Finds plugins, lists their models and creates a model by task and name.

The core knows no plugin by name: built-in plugin modules are listed in perception_fm.plugins, third-party
ones come from the "perception_fm" entry-point group; both are asked through the register_models hook.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import pluggy

from perception_fm import hookspecs
from perception_fm.errors import PerceptionFmError, PluginNotFoundError, PluginUnavailableError
from perception_fm.hookspecs import ModelOptions, ModelSpec, Task
from perception_fm.plugins import BUILTIN_PLUGINS


@dataclass(frozen=True)
class ModelEntry:
    spec: ModelSpec
    plugin: str  # name the plugin was registered under

    @property
    def missing(self) -> list[str]:
        """Modules in spec.requires that cannot be imported here."""
        return [module for module in self.spec.requires if importlib.util.find_spec(module) is None]

    def status(self, weights: WeightsState, cuda: bool | None = None) -> str:
        """One phrase: "ready", or what stands between this model and a first frame (`cuda`: whether torch
        sees a CUDA GPU; asked only for CUDA-only models when None)."""
        problems = []
        if self.missing:
            problems.append("missing modules: " + ", ".join(self.missing))
        if self.spec.needs_cuda and not (cuda if cuda is not None else cuda_available()):
            problems.append("needs a CUDA GPU (none seen)")
        if weights.state == "download":
            problems.append("weights download on first use")
        elif weights.state == "gated":
            problems.append("gated weights: needs `hf auth login`" if not _hub_token()
                            else "gated weights download on first use")
        elif weights.state == "unavailable":
            problems.append("weights not available")
        return "; ".join(problems) or "ready"


# Files that hold weights; a cached hub repo with none of them (e.g. only config.json) is not "cached".
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".npz")


@dataclass(frozen=True)
class WeightsState:
    """Where a model's default weights stand on this machine, found without any network call.

    state: "none" (the model needs no download), "local" (a local directory), "cached" (in the Hugging Face
    hub cache), "download" (fetched on first use), "gated" (fetched on first use once the licence is accepted
    and this machine is logged in), "unavailable" (not here, and offline or a missing directory).
    """

    state: str
    detail: str  # a sentence (what to do, where)
    label: str = ""  # a few words for a table column

    @property
    def usable(self) -> bool:
        return self.state in ("none", "local", "cached")


def cached_hub_repos(cache_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Model repos in the local hub cache that hold a weights file: repo id -> size on disk (a local scan of
    the cache directory; HF_HUB_CACHE / HF_HOME choose it when `cache_dir` is None)."""
    try:
        from huggingface_hub import scan_cache_dir
        from huggingface_hub.errors import CacheNotFound
    except ImportError:
        return {}
    try:
        info = scan_cache_dir(cache_dir)
    except (CacheNotFound, OSError, ValueError):
        return {}
    return {repo.repo_id: repo.size_on_disk_str for repo in info.repos if repo.repo_type == "model" and any(
        file.file_name.endswith(WEIGHT_SUFFIXES) for revision in repo.revisions for file in revision.files)}


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def _hub_token() -> bool:
    try:
        from huggingface_hub import get_token
    except ImportError:
        return bool(os.environ.get("HF_TOKEN"))
    return bool(get_token())  # HF_TOKEN or the token file `hf auth login` wrote; no network


def weights_state(spec: ModelSpec, cached: dict[str, str]) -> WeightsState:
    """`spec`'s default weights: present here, downloadable, gated or unavailable (`cached`: cached_hub_repos())."""
    source = spec.default_weights
    if not source:
        return WeightsState("none", "none to download (bundled with the package)", "bundled")
    if source.startswith(("/", "./", "../", "~")):
        directory = Path(os.path.expanduser(source))
        if directory.is_dir():
            return WeightsState("local", f"local directory {source}", f"local: {source}")
        return WeightsState("unavailable", f"local directory {source} does not exist", f"missing: {source}")
    if source in cached:
        return WeightsState("cached", f"{source}: in the local hub cache ({cached[source]})",
                            f"cached ({cached[source]}): {source}")
    if _hub_offline():
        return WeightsState("unavailable", f"{source}: not in the local hub cache and HF_HUB_OFFLINE is set; "
                                           f"`hf download {source}` on a connected machine",
                            f"not cached, offline: {source}")
    if spec.gated:
        if _hub_token():
            return WeightsState("gated", f"{source}: gated; downloaded on first use if your account accepted the "
                                         f"licence on https://huggingface.co/{source}", f"gated: {source}")
        return WeightsState("gated", f"{source}: gated; accept the licence on https://huggingface.co/{source}, "
                                     "then `hf auth login`", f"gated: {source}")
    return WeightsState("download", f"{source}: downloaded from the hub on first use", f"to download: {source}")


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class PluginManager:
    def __init__(self, builtin: tuple[str, ...] = BUILTIN_PLUGINS, entry_points: bool = True):
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        for module_name in builtin:
            self._pm.register(importlib.import_module(module_name), name=module_name)
        if entry_points:
            self._pm.load_setuptools_entrypoints(hookspecs.PROJECT)

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin object or module (tests, embedding applications)."""
        self._pm.register(plugin, name=name)
        self.__dict__.pop("_entries", None)

    @functools.cached_property
    def _entries(self) -> dict[tuple[Task, str], ModelEntry]:
        entries: dict[tuple[Task, str], ModelEntry] = {}
        for impl in self._pm.hook.register_models.get_hookimpls():
            plugin_name = self._pm.get_name(impl.plugin) or repr(impl.plugin)
            for spec in impl.function() or ():
                key = (Task(spec.task), spec.name)
                if key in entries:
                    raise PerceptionFmError(
                        f"{spec.task} model {spec.name!r} is provided by both "
                        f"{entries[key].plugin} and {plugin_name}"
                    )
                entries[key] = ModelEntry(spec=spec, plugin=plugin_name)
        return entries

    def models(self, task: Task | str | None = None) -> list[ModelEntry]:
        """Installed models, sorted by task and name; only those of `task` when given."""
        wanted = Task(task) if task is not None else None
        return [
            entry
            for (entry_task, _), entry in sorted(self._entries.items(), key=lambda item: (item[0][0].value, item[0][1]))
            if wanted is None or entry_task is wanted
        ]

    def spec(self, task: Task | str, name: str) -> ModelSpec:
        task = Task(task)
        try:
            return self._entries[(task, name)].spec
        except KeyError:
            raise PluginNotFoundError(task.value, name, [e.spec.name for e in self.models(task)]) from None

    def create(self, task: Task | str, name: str, options: ModelOptions | None = None):
        """Build the model `name` of `task`. Raises PluginNotFoundError, PluginUnavailableError,
        WeightsNotFoundError, ... with messages that name what was asked and what exists."""
        task = Task(task)
        entry = self._entries.get((task, name))
        if entry is None:
            raise PluginNotFoundError(task.value, name, [e.spec.name for e in self.models(task)])
        if entry.missing:
            raise PluginUnavailableError(
                f"{task.value} model {name!r} (plugin {entry.plugin}) needs Python modules that are not "
                f"installed: {', '.join(entry.missing)}"
            )
        return entry.spec.create(options or ModelOptions())

    def estimate_memory(self, task: Task | str, name: str, options: ModelOptions | None = None,
                        workload: dict[str, int] | None = None):
        """The MemoryEstimate of model `name` at `options` and `workload` from its plugin's estimate_memory
        hook (hookspecs), or None when its plugin gives none. Unknown names raise PluginNotFoundError."""
        task = Task(task)
        if (task, name) not in self._entries:
            raise PluginNotFoundError(task.value, name, [e.spec.name for e in self.models(task)])
        return self._pm.hook.estimate_memory(task=task, name=name, options=options or ModelOptions(),
                                             workload=dict(workload or {}))


@functools.lru_cache(maxsize=1)
def default_manager() -> PluginManager:
    """The process-wide manager with built-in and entry-point plugins."""
    return PluginManager()
