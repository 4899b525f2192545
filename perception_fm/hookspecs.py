"""The plugin contract of perception_fm.

A plugin is a plain Python module (or object) with functions marked ``@hookimpl``. It declares the models it
provides through one hook, ``register_models``; each model serves exactly one task. Nodes create a model by
task and name (a ROS parameter) through the plugin manager (``perception_fm.plugins``) and then talk to it
through that task's protocol, defined in ``perception_fm.tasks.<task>``:

============= ==================================================== ===========================
task          protocol                                             used by
============= ==================================================== ===========================
depth         perception_fm.tasks.depth.DepthModel                 depth_node, replay
segmentation  perception_fm.tasks.segmentation.SegmentationModel   concept_node, replay
object_mesh   perception_fm.tasks.object_mesh.ObjectMeshModel      object_mesh_node
body_mesh     perception_fm.tasks.body_mesh.BodyMeshModel          body_node
speech        perception_fm.tasks.speech.SpeechModel               speech_node
============= ==================================================== ===========================

Built-in plugins live in ``perception_fm.plugins`` and are registered by the plugin manager. Third-party
plugins are found through the ``perception_fm`` entry-point group::

    # setup.py / pyproject of the third-party package
    entry_points={"perception_fm": ["my_depth = my_package.my_plugin"]}

    # my_package/my_plugin.py
    from perception_fm.hookspecs import hookimpl, ModelSpec, Task

    @hookimpl
    def register_models():
        return [ModelSpec(name="my-depth", task=Task.DEPTH, summary="...", license="MIT",
                          create=lambda options: MyDepthModel(options))]

A plugin should also implement ``estimate_memory`` (optional; firstresult): the parameter and peak activation
bytes of one of its models at the configured precision and workload, computed from the architecture without
weights. ``perception-fm plugins --memory`` prints it, ``perception-fm up`` adds it up against the device's
memory before starting, and nodes put it on /diagnostics; a model without an estimate is listed as unknown.

Registration must be cheap: import heavy dependencies (torch, model packages) inside ``create``, and report
a missing one through ``ModelSpec.requires`` so that ``perception-fm plugins`` can say what is missing.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import pluggy

PROJECT = "perception_fm"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Task(str, enum.Enum):
    """What a model does; one node type serves each task."""

    DEPTH = "depth"
    SEGMENTATION = "segmentation"
    OBJECT_MESH = "object_mesh"
    BODY_MESH = "body_mesh"
    SPEECH = "speech"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ModelOptions:
    """How the node asks for a model; every field maps to a node parameter of the same name.

    weights: a Hugging Face hub id ("depth-anything/DA3-SMALL") or a local directory. Empty means the
        model's default hub id.
    device: "auto" (first CUDA GPU, else CPU), "cpu", "cuda" or "cuda:N".
    offline: never contact the hub; only local directories and the local hub cache are used
        (HF_HUB_OFFLINE=1 in the environment has the same effect).
    random_weights: build the architecture with random weights instead of loading any. For tests,
        benchmarks and plumbing checks only; every output is labelled with weights="random-init".
    extra: task- or model-specific options (e.g. process_res, pose_method for depth).
    """

    weights: str = ""
    device: str = "auto"
    offline: bool = False
    random_weights: bool = False
    revision: str | None = None
    cache_dir: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    """One model a plugin provides.

    name: what users put in the node's ``model`` parameter (unique per task).
    create: builds the model; raises WeightsNotFoundError / PluginUnavailableError with a clear message.
    requires: importable modules ``create`` needs; listed as missing by ``perception-fm plugins``.
    license: licence of the default weights (users must see it when they pick a model).
    gated: the default weights are gated on the Hugging Face hub (accept the licence, then `hf auth login`).
    needs_cuda: the model runs only on a CUDA GPU.
    """

    name: str
    task: Task
    summary: str
    create: Callable[[ModelOptions], Any]
    license: str = "unknown"
    default_weights: str = ""
    requires: tuple[str, ...] = ()
    gated: bool = False
    needs_cuda: bool = False


@hookspec
def register_models() -> list[ModelSpec]:
    """Return the models this plugin provides."""


@dataclass(frozen=True)
class MemoryEstimate:
    """What one model needs in memory on its device, computed from its architecture (not measured, nothing
    loaded): ``perception-fm plugins --memory``, the budget ``perception-fm up`` checks, /diagnostics.

    parameters: number of parameter elements; parameter_bytes: their bytes in the dtype the weights load in
        (``dtype``, from the ``precision`` option and the device). buffer_bytes: the module's buffers.
    activation_bytes: peak of the tensors one forward pass allocates at the configured workload (``workload``
        says which: resolution, views, objects); None when the plugin cannot estimate it (``note`` says why).
    """

    parameters: int
    parameter_bytes: int
    dtype: str
    buffer_bytes: int = 0
    activation_bytes: int | None = None
    workload: str = ""
    note: str = ""

    @property
    def total_bytes(self) -> int:
        return self.parameter_bytes + self.buffer_bytes + (self.activation_bytes or 0)


@hookspec(firstresult=True)
def estimate_memory(task: Task, name: str, options: ModelOptions, workload: Mapping[str, int]) -> MemoryEstimate | None:
    """The memory model `name` of `task` needs with `options` (device, precision and the model's extra options
    such as process_res or image_size), or None if this plugin does not provide that model. `workload`: how much
    one call processes, from the node's parameters: ``views`` (images per depth call), ``objects`` (tracked
    objects), ``concepts`` (text prompts at once); a model uses the keys that apply to it.

    Compute it from the architecture without loading weights or touching the device (it runs before any node
    starts); perception_fm.runtime.budget has helpers: build_on_meta (a module with no storage) and
    forward_peak_bytes (the peak of a forward pass on meta tensors).
    """
