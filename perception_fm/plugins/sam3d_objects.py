"""SAM 3D Objects (Meta, 2025) as a perception_fm object-mesh plugin: one masked object (+ optional pointmap) in,
a vertex-coloured mesh in the object's frame and its layout (rotation, translation, scale) in the camera out.

The network and its sampling are Meta's, called through their pipeline class
``sam3d_objects.pipeline.inference_pipeline_pointmap.InferencePipelinePointMap`` built from the checkpoint's
``pipeline.yaml`` (what Meta's ``notebook/inference.py::Inference`` does). The code comes from Meta's repository
(facebookresearch/sam-3d-objects, installed with ``pip install -e .`` per its doc/setup.md) when it is importable
as ``sam3d_objects``, else from the identical copy vendored in PyPI ``sam3d`` (``sam3d/third_party/meta/
sam3d_objects``, put on sys.path the way ``sam3d.loaders.add_vendored_meta_to_syspath`` does). Everything around
it is ours: finding the weights (hub id or local directory, offline honoured, hydra targets checked before they
are instantiated), validating requests, converting conventions, and errors an operator can act on.

Platform: CUDA only. Upstream builds sparse convolutions (spconv), flash-attn / pytorch3d / kaolin kernels and
calls ``torch.cuda.current_device()`` while constructing the pipeline (inference_pipeline.py:100); importing
``inference_pipeline`` without CUDA fails outright (``set_attention_backend`` logs ``gpu_name`` that is only
defined when CUDA is present, inference_pipeline.py:11-21). Meta asks for >= 32 GB of GPU memory.

Weights: ``facebook/sam-3d-objects`` on the Hugging Face hub (gated: accept the SAM License on its page, then
``hf auth login``); the repo's ``checkpoints/`` folder holds ``pipeline.yaml`` + the per-stage configs and
checkpoints it names. A local directory may be that folder or its parent. The default ``pipeline.yaml`` also
builds a MoGe depth model (``Ruicheng/moge-vitl``, fetched by MoGe from the hub) used when a request has no
pointmap; ``extra["depth_model"] = "none"`` skips it (then every request needs a pointmap).

Upstream conventions (file:line in facebookresearch/sam-3d-objects @ cf06676, same lines in the vendored copy):

* Camera frame: the pipeline works in PyTorch3D's camera frame (x left, y up, z forward). MoGe's OpenCV pointmap
  is rotated into it by ``camera_to_pytorch3d_camera`` = ``look_at_view_transform(eye=(0,0,-1), up=(0,-1,0))``,
  i.e. diag(-1, -1, 1) (inference_pipeline_pointmap.py:26-41, 253-258); a pointmap passed in is used as is
  (inference_pipeline_pointmap.py:261-262), so ours is converted first (``pointmap_to_pipeline``).
* Layout: ``rotation`` is a (1, 4) quaternion, scalar first (w, x, y, z; PyTorch3D's ``matrix_to_quaternion``),
  ``translation`` (1, 3), ``scale`` (1, 3) (isotropic, the mean expanded; multiplied by the sparse-structure
  ``downsample_factor``) (inference_utils.py:224-325; inference_pipeline_pointmap.py:360-369). They are
  applied with PyTorch3D's row-vector ``Transform3d().scale(s).rotate(R).translate(t)`` (transforms_3d.py:20-30;
  scene_visualizer.py:190-194): ``p = (v * s) @ R_q + t``, i.e. ``R_q^T (s * v) + t`` for column vectors,
  where ``R_q = quaternion_to_matrix(rotation)``. Layout post-optimisation returns the same convention
  (``layout_post_optimization``, inference_utils.py:207-221).
* Units: those of the pointmap (metres for a metric pointmap); without one, MoGe v1's (scale-ambiguous).
* Mesh: ``postprocessing_utils.to_glb`` (:585-682) returns a ``trimesh.Trimesh`` as ``outputs["glb"]`` whose
  vertices are the decoder's mesh rotated "from z-up to y-up", ``v_glb = v @ [[1,0,0],[0,0,-1],[0,1,0]]``
  (:666); with ``with_mesh_postprocess=False, with_texture_baking=False, use_vertex_color=True`` (what we ask
  for) it keeps the decoder's vertex order and sets ``visual.vertex_colors`` from ``vertex_attrs[:, :3]``
  (:612-614, :668-670). The layout applies to the decoder's (z-up) frame: the post-optimisation undoes the y-up
  rotation before applying it (layout_post_optimization_utils.py:113-119). ``outputs["mesh"][0]`` is the
  decoder's ``MeshExtractResult`` (vertices, faces, vertex_attrs colour in [0, 1]; cube2mesh.py:9-16, 147-151).
* Sampling: flow matching with classifier-free guidance, ``ss_inference_steps`` / ``slat_inference_steps`` (25)
  by default; ``use_stage{1,2}_distillation=True`` turns on the shortcut model (no CFG, step size d = 1/steps;
  inference_pipeline.py:642-660, 721-740; shortcut/model.py:395-412), trained for d in {1/2^i, i < 8}
  (shortcut/model.py:64-65), hence ``SHORTCUT_STEPS``.

Our output: vertices in the decoder's canonical object frame (z-up, about the unit cube), and the layout converted
to the contract's OpenCV optical frame (REP 103): with F = diag(-1, -1, 1),
``p_cv = F (R_q^T (s * v) + t) = (F R_q^T) (s * v) + F t``, so rotation = F R_q^T (a proper rotation:
det F = +1), translation = F t, scale = s.

ModelOptions.extra: ``sampler`` ("shortcut": steps must be one of SHORTCUT_STEPS; "flow": flow matching + CFG
with any step count), ``layout_postprocess`` (bool, default True as in Meta's notebook: render-and-compare / ICP
refinement against the pointmap), ``depth_model`` ("config" or "none"), ``depth_weights`` (a MoGe hub id or a
local model.pt replacing pipeline.yaml's), ``compile`` (torch.compile the stages, slow start).
"""
from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from perception_fm.errors import (
    BadInputError,
    PluginUnavailableError,
    WeightsMismatchError,
    WeightsNotFoundError,
)
from perception_fm.hookspecs import ModelOptions, ModelSpec, Task, hookimpl
from perception_fm.plugins.weights import hub_snapshot, is_local_path, is_offline
from perception_fm.tasks.object_mesh import ObjectMeshCapabilities, ObjectMeshRequest, ObjectReconstruction

