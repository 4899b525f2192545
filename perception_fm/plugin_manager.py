"""Finds plugins, lists their models and creates a model by task and name.

The core knows no plugin by name: built-in plugin modules are listed in perception_fm.plugins, third-party
ones come from the "perception_fm" entry-point group; both are asked through the register_models hook.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass

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


@functools.lru_cache(maxsize=1)
def default_manager() -> PluginManager:
    """The process-wide manager with built-in and entry-point plugins."""
    return PluginManager()
