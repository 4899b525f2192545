"""SAM 3D Body (Meta, 2025) as a perception_fm body-mesh plugin: an image and person boxes (optionally masks and
camera intrinsics) in; per person the MHR (Momentum Human Rig) parameters, posed mesh, skeleton and the 70 "mhr70"
keypoints out, in the camera's optical frame.

The network, its pre-processing and its MHR head are Meta's: ``sam_3d_body.load_sam_3d_body`` and
``SAM3DBodyEstimator.process_one_image`` from Meta's repository (facebookresearch/sam-3d-body, importable as
``sam_3d_body`` once the clone is on PYTHONPATH: it has no setup.py) or, when that is not installed, from the identical copy vendored in PyPI ``sam3d``
(``sam3d/third_party/meta/sam_3d_body``). No detector, segmenter or FOV estimator is loaded: the boxes (and masks)
come from the request, and without intrinsics upstream's default camera is used (focal = image diagonal,
principal point at the centre; data/utils/prepare_batch.py:65-75), not an estimated field of view.

Platform: CUDA only: ``process_one_image`` moves the batch to "cuda" unconditionally
(sam_3d_body_estimator.py:160), as does the hand refinement (models/meta_arch/sam3d_body.py:1246, 1282, 1289).

Weights: ``facebook/sam-3d-body-dinov3`` (default) or ``facebook/sam-3d-body-vith`` on the Hugging Face hub (gated:
accept the SAM License on the repo page, then ``hf auth login``), or a local directory with the same layout:
``model.ckpt``, ``model_config.yaml`` and ``assets/mhr_model.pt``. The DINOv3 backbone's *code* comes from
torch.hub (``torch.hub.load("facebookresearch/dinov3", ..., pretrained=False)``, models/backbones/dinov3.py:15-21):
offline, ``<torch hub dir>/facebookresearch_dinov3_main`` must already exist.

The MHR body model: SAM 3D Body's head runs MHR as the TorchScript asset ``mhr_model.pt`` (torch.jit.load,
models/heads/mhr_head.py:114-117). It ships in the SAM 3D Body hub repos (``assets/mhr_model.pt``, next to
model.ckpt; what ``load_sam_3d_body_hf`` uses, build_models.py:43-51) and in the MHR release
(github.com/facebookresearch/MHR releases v1.0.0 ``assets.zip`` -> ``assets/mhr_model.pt``, LOD 1: 18,439
vertices, 127 joints). ``extra["mhr_path"]`` points at another copy. PyPI ``mhr`` holds only code; its
``MHR.from_files`` needs pymomentum and the rig files (lod*.fbx, compact_v6_1.model, corrective *.npz) in
``<site-packages>/assets``. The head prefers it whenever ``mhr.mhr`` imports and the environment variable
MOMENTUM_ENABLED is unset (mhr_head.py:21-33, 108-112); this plugin sets MOMENTUM_ENABLED so that the head always
runs the TorchScript asset that came with the checkpoint. The plugin does not need PyPI ``mhr``.

Upstream conventions (file:line in facebookresearch/sam-3d-body @ b5c765a; the vendored copy is identical):

* MHR works in centimetres in its own frame (y up, z towards the viewer); the head divides by 100 and negates y and
  z ("Camera system difference") of vertices, keypoints and joint coordinates (mhr_head.py:233-234, 339-343;
  again after hand refinement, sam3d_body.py:1615-1617). The result is in the OpenCV camera axes (x right, y down,
  z forward) relative to the body, and ``pred_cam_t`` (metres) places it: the camera head projects
  ``points + pred_cam_t`` with the intrinsics (heads/camera_head.py:96-103), the final 2D keypoints are
  ``f * (X + t) / (Z + t_z) + (W/2, H/2)`` (sam3d_body.py:1628-1645). So camera-frame points are
  ``pred_* + pred_cam_t``; no further axis change is needed for the contract's optical frame.
* Outputs per person (sam_3d_body_estimator.py:196-216): ``pred_vertices`` (18439, 3), ``pred_keypoints_3d``
  (70, 3) (the first 70 of MHR's 308 keypoints, mhr_head.py:337; names in metadata/mhr70.py ``mhr_names``),
  ``pred_keypoints_2d`` (70, 2) pixels, ``pred_joint_coords`` (127, 3), ``pred_cam_t`` (3,), ``global_rot`` (3,)
  (Euler angles of MHR's root), ``body_pose_params`` (133,), ``hand_pose_params`` (108,: 54 PCA per hand),
  ``scale_params`` (28,), ``shape_params`` (45,), ``expr_params`` (72,: zeroed, mhr_head.py:316),
  ``mhr_model_params`` (204,: the full MHR input, global translation 0, mhr_head.py:213-221), float32;
  ``pred_global_rots`` (127, 3, 3): each joint's rotation in MHR's frame (mhr_head.py:235, 365), which gives
  the root joint's orientation (the person's TF frame).
* The TorchScript MHR: ``mhr(shape (B, 45), model_params (B, 204), expression (B, 72))`` -> vertices (B, V, 3) cm
  and skeleton state (B, 127, 8) = translation cm, quaternion, scale (mhr_head.py:227-232); its skeleton
  (``character_torch.skeleton``) carries ``joint_names`` and ``joint_parents`` (-1 for the root).

``pose_from_params`` runs that MHR on ``params["mhr_model_params"]``, ``params["shape"]`` and
``params["expression"]`` (the inputs the head itself feeds it), applies the same cm -> m and y/z flip, and adds the
camera translation; smoothing those parameters and re-posing gives a consistent mesh and skeleton.

ModelOptions.extra: ``inference_type`` ("full": body then hand decoders, upstream's default; "body": body decoder
only, faster), ``mhr_path`` (another mhr_model.pt).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from perception_fm.errors import (
    BadInputError,
    PluginUnavailableError,
    WeightsMismatchError,
    WeightsNotFoundError,
)
from perception_fm.hookspecs import ModelOptions, ModelSpec, Task, hookimpl
from perception_fm.plugins.sam3d_objects import VENDOR_PACKAGE, cuda_problem, select_cuda_device, upstream_source, use_upstream
from perception_fm.plugins.weights import hub_snapshot, is_local_path, is_offline
from perception_fm.tasks.body_mesh import BodyEstimate, BodyRequest

log = logging.getLogger(__name__)

NAME = "sam3d-body"
HUB_ID = "facebook/sam-3d-body-dinov3"
ALTERNATIVE_HUB_IDS = ("facebook/sam-3d-body-vith",)
LICENSE = ("SAM License (Meta, custom; free incl. commercial use; redistribution must carry the licence; "
           "no military, nuclear, espionage or weapons use; gated on the hub); MHR asset: Apache-2.0")
CHECKPOINT_FILE = "model.ckpt"
CONFIG_FILE = "model_config.yaml"
MHR_FILE = "assets/mhr_model.pt"
MHR_RELEASE = "https://github.com/facebookresearch/MHR/releases (v1.0.0 assets.zip -> assets/mhr_model.pt)"
UPSTREAM_PACKAGE = "sam_3d_body"
# What `import sam_3d_body` pulls in (the estimator, model, head and config modules).
REQUIRES = ("torch", "torchvision", "cv2", "braceexpand", "roma", "yacs", "omegaconf", "timm", "einops",
            "pytorch_lightning", "huggingface_hub")
INFERENCE_TYPES = ("full", "body")
DINOV3_HUB_REPO = "facebookresearch_dinov3"

# MHR's frame (cm) -> OpenCV camera axes (m): y and z negated (a half turn about x, det +1).
MHR_TO_OPENCV = np.array([1.0, -1.0, -1.0])
CM_TO_M = 0.01
# upstream estimator output key -> our parameter name
PARAM_KEYS = (
    ("global_rot", "global_rot"),
    ("body_pose_params", "body_pose"),
    ("hand_pose_params", "hand_pose"),
    ("shape_params", "shape"),
    ("scale_params", "scale"),
    ("expr_params", "expression"),
    ("mhr_model_params", "mhr_model_params"),
)
NUM_SHAPE = 45
NUM_MODEL_PARAMS = 204
NUM_EXPRESSION = 72


@hookimpl
def register_models() -> list[ModelSpec]:
    return [
        ModelSpec(
            name=NAME,
            task=Task.BODY_MESH,
            summary="SAM 3D Body (Meta): promptable full-body human mesh recovery (body, hands, feet) with the MHR "
                    "body model, per person box (+ optional mask); DINOv3-H+ backbone (840 M) by default, "
                    f"{ALTERNATIVE_HUB_IDS[0]} (ViT-H, 631 M) as alternative weights. CUDA only.",
            license=LICENSE,
            default_weights=HUB_ID,
            requires=REQUIRES,
            gated=True,
            needs_cuda=True,
            create=lambda options: Sam3dBodyModel.from_options(options),
        )
    ]


# ----------------------------------------------------------------------------------------------------------
# Conventions: pure functions


@hookimpl
def estimate_memory(task, name, options, workload):
    """Parameters from model.ckpt's tensors (the architecture is built only by upstream's code), found locally
    or in the hub cache (never downloaded); the MHR body model (TorchScript) and activations are not counted."""
    if Task(task) is not Task.BODY_MESH or name != NAME:
        return None
    from perception_fm.hookspecs import MemoryEstimate
    from perception_fm.runtime.budget import checkpoint_parameters

    weights = resolve_weights(options.weights or HUB_ID, options, str(dict(options.extra).get("mhr_path", "")))
    count, size, dtypes = checkpoint_parameters([weights.checkpoint])
    return MemoryEstimate(parameters=count, parameter_bytes=size, dtype=dtypes,
                          note="weights from model.ckpt's tensors; MHR asset and activations not estimated")


def mhr_to_camera(points_cm: np.ndarray, camera_translation) -> np.ndarray:
    """Points from MHR's raw output (cm, MHR frame) to the OpenCV camera frame (m), as SAM 3D Body places them."""
    points = np.asarray(points_cm, dtype=np.float64) * CM_TO_M * MHR_TO_OPENCV
    return (points + np.asarray(camera_translation, dtype=np.float64).reshape(3)).astype(np.float32)