log = logging.getLogger(__name__)

NAME = "sam3d-objects"
HUB_ID = "facebook/sam-3d-objects"
HUB_SUBDIR = "checkpoints"  # the hub repo keeps the pipeline under checkpoints/
PIPELINE_FILE = "pipeline.yaml"
LICENSE = ("SAM License (Meta, custom; free incl. commercial use; redistribution must carry the licence; "
           "no military, nuclear, espionage or weapons use; gated on the hub)")
# What the pipeline imports and builds (Meta's requirements*.txt); the SAM 3D Objects code itself (official
# `sam3d_objects` or the copy in PyPI `sam3d`) is checked when the model is created, since either will do.
REQUIRES = ("torch", "torchvision", "hydra", "omegaconf", "pytorch3d", "spconv", "open3d", "trimesh", "utils3d",
            "moge", "loguru", "huggingface_hub")
UPSTREAM_PACKAGE = "sam3d_objects"
VENDOR_PACKAGE = "sam3d"  # PyPI sam3d: sam3d/third_party/meta/{sam3d_objects,sam_3d_body}
SHORTCUT_STEPS = (1, 2, 4, 8, 16, 32, 64, 128)
SAMPLERS = ("shortcut", "flow")
DEPTH_MODELS = ("config", "none")
# hydra `_target_`s a pipeline.yaml may instantiate (Meta's notebook whitelists the same roots).
ALLOWED_TARGET_ROOTS = ("sam3d_objects", "torch", "torchvision", "moge")

# PyTorch3D camera (x left, y up, z forward) <-> OpenCV optical frame (x right, y down, z forward); its own inverse.
P3D_TO_OPENCV = np.diag([-1.0, -1.0, 1.0])
# to_glb's z-up -> y-up rotation, applied to row vectors: v_glb = v_mesh @ GLB_Y_UP.
GLB_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
NO_COLOR = 128  # grey for a mesh that carries no vertex colours


@hookimpl
def register_models() -> list[ModelSpec]:
    return [
        ModelSpec(
            name=NAME,
            task=Task.OBJECT_MESH,
            summary="SAM 3D Objects (Meta): a masked object (+ pointmap) to a vertex-coloured mesh and its "
                    "rotation/translation/scale in the camera; two-stage sparse-structure + latent flow model "
                    "with shortcut few-step sampling. CUDA only, >= 32 GB GPU memory.",
            license=LICENSE,
            default_weights=HUB_ID,
            requires=REQUIRES,
            gated=True,
            needs_cuda=True,
            create=lambda options: Sam3dObjectsModel.from_options(options),
        )
    ]


@hookimpl
def estimate_memory(task, name, options, workload):
    """Parameters from the checkpoint's tensors (the pipeline's architecture is built only by upstream's CUDA
    code): every weights file of the checkpoint directory, found locally or in the hub cache (never
    downloaded). Activations are not estimated."""
    if Task(task) is not Task.OBJECT_MESH or name != NAME:
        return None
    from perception_fm.hookspecs import MemoryEstimate
    from perception_fm.runtime.budget import checkpoint_parameters

    directory = resolve_weights(options.weights or HUB_ID, options)
    files = sorted(path for suffix in ("*.safetensors", "*.ckpt", "*.pt", "*.pth") for path in directory.rglob(suffix))
    count, size, dtypes = checkpoint_parameters(files)
    return MemoryEstimate(parameters=count, parameter_bytes=size, dtype=dtypes,
                          note="weights from the checkpoint's tensors (all stages); activations not estimated")


# ----------------------------------------------------------------------------------------------------------
# Conventions: pure functions (numpy in, numpy out), testable without the upstream code


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor (possibly on CUDA, possibly bf16)
        value = value.detach()
        if value.is_floating_point():
            value = value.float()
        value = value.cpu().numpy()
    return np.asarray(value)


def quaternion_wxyz_to_matrix(quaternion) -> np.ndarray:
    """(3, 3) rotation of a scalar-first quaternion (normalised first), as PyTorch3D's quaternion_to_matrix."""
    q = np.asarray(_to_numpy(quaternion), dtype=np.float64).reshape(-1)
    if q.shape != (4,) or not np.all(np.isfinite(q)) or np.linalg.norm(q) < 1e-12:
        raise ValueError(f"expected a finite non-zero (w, x, y, z) quaternion, got {q}")
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def layout_to_camera(rotation_wxyz, translation, scale) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upstream layout (PyTorch3D camera, row-vector convention) -> (R, t, s) with p_cv = R @ (s * v) + t in the
    OpenCV optical frame; v in the decoder's (z-up) object frame."""
    r_q = quaternion_wxyz_to_matrix(rotation_wxyz)
    t = np.asarray(_to_numpy(translation), dtype=np.float64).reshape(-1)
    s = np.asarray(_to_numpy(scale), dtype=np.float64).reshape(-1)
    if t.shape != (3,):
        raise ValueError(f"translation must hold 3 values, got {t.shape}")
    if s.size == 1:
        s = np.repeat(s, 3)
    if s.shape != (3,):
        raise ValueError(f"scale must hold 1 or 3 values, got {s.shape}")
    return P3D_TO_OPENCV @ r_q.T, P3D_TO_OPENCV @ t, s


def pointmap_to_pipeline(pointmap: np.ndarray) -> np.ndarray:
    """Our pointmap (H, W, 3) in the OpenCV optical frame -> upstream's PyTorch3D camera frame (x and y negated),
    float32, non-finite points as NaN (upstream's 'unknown')."""
    points = np.asarray(pointmap, dtype=np.float32)
    if points.ndim != 3 or points.shape[2] != 3:
        raise ValueError(f"pointmap must be (H, W, 3), got {points.shape}")
    out = points * np.array([-1.0, -1.0, 1.0], dtype=np.float32)
    out[~np.isfinite(out).all(axis=2)] = np.nan
    return out