def _array(output: Mapping[str, Any], key: str, shape: tuple | None = None) -> np.ndarray:
    if key not in output or output[key] is None:
        raise KeyError(f"SAM 3D Body output lacks {key!r}")
    value = np.asarray(output[key], dtype=np.float32)
    if shape is not None and (value.ndim != len(shape) or any(s is not None and v != s
                                                               for v, s in zip(value.shape, shape))):
        raise ValueError(f"SAM 3D Body output {key!r} has shape {value.shape}, expected {shape}")
    return value


def estimate_from_output(output: Mapping[str, Any], timings_ms: Mapping[str, float] | None = None,
                         root_joint: int | None = None) -> BodyEstimate:
    """One BodyEstimate from one dict of SAM3DBodyEstimator.process_one_image's list. `root_joint`: the joint
    whose orientation becomes root_rotation, from ``pred_global_rots`` (each joint's rotation in MHR's frame,
    mhr_head.py:235, 365): in the camera frame it is MHR_TO_OPENCV applied to its rows (the axis change of points)."""
    cam_t = _array(output, "pred_cam_t", (3,)).astype(np.float64)
    params = {ours: _array(output, theirs).reshape(-1).copy() for theirs, ours in PARAM_KEYS if theirs in output}

    def placed(key: str) -> np.ndarray:
        return (_array(output, key, (None, 3)).astype(np.float64) + cam_t).astype(np.float32)

    root_rotation = None
    if root_joint is not None and output.get("pred_global_rots") is not None:
        rotations = _array(output, "pred_global_rots", (None, 3, 3)).astype(np.float64)
        root_rotation = MHR_TO_OPENCV[:, None] * rotations[root_joint]

    return BodyEstimate(
        params=params,
        camera_translation=cam_t.astype(np.float32),
        vertices=placed("pred_vertices"),
        joints=placed("pred_joint_coords"),
        keypoints_2d=_array(output, "pred_keypoints_2d", (None, 2)).copy(),
        keypoints_3d=placed("pred_keypoints_3d"),
        timings_ms=dict(timings_ms or {}),
        root_rotation=root_rotation,
    )