def _colors_u8(colors, count: int) -> np.ndarray:
    if colors is None:
        return np.full((count, 3), NO_COLOR, dtype=np.uint8)
    c = _to_numpy(colors)
    if c.ndim != 2 or c.shape[0] != count or c.shape[1] < 3:
        raise ValueError(f"vertex colours must be (V, 3 or 4) with V = {count}, got {c.shape}")
    c = c[:, :3]
    if c.dtype == np.uint8:
        return np.ascontiguousarray(c)
    if np.issubdtype(c.dtype, np.integer):
        return np.clip(c, 0, 255).astype(np.uint8)
    return (np.clip(np.nan_to_num(c.astype(np.float64)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def mesh_from_outputs(outputs: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices (V, 3) float32 in the decoder's z-up object frame, faces (F, 3) int32, colours (V, 3) uint8) from
    upstream's outputs: ``glb`` (trimesh, y-up) when present, else ``mesh[0]`` (the decoder's MeshExtractResult)."""
    glb = outputs.get("glb")
    if glb is not None:
        vertices = _to_numpy(glb.vertices).astype(np.float64) @ GLB_Y_UP.T  # undo to_glb's z-up -> y-up
        faces = _to_numpy(glb.faces)
        visual = getattr(glb, "visual", None)
        colors = getattr(visual, "vertex_colors", None) if visual is not None else None
    else:
        meshes = outputs.get("mesh")
        if not meshes:
            raise KeyError("SAM 3D Objects outputs hold neither 'glb' nor 'mesh'")
        mesh = meshes[0]
        vertices = _to_numpy(mesh.vertices).astype(np.float64)
        faces = _to_numpy(mesh.faces)
        attrs = getattr(mesh, "vertex_attrs", None)
        colors = None if attrs is None else _to_numpy(attrs)[:, :3]
    vertices = vertices.reshape(-1, 3)
    faces = np.asarray(faces).reshape(-1, 3)
    if len(vertices) == 0 or len(faces) == 0:
        raise BadInputError("empty_mesh", "SAM 3D Objects produced no surface for this object")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise ValueError(f"mesh faces index outside its {len(vertices)} vertices")
    return vertices.astype(np.float32), faces.astype(np.int32), _colors_u8(colors, len(vertices))


def reconstruction_from_outputs(outputs: Mapping[str, Any],
                                timings_ms: Mapping[str, float] | None = None) -> ObjectReconstruction:
    """ObjectReconstruction (contract conventions) from the dict InferencePipelinePointMap.run returns."""
    for key in ("rotation", "translation", "scale"):
        if outputs.get(key) is None:
            raise KeyError(f"SAM 3D Objects outputs lack the layout entry {key!r}")
    vertices, faces, colors = mesh_from_outputs(outputs)
    rotation, translation, scale = layout_to_camera(outputs["rotation"], outputs["translation"], outputs["scale"])
    return ObjectReconstruction(
        vertices=vertices, faces=faces, vertex_colors=colors,
        rotation=rotation, translation=translation, scale=scale, timings_ms=dict(timings_ms or {}),
    )


# ----------------------------------------------------------------------------------------------------------
# Platform, upstream code and weights (the body plugin uses these too)


def _find_spec(name: str):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def vendored_root(package: str) -> Path | None:
    """sam3d/third_party/meta of PyPI `sam3d` when it vendors `package`, else None (nothing is imported)."""
    spec = _find_spec(VENDOR_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        root = Path(location) / "third_party" / "meta"
        if (root / package / "__init__.py").is_file():
            return root
    return None


def upstream_source(package: str) -> str | None:
    """Where `package` would be imported from: "installed", "vendored (PyPI sam3d)", or None."""
    if _find_spec(package) is not None:
        return "installed"
    if vendored_root(package) is not None:
        return f"vendored ({VENDOR_PACKAGE} on PyPI)"
    return None


def use_upstream(package: str) -> str:
    """Make `package` importable (the vendored copy goes to the front of sys.path) and say where it comes from."""
    source = upstream_source(package)
    if source is None:
        raise PluginUnavailableError(f"{package} is not installed")
    if source != "installed":
        root = str(vendored_root(package))
        if root not in sys.path:
            sys.path.insert(0, root)
        importlib.invalidate_caches()
    return source


def cuda_problem(requested: str, what: str) -> str | None:
    """Why `what` cannot run on the requested device ("auto", "cuda", "cuda:N" or "cpu"), or None."""
    if requested not in ("", "auto") and not requested.startswith("cuda"):
        return f"device {requested!r} was requested, but {what} runs only on a CUDA GPU"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return f"{what} runs only on a CUDA GPU and torch sees none (torch {torch.__version__})"
    return None


def select_cuda_device(requested: str) -> str:
    return "cuda" if requested in ("", "auto") else requested


def _walk(node, path: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield f"{path}.{key}" if path else str(key), value
            yield from _walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield f"{path}[{i}]", value
            yield from _walk(value, f"{path}[{i}]")


def check_targets(config, path: Path) -> None:
    """Every hydra ``_target_`` in `config` under an allowed root: instantiating runs arbitrary callables."""
    for where, value in _walk(config):
        if where.endswith("_target_"):
            root = str(value).split(".", 1)[0]
            if root not in ALLOWED_TARGET_ROOTS:
                raise WeightsMismatchError(
                    f"{path} asks to instantiate {value!r} ({where}); only targets under "
                    f"{', '.join(ALLOWED_TARGET_ROOTS)} are allowed, refusing to build it"
                )


def check_pipeline_config(config: Mapping[str, Any], directory: Path) -> None:
    """A pipeline.yaml we are about to hand to hydra: every ``_target_`` under an allowed root (instantiating
    runs arbitrary callables), and every ``*_config_path`` / ``*_ckpt_path`` it names present."""
    if not isinstance(config, Mapping) or "_target_" not in config:
        raise WeightsMismatchError(f"{directory / PIPELINE_FILE} is not a SAM 3D Objects pipeline (no _target_)")
    check_targets(config, directory / PIPELINE_FILE)
    missing = sorted(
        str(value) for key, value in config.items()
        if isinstance(key, str) and key.endswith(("_config_path", "_ckpt_path")) and isinstance(value, str)
        and value and not (directory / value).is_file()
    )
    if missing:
        raise WeightsNotFoundError(
            f"SAM 3D Objects weights in {str(directory)!r} lack {', '.join(missing)} (named by {PIPELINE_FILE}); "
            f"download the whole {HUB_SUBDIR}/ folder of {HUB_ID}"
        )


def read_pipeline_config(directory: Path) -> dict:
    import yaml

    try:
        config = yaml.safe_load((directory / PIPELINE_FILE).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise WeightsNotFoundError(f"{directory / PIPELINE_FILE} cannot be read: {error}") from error
    check_pipeline_config(config, directory)
    # the stage configs are hydra-instantiated by the pipeline too (inference_pipeline.py:261-290)
    for key, value in config.items():
        if isinstance(key, str) and key.endswith("_config_path") and isinstance(value, str) and value:
            try:
                stage = yaml.safe_load((directory / value).read_text())
            except (OSError, yaml.YAMLError) as error:
                raise WeightsNotFoundError(f"{directory / value} cannot be read: {error}") from error
            check_targets(stage, directory / value)
    return config


def resolve_weights(source: str, options: ModelOptions) -> Path:
    """The directory holding pipeline.yaml and the files it names, from a local path or the hub."""
    if is_local_path(source):
        directory = Path(os.path.expanduser(source))
        if not directory.is_dir():
            raise WeightsNotFoundError(f"SAM 3D Objects weights directory {str(directory)!r} does not exist")
        if not (directory / PIPELINE_FILE).is_file() and (directory / HUB_SUBDIR / PIPELINE_FILE).is_file():
            directory = directory / HUB_SUBDIR
        if not (directory / PIPELINE_FILE).is_file():
            raise WeightsNotFoundError(
                f"SAM 3D Objects weights directory {str(directory)!r} has no {PIPELINE_FILE} (expected the "
                f"{HUB_SUBDIR}/ folder of {HUB_ID}: {PIPELINE_FILE}, the stage configs and checkpoints)"
            )
    else:
        directory = hub_snapshot(source, options, [f"{HUB_SUBDIR}/*"], "SAM 3D Objects", gated=True) / HUB_SUBDIR
        if not (directory / PIPELINE_FILE).is_file():
            raise WeightsNotFoundError(f"hub repo {source!r} has no {HUB_SUBDIR}/{PIPELINE_FILE}")
    read_pipeline_config(directory)
    return directory


# ----------------------------------------------------------------------------------------------------------
# The model


@dataclass(frozen=True)
class ObjectsOptions:
    sampler: str = "shortcut"
    layout_postprocess: bool = True
    depth_model: str = "config"
    depth_weights: str = ""
    compile: bool = False

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> "ObjectsOptions":
        known = {"sampler", "layout_postprocess", "depth_model", "depth_weights", "compile"}
        unknown = sorted(set(extra) - known)
        if unknown:
            raise ValueError(f"unknown {NAME} options {unknown}; known: {sorted(known)}")
        options = cls(
            sampler=str(extra.get("sampler", cls.sampler)),
            layout_postprocess=_as_bool(extra.get("layout_postprocess", cls.layout_postprocess)),
            depth_model=str(extra.get("depth_model", cls.depth_model)),
            depth_weights=str(extra.get("depth_weights", cls.depth_weights) or ""),
            compile=_as_bool(extra.get("compile", cls.compile)),
        )
        if options.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {options.sampler!r}")
        if options.depth_model not in DEPTH_MODELS:
            raise ValueError(f"depth_model must be one of {DEPTH_MODELS}, got {options.depth_model!r}")
        return options


def _as_bool(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def sampling_arguments(steps: int | None, sampler: str) -> dict[str, Any]:
    """InferencePipelinePointMap.run keyword arguments for a requested step count."""
    if steps is None:
        return {}  # the pipeline's own: flow matching with CFG, pipeline.yaml's step counts (25)
    steps = int(steps)
    if steps < 1:
        raise BadInputError("steps", f"sampling steps must be >= 1, got {steps}")
    if sampler == "shortcut" and steps not in SHORTCUT_STEPS:
        raise BadInputError(
            "steps", f"the shortcut sampler supports {', '.join(map(str, SHORTCUT_STEPS))} steps (step sizes it was "
                     f"trained for), got {steps}; use sampler=flow for other counts"
        )
    shortcut = sampler == "shortcut"
    return dict(stage1_inference_steps=steps, stage2_inference_steps=steps,
                use_stage1_distillation=shortcut, use_stage2_distillation=shortcut)


def validate_request(request: ObjectMeshRequest) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    image = np.asarray(request.image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise BadInputError("encoding", f"{NAME} takes RGB uint8 (H, W, 3) images, got {image.dtype} {image.shape}")
    mask = np.asarray(request.mask)
    if mask.shape != image.shape[:2]:
        raise BadInputError("size_mismatch", f"mask {mask.shape} does not match the image {image.shape[:2]}")
    mask = mask.astype(bool)
    if not mask.any():
        raise BadInputError("empty_mask", "the object mask is empty")
    pointmap = None
    if request.pointmap is not None:
        pointmap = np.asarray(request.pointmap)
        if pointmap.shape != (*image.shape[:2], 3):
            raise BadInputError("size_mismatch",
                                f"pointmap {pointmap.shape} does not match the image {(*image.shape[:2], 3)}")
        if not np.isfinite(pointmap[mask]).all(axis=1).any():
            raise BadInputError("pointmap", "the pointmap has no finite point inside the mask")
    return np.ascontiguousarray(image), mask, pointmap


class Sam3dObjectsModel:
    """Meta's SAM 3D Objects pipeline on one CUDA device, speaking the ObjectMeshModel protocol."""

    def __init__(self, pipeline, *, weights: str, device: str, options: ObjectsOptions = ObjectsOptions()):
        self.name = NAME
        self.weights = weights
        self.device = device
        self.options = options
        self.capabilities = ObjectMeshCapabilities(
            uses_pointmap=True, sampling_steps=SHORTCUT_STEPS if options.sampler == "shortcut" else ())
        self.pipeline = pipeline

    @classmethod
    def from_options(cls, options: ModelOptions) -> "Sam3dObjectsModel":
        if options.random_weights:
            raise PluginUnavailableError(
                f"{NAME} cannot run with random weights: its architecture is defined by the checkpoint's "
                f"{PIPELINE_FILE} and per-stage configs (download {HUB_ID})")
        extra = ObjectsOptions.from_extra(options.extra)
        problems = []
        if upstream_source(UPSTREAM_PACKAGE) is None:
            problems.append(
                f"the SAM 3D Objects code is not installed: install Meta's repository (git clone "
                f"facebookresearch/sam-3d-objects; pip install -e '.[inference]' as its doc/setup.md says) or PyPI "
                f"`{VENDOR_PACKAGE}`, which vendors it")
        cuda = cuda_problem(options.device, "SAM 3D Objects (spconv sparse convolutions, flash-attn/pytorch3d "
                                            "kernels)")
        if cuda:
            problems.append(cuda)
        if problems:
            raise PluginUnavailableError(f"{NAME} cannot run here: " + "; ".join(problems))
        device = select_cuda_device(options.device)
        source = options.weights or HUB_ID
        directory = resolve_weights(source, options)
        pipeline = build_pipeline(directory, device, extra, options)
        return cls(pipeline, weights=source, device=device, options=extra)

    def reconstruct(self, request: ObjectMeshRequest) -> ObjectReconstruction:
        import torch

        image, mask, pointmap = validate_request(request)
        kwargs = sampling_arguments(request.steps, self.options.sampler)
        if pointmap is not None:
            points = torch.from_numpy(pointmap_to_pipeline(pointmap))
        elif getattr(self.pipeline, "depth_model", None) is None:
            raise BadInputError("pointmap", f"{NAME} was built without a depth model (depth_model=none): every "
                                            "request needs a pointmap")
        else:
            points = None
        rgba = np.concatenate([image, mask.astype(np.uint8)[..., None] * np.uint8(255)], axis=-1)
        started = time.perf_counter()
        outputs = self.pipeline.run(
            rgba, mask=None, seed=int(request.seed), stage1_only=False, with_mesh_postprocess=False,
            with_texture_baking=False, with_layout_postprocess=self.options.layout_postprocess,
            use_vertex_color=True, pointmap=points, **kwargs,
        )
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        pipeline_ms = (time.perf_counter() - started) * 1e3
        return reconstruction_from_outputs(outputs, {"pipeline": pipeline_ms})


def build_pipeline(directory: Path, device: str, extra: ObjectsOptions, options: ModelOptions):
    """InferencePipelinePointMap from pipeline.yaml (as Meta's notebook Inference builds it)."""
    os.environ.setdefault("LIDRA_SKIP_INIT", "true")  # sam3d_objects/__init__.py imports a missing module otherwise
    source = use_upstream(UPSTREAM_PACKAGE)
    try:
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        import sam3d_objects  # noqa: F401  (Meta's notebook: "do not remove this import")
        from sam3d_objects.pipeline.inference_pipeline_pointmap import InferencePipelinePointMap  # noqa: F401
    except Exception as error:  # ImportError, or upstream's import-time CUDA probing
        raise PluginUnavailableError(
            f"SAM 3D Objects ({source}) cannot be imported: {type(error).__name__}: {error}. It needs the CUDA "
            "builds of spconv, pytorch3d, kaolin, gsplat and flash-attn, plus MoGe and utils3d (Meta's "
            "requirements*.txt)") from error

    config = OmegaConf.load(directory / PIPELINE_FILE)
    config.rendering_engine = "pytorch3d"  # as Meta's notebook: no nvdiffrast
    config.compile_model = extra.compile
    config.workspace_dir = str(directory)
    config.device = device
    if extra.depth_model == "none":
        config.depth_model = None
    elif config.get("depth_model") is not None and config.depth_model.get("model") is not None:
        model = config.depth_model.model
        if extra.depth_weights:
            model.pretrained_model_name_or_path = extra.depth_weights
        name = str(model.get("pretrained_model_name_or_path", ""))
        if str(model.get("_target_", "")).endswith("from_pretrained") and name and not Path(name).exists():
            # MoGe's from_pretrained passes extra keyword arguments to hf_hub_download
            if is_offline(options):
                model.local_files_only = True
            if options.cache_dir:
                model.cache_dir = options.cache_dir
    check_pipeline_config(OmegaConf.to_container(config, resolve=False), directory)
    log.info("building SAM 3D Objects (%s code) from %s on %s", source, directory, device)
    try:
        return instantiate(config)
    except Exception as error:
        text = f"{type(error).__name__}: {error}"
        if "LocalEntryNotFound" in text or "offline" in text.lower() or isinstance(error, FileNotFoundError):
            raise WeightsNotFoundError(
                f"SAM 3D Objects could not load a file it needs ({text}); the depth model of {PIPELINE_FILE} "
                "(MoGe, Ruicheng/moge-vitl) comes from the hub too: download it beforehand, pass "
                "extra depth_weights=<local model.pt>, or use depth_model=none with pointmaps") from error
        raise PluginUnavailableError(f"SAM 3D Objects could not be built from {directory}: {text}") from error