def estimates_from_outputs(outputs: Sequence[Mapping[str, Any]], timings_ms: Mapping[str, float] | None = None,
                           root_joint: int | None = None) -> list[BodyEstimate]:
    return [estimate_from_output(output, timings_ms, root_joint) for output in outputs]


class MhrBody:
    """The MHR TorchScript model (mhr_model.pt) posing vertices and joints from SAM 3D Body's parameters."""

    def __init__(self, module, device: str = "cpu"):
        self.module = module
        self.device = device
        skeleton = getattr(getattr(module, "character_torch", None), "skeleton", None)
        if skeleton is None or not hasattr(skeleton, "joint_parents"):
            raise WeightsMismatchError("the MHR model has no character_torch.skeleton with joint_parents; is it "
                                       "the mhr_model.pt TorchScript asset?")
        self.joint_parents = np.asarray(skeleton.joint_parents.detach().cpu().numpy(), dtype=np.int64)
        names = getattr(skeleton, "joint_names", None)
        self.joint_names = [str(n) for n in names] if names is not None else \
            [f"joint_{i}" for i in range(len(self.joint_parents))]

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> "MhrBody":
        import torch

        path = Path(path)
        if not path.is_file():
            raise WeightsNotFoundError(f"MHR model {str(path)!r} does not exist; get mhr_model.pt from the SAM 3D "
                                       f"Body hub repo ({MHR_FILE}) or {MHR_RELEASE}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load is deprecated in torch >= 2.10
            try:
                module = torch.jit.load(str(path), map_location=device)
            except RuntimeError as error:
                raise WeightsMismatchError(f"{path} is not a TorchScript MHR model: {error}") from error
        module.eval()
        return cls(module, device)

    def forward_cm(self, shape: np.ndarray, model_params: np.ndarray, expression: np.ndarray | None = None):
        """Raw MHR: (vertices (B, V, 3) cm, skeleton state (B, J, 8)) in MHR's frame, batched inputs."""
        import torch

        shape = np.atleast_2d(np.asarray(shape, np.float32))
        model_params = np.atleast_2d(np.asarray(model_params, np.float32))
        if shape.shape[1] != NUM_SHAPE or model_params.shape[1] != NUM_MODEL_PARAMS:
            raise BadInputError("params", f"MHR takes shape (B, {NUM_SHAPE}) and model params (B, "
                                          f"{NUM_MODEL_PARAMS}), got {shape.shape} and {model_params.shape}")
        batch = model_params.shape[0]
        if expression is None:
            expression = np.zeros((batch, NUM_EXPRESSION), np.float32)
        expression = np.atleast_2d(np.asarray(expression, np.float32))
        with torch.no_grad():
            vertices, skeleton = self.module(
                torch.from_numpy(shape).to(self.device), torch.from_numpy(model_params).to(self.device),
                torch.from_numpy(expression).to(self.device))
        return vertices.float().cpu().numpy(), skeleton.float().cpu().numpy()

    def pose(self, params: Mapping[str, np.ndarray], camera_translation) -> tuple[np.ndarray, np.ndarray]:
        """(vertices (V, 3), joints (J, 3)) float32 in the camera frame, from SAM 3D Body's parameters."""
        missing = [key for key in ("mhr_model_params", "shape") if key not in params]
        if missing:
            raise BadInputError("params", f"pose_from_params needs {', '.join(missing)} (got {sorted(params)})")
        expression = params.get("expression")
        vertices, skeleton = self.forward_cm(
            np.asarray(params["shape"], np.float32).reshape(1, -1),
            np.asarray(params["mhr_model_params"], np.float32).reshape(1, -1),
            None if expression is None else np.asarray(expression, np.float32).reshape(1, -1))
        return mhr_to_camera(vertices[0], camera_translation), mhr_to_camera(skeleton[0, :, :3], camera_translation)


# ----------------------------------------------------------------------------------------------------------
# Weights


@dataclass(frozen=True)
class BodyWeights:
    directory: Path
    checkpoint: Path
    config: Path
    mhr: Path


def resolve_weights(source: str, options: ModelOptions, mhr_path: str = "") -> BodyWeights:
    """model.ckpt, model_config.yaml and the MHR asset, from a local directory or the hub."""
    mhr_override = Path(os.path.expanduser(mhr_path)) if mhr_path else None
    if is_local_path(source):
        directory = Path(os.path.expanduser(source))
        if not directory.is_dir():
            raise WeightsNotFoundError(f"SAM 3D Body weights directory {str(directory)!r} does not exist")
    else:
        patterns = [CHECKPOINT_FILE, CONFIG_FILE] + ([] if mhr_override else [MHR_FILE])
        directory = hub_snapshot(source, options, patterns, "SAM 3D Body", gated=True)
    weights = BodyWeights(directory, directory / CHECKPOINT_FILE, directory / CONFIG_FILE,
                          mhr_override or directory / MHR_FILE)
    missing = [str(path) for path in (weights.checkpoint, weights.config) if not path.is_file()]
    if missing:
        raise WeightsNotFoundError(
            f"SAM 3D Body weights lack {', '.join(missing)} (a weights directory holds {CHECKPOINT_FILE}, "
            f"{CONFIG_FILE} and {MHR_FILE}, as the {HUB_ID} hub repo)")
    if not weights.mhr.is_file():
        raise WeightsNotFoundError(
            f"the MHR body model {str(weights.mhr)!r} is missing: it is the TorchScript asset mhr_model.pt, in the "
            f"SAM 3D Body hub repos ({MHR_FILE}) and in {MHR_RELEASE}; pass its path as extra mhr_path")
    return weights


def backbone_type(config_path: Path) -> str:
    import yaml

    try:
        config = yaml.safe_load(Path(config_path).read_text()) or {}
        return str(((config.get("MODEL") or {}).get("BACKBONE") or {}).get("TYPE", ""))
    except (OSError, yaml.YAMLError, AttributeError):
        return ""  # unknown: upstream's own config loader will judge the file


def backbone_code_problem(config_path: Path, offline: bool, hub_dir: str) -> str | None:
    """DINOv3 backbones build from torch.hub code (github facebookresearch/dinov3); offline it must be cached."""
    if not backbone_type(config_path).startswith("dinov3") or not offline:
        return None
    if any(os.path.isdir(os.path.join(hub_dir, f"{DINOV3_HUB_REPO}_{ref}")) for ref in ("main", "master")):
        return None
    return (f"the DINOv3 backbone's code comes from torch.hub (github facebookresearch/dinov3), which offline mode "
            f"cannot fetch and {hub_dir} does not hold ({DINOV3_HUB_REPO}_main); on a connected machine run "
            "`python -c \"import torch; torch.hub.load('facebookresearch/dinov3', 'dinov3_vith16plus', "
            "pretrained=False)\"` and copy that folder, or use the ViT-H weights (facebook/sam-3d-body-vith)")


# ----------------------------------------------------------------------------------------------------------
# The model


@dataclass(frozen=True)
class BodyOptions:
    inference_type: str = "full"
    mhr_path: str = ""

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> "BodyOptions":
        known = {"inference_type", "mhr_path"}
        unknown = sorted(set(extra) - known)
        if unknown:
            raise ValueError(f"unknown {NAME} options {unknown}; known: {sorted(known)}")
        options = cls(inference_type=str(extra.get("inference_type", cls.inference_type)),
                      mhr_path=str(extra.get("mhr_path", "") or ""))
        if options.inference_type not in INFERENCE_TYPES:
            raise ValueError(f"inference_type must be one of {INFERENCE_TYPES}, got {options.inference_type!r}")
        return options


def validate_request(request: BodyRequest) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    image = np.asarray(request.image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise BadInputError("encoding", f"{NAME} takes RGB uint8 (H, W, 3) images, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    boxes = np.asarray(request.boxes, dtype=np.float32)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise BadInputError("boxes", f"boxes must be (N, 4) xyxy, got {boxes.shape}")
    if not np.isfinite(boxes).all() or (boxes[:, 2] <= boxes[:, 0]).any() or (boxes[:, 3] <= boxes[:, 1]).any():
        raise BadInputError("boxes", "boxes must be finite xyxy with x2 > x1 and y2 > y1")
    masks = None
    if request.masks is not None:
        masks = np.asarray(request.masks)
        if masks.shape != (len(boxes), height, width):
            raise BadInputError("size_mismatch", f"masks must be ({len(boxes)}, {height}, {width}), got {masks.shape}")
        masks = masks.astype(bool).astype(np.uint8)  # 0/1, as upstream's own segmenter path gives them
    K = None
    if request.intrinsics is not None:
        K = np.asarray(request.intrinsics, dtype=np.float64)
        if K.shape != (3, 3) or not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise BadInputError("camera_info",
                                f"intrinsics must be a finite 3x3 K with positive focal lengths, got {K.tolist()}")
    return np.ascontiguousarray(image), boxes, masks, K


class Sam3dBodyModel:
    """Meta's SAM 3D Body estimator on one CUDA device, speaking the BodyMeshModel protocol."""

    def __init__(self, estimator, mhr: MhrBody, *, weights: str, device: str, keypoint_names: Sequence[str],
                 options: BodyOptions = BodyOptions()):
        self.name = NAME
        self.weights = weights
        self.device = device
        self.options = options
        self.estimator = estimator
        self.mhr = mhr
        self.faces = np.asarray(estimator.faces, dtype=np.int32)
        self.joint_names = list(mhr.joint_names)
        self.joint_parents = np.asarray(mhr.joint_parents, dtype=np.int64)
        self.root_joint = int(np.flatnonzero(self.joint_parents < 0)[0]) if (self.joint_parents < 0).any() else 0
        self.keypoint_names = list(keypoint_names)

    @classmethod
    def from_options(cls, options: ModelOptions) -> "Sam3dBodyModel":
        if options.random_weights:
            raise PluginUnavailableError(
                f"{NAME} cannot run with random weights: its architecture comes from the checkpoint's {CONFIG_FILE} "
                f"and the MHR asset (download {HUB_ID})")
        extra = BodyOptions.from_extra(options.extra)
        problems = []
        if upstream_source(UPSTREAM_PACKAGE) is None:
            problems.append(
                "the SAM 3D Body code is not installed: clone Meta's repository (facebookresearch/sam-3d-body; it "
                "has no setup.py: put the clone on PYTHONPATH and install the dependencies of its INSTALL.md) or "
                f"install PyPI `{VENDOR_PACKAGE}`, which vendors it")
        cuda = cuda_problem(options.device, "SAM 3D Body's estimator (it moves every batch to 'cuda')")
        if cuda:
            problems.append(cuda)
        if problems:
            raise PluginUnavailableError(f"{NAME} cannot run here: " + "; ".join(problems))
        device = select_cuda_device(options.device)
        source = options.weights or HUB_ID
        weights = resolve_weights(source, options, extra.mhr_path)

        import torch

        problem = backbone_code_problem(weights.config, is_offline(options), torch.hub.get_dir())
        if problem:
            raise WeightsNotFoundError(f"{NAME}: {problem}")
        estimator, model = build_estimator(weights, device)
        from sam_3d_body.metadata.mhr70 import mhr_names

        return cls(estimator, MhrBody(model.head_pose.mhr, device), weights=source, device=device,
                   keypoint_names=mhr_names, options=extra)

    def estimate(self, request: BodyRequest) -> list[BodyEstimate]:
        image, boxes, masks, K = validate_request(request)
        if len(boxes) == 0:
            return []
        cam_int = None
        if K is not None:
            import torch

            cam_int = torch.from_numpy(K.astype(np.float32))[None]  # (1, 3, 3), as upstream's batch["cam_int"]
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()) as printed:  # upstream prints several lines per call
            outputs = self.estimator.process_one_image(image, bboxes=boxes, masks=masks, cam_int=cam_int,
                                                       inference_type=self.options.inference_type)
        if printed.getvalue():
            log.debug("sam_3d_body: %s", printed.getvalue().strip())
        elapsed_ms = (time.perf_counter() - started) * 1e3
        if len(outputs) != len(boxes):
            raise BadInputError("estimator", f"SAM 3D Body returned {len(outputs)} people for {len(boxes)} boxes")
        return estimates_from_outputs(outputs, {"estimate": elapsed_ms, "per_person": elapsed_ms / len(boxes)},
                                      self.root_joint)

    def pose_from_params(self, params: dict[str, np.ndarray], camera_translation: np.ndarray):
        return self.mhr.pose(params, camera_translation)


def build_estimator(weights: BodyWeights, device: str):
    """load_sam_3d_body + SAM3DBodyEstimator (no detector, segmenter or FOV estimator)."""
    # Any value makes the MHR head load the TorchScript asset we resolved instead of PyPI mhr's MHR.from_files
    # (mhr_head.py:21-33).
    os.environ.setdefault("MOMENTUM_ENABLED", "0")
    source = use_upstream(UPSTREAM_PACKAGE)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Momentum is not enabled", torch.jit deprecation
            from sam_3d_body import SAM3DBodyEstimator, load_sam_3d_body
    except Exception as error:
        raise PluginUnavailableError(
            f"SAM 3D Body ({source}) cannot be imported: {type(error).__name__}: {error} (it needs torch, "
            f"torchvision, roma, yacs, timm, pytorch_lightning, opencv, braceexpand)") from error
    log.info("loading SAM 3D Body (%s code) from %s on %s", source, weights.directory, device)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, config = load_sam_3d_body(checkpoint_path=str(weights.checkpoint), device=device,
                                             mhr_path=str(weights.mhr))
            estimator = SAM3DBodyEstimator(sam_3d_body_model=model, model_cfg=config)
    except FileNotFoundError as error:
        raise WeightsNotFoundError(f"SAM 3D Body could not load {error.filename or error}") from error
    except (RuntimeError, KeyError, ValueError) as error:
        raise WeightsMismatchError(f"SAM 3D Body weights in {weights.directory} do not load: {error}") from error
    return estimator, model
