"""Depth Anything 3 (ByteDance Seed, 2025) as a perception_fm depth plugin.

The network is the official one from the ``depth-anything-3`` package, built from its config registry;
``depth_anything_3.api`` (which pulls torchvision, moviepy, pycolmap, ...) is never imported. Everything
around the network is ours: loading from a hub id or a local directory with a strict key check,
preprocessing on the model's device, mixed precision on GPU, metric scaling, and the ray-head pose solver
(perception_fm.geometry.ray_pose).

Checkpoint layout (hub repo or local directory): ``config.json`` = {"model_name": "<registry name>"} and
``model.safetensors`` whose keys are the network's state dict prefixed with ``model.``.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from perception_fm.errors import BadInputError, WeightsMismatchError, WeightsNotFoundError
from perception_fm.geometry.camera import known_pose_unit
from perception_fm.hookspecs import ModelOptions, ModelSpec, Task, hookimpl
from perception_fm.plugins.weights import (check_finite, hub_snapshot, is_local_path, load_safetensors,
                                          local_directory, read_json_object, select_device)
from perception_fm.tasks.depth import (
    POSE_CAMERA_HEAD,
    POSE_RAY,
    DepthCapabilities,
    DepthPrediction,
    PreparedView,
)

log = logging.getLogger(__name__)

PATCH_SIZE = 14
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# DA3 Metric predicts depth for a canonical focal length: metres = focal_px * raw / 300.
METRIC_CANONICAL_FOCAL = 300.0
# Image resampling to the processed size: "upstream" = upstream's uint8 cv2 steps (resize_like_upstream; the
# pixels the weights were trained on), "fast" = one float bilinear resize on the model's device (antialiased
# when shrinking; no host work, but pixels differ from upstream's: see the README).
RESIZE_UPSTREAM, RESIZE_FAST = "upstream", "fast"
RESIZE_MODES = (RESIZE_UPSTREAM, RESIZE_FAST)
# Which view's camera the network's attention treats as the reference (upstream's choices; its default
# "saddle_balanced" reorders windows of 3+ views by their class tokens). Poses are published relative to view 0
# whatever the choice.
REF_VIEW_STRATEGIES = ("saddle_balanced", "saddle_sim_range", "first", "middle")
DEFAULT_REF_VIEW_STRATEGY = "saddle_balanced"
RANDOM_WEIGHTS = "random-init"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_PREFIX = "model."


@dataclass(frozen=True)
class Da3Variant:
    name: str  # model name users choose; also the key of depth_anything_3.registry.MODEL_REGISTRY
    hub_id: str
    license: str
    kind: str  # "anyview": multi-view depth + poses; "mono": one view; "nested": anyview + metric branch
    metric: bool
    summary: str

    @property
    def capabilities(self) -> DepthCapabilities:
        anyview = self.kind in ("anyview", "nested")
        return DepthCapabilities(
            metric=self.metric,
            multi_view=anyview,
            pose_methods=(POSE_CAMERA_HEAD, POSE_RAY) if anyview else (),
            known_poses=anyview,
            needs_intrinsics=self.kind == "mono" and self.metric,
            sky=self.kind in ("mono", "nested"),
        )


APACHE = "Apache-2.0"
NON_COMMERCIAL = "CC-BY-NC-4.0 (non-commercial use only)"
VARIANTS = (
    Da3Variant("da3-small", "depth-anything/DA3-SMALL", APACHE, "anyview", False,
               "DA3 Small (ViT-S, 34 M params): any-view relative depth + camera poses"),
    Da3Variant("da3-base", "depth-anything/DA3-BASE", APACHE, "anyview", False,
               "DA3 Base (ViT-B): any-view relative depth + camera poses"),
    Da3Variant("da3-large", "depth-anything/DA3-LARGE-1.1", NON_COMMERCIAL, "anyview", False,
               "DA3 Large 1.1 (ViT-L): any-view relative depth + camera poses"),
    Da3Variant("da3-giant", "depth-anything/DA3-GIANT-1.1", NON_COMMERCIAL, "anyview", False,
               "DA3 Giant 1.1 (ViT-G): any-view relative depth + camera poses"),
    Da3Variant("da3mono-large", "depth-anything/DA3MONO-LARGE", APACHE, "mono", False,
               "DA3 Mono Large: single-view relative depth with sky mask"),
    Da3Variant("da3metric-large", "depth-anything/DA3METRIC-LARGE", APACHE, "mono", True,
               "DA3 Metric Large: single-view metric depth (needs camera_info) with sky mask"),
    Da3Variant("da3nested-giant-large", "depth-anything/DA3NESTED-GIANT-LARGE-1.1", NON_COMMERCIAL, "nested", True,
               "DA3 Nested Giant+Large 1.1: any-view metric depth + camera poses with sky mask"),
)
REQUIRES = ("torch", "depth_anything_3", "safetensors", "huggingface_hub", "omegaconf", "addict", "einops")
# The Giant backbone's config carries DA3's Gaussian-splatting head, whose module imports evo.
GIANT_REQUIRES = REQUIRES + ("evo",)


@hookimpl
def register_models() -> list[ModelSpec]:
    return [
        ModelSpec(
            name=variant.name,
            task=Task.DEPTH,
            summary=variant.summary,
            license=variant.license,
            default_weights=variant.hub_id,
            requires=GIANT_REQUIRES if "giant" in variant.name else REQUIRES,
            create=functools.partial(Da3DepthModel.from_options, variant),
        )
        for variant in VARIANTS
    ]


# ----------------------------------------------------------------------------------------------------------
# Building and loading


def build_network(name: str):
    """The official network for a registry name, randomly initialised (torch's default init)."""
    # depth_anything_3 logs an INFO line per forward pass; in a node that floods the log at frame rate.
    os.environ.setdefault("DA3_LOG_LEVEL", "WARN")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # omegaconf deprecation warning printed at import
        from depth_anything_3.cfg import create_object, load_config
        from depth_anything_3.registry import MODEL_REGISTRY
    if name not in MODEL_REGISTRY:
        raise WeightsMismatchError(
            f"unknown Depth Anything 3 architecture {name!r}; known: {', '.join(sorted(MODEL_REGISTRY))}"
        )
    return create_object(load_config(MODEL_REGISTRY[name]))


def _tied_groups(net) -> list[list[str]]:
    """Names of state-dict tensors that share storage (tied parameters, e.g. DA3's auxiliary output convs)."""
    groups: dict[tuple, list[str]] = {}
    for key, value in net.state_dict().items():
        groups.setdefault((value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape)), []).append(key)
    return [keys for keys in groups.values() if len(keys) > 1]


def save_pretrained(net, directory: str | os.PathLike, name: str) -> Path:
    """Write `net` in the hub layout (config.json + model.safetensors with the ``model.`` prefix). Tied
    tensors are stored once (safetensors refuses shared storage); loading fills the others."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(json.dumps({"model_name": name}))
    duplicates = {key for group in _tied_groups(net) for key in group[1:]}
    state = {STATE_PREFIX + key: value.detach().contiguous()
             for key, value in net.state_dict().items() if key not in duplicates}
    save_file(state, str(directory / WEIGHTS_FILE))
    return directory


def resolve_weights(source: str, options: ModelOptions) -> Path:
    """A directory holding config.json and model.safetensors, from a local path or the HF hub."""
    if is_local_path(source):
        directory = local_directory(source, "Depth Anything 3")
    else:
        directory = hub_snapshot(source, options, [CONFIG_FILE, WEIGHTS_FILE], "Depth Anything 3")
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if not (directory / f).is_file()]
    if missing:
        raise WeightsNotFoundError(f"Depth Anything 3 weights {str(directory)!r} lack {', '.join(missing)} "
                                   f"(expected {CONFIG_FILE} and {WEIGHTS_FILE})")
    return directory


def read_architecture(directory: Path) -> str:
    """The registry name in config.json ({"model_name": ...}, as the hub repos and save_pretrained write it)."""
    config = read_json_object(directory / CONFIG_FILE, "Depth Anything 3 config")
    name = config.get("model_name")
    if not isinstance(name, str) or not name:
        raise WeightsMismatchError(f"{str(directory / CONFIG_FILE)!r} has no \"model_name\" (the architecture, "
                                   f"e.g. \"da3-small\"); got keys {sorted(config)[:8]}")
    return name


def load_state(net, directory: Path) -> None:
    """Load model.safetensors into `net`; every parameter of the network must come from the file, with the
    network's shape and finite values."""
    path = directory / WEIGHTS_FILE
    state = load_safetensors(path)
    state = {key[len(STATE_PREFIX):] if key.startswith(STATE_PREFIX) else key: value for key, value in state.items()}
    expected = net.state_dict()
    wrong = [f"{key} {tuple(value.shape)} where the network has {tuple(expected[key].shape)}"
             for key, value in state.items() if key in expected and value.shape != expected[key].shape]
    if wrong:
        raise WeightsMismatchError(f"{str(path)!r} has {len(wrong)} tensor{'s' * (len(wrong) > 1)} of the wrong "
                                   f"shape (e.g. {'; '.join(wrong[:3])}): not a checkpoint of this architecture")
    check_finite(((key, value) for key, value in state.items() if key in expected), repr(str(path)))
    result = net.load_state_dict(state, strict=False)
    # A tied tensor is loaded when any tensor of its group is in the file.
    loaded_through_tie = {key for group in _tied_groups(net) if any(k in state for k in group) for key in group}
    missing = [key for key in result.missing_keys if key not in loaded_through_tie]
    if missing:
        shown = ", ".join(missing[:8])
        raise WeightsMismatchError(
            f"{str(path)!r} lacks {len(missing)} of the network's tensors "
            f"(e.g. {shown}); refusing to run with those left random"
        )
    if result.unexpected_keys:
        log.warning(
            "%s has %d tensors the network does not use (ignored), e.g. %s",
            directory / WEIGHTS_FILE, len(result.unexpected_keys), ", ".join(result.unexpected_keys[:8]),
        )


def _nearest_patch_multiple(value: int) -> int:
    """The multiple of 14 nearest to a whole pixel count, ties going up (as upstream's InputProcessor snaps);
    at least one patch (upstream would give 1 px below 7 px, which its network cannot take)."""
    below = value // PATCH_SIZE * PATCH_SIZE
    above = below + PATCH_SIZE
    return max(PATCH_SIZE, above if above - value <= value - below else below)


def bounded_size(height: int, width: int, process_res: int) -> tuple[int, int]:
    """Step 1 of upstream's "upper_bound_resize": the longest side scaled to `process_res`, each side then
    rounded to whole pixels (Python's round, half to even, on the scaled float; at least 1 px). Unchanged when
    the longest side already is `process_res`."""
    longest = max(height, width)
    if longest == process_res:
        return height, width
    scale = process_res / float(longest)
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def processed_size(height: int, width: int, process_res: int) -> tuple[int, int]:
    """(rows, columns) the network sees: upstream's "upper_bound_resize" — first the longest side to
    `process_res` in whole pixels (bounded_size), then each side to the nearest multiple of the 14-pixel patch
    (ties up). The two roundings in this order are what the weights were trained on: 1280x800 at 504 gives
    504x322, where one rounding of the scaled float would give 504x308."""
    bounded = bounded_size(height, width, process_res)
    return _nearest_patch_multiple(bounded[0]), _nearest_patch_multiple(bounded[1])


def resize_like_upstream(image: np.ndarray, process_res: int) -> np.ndarray:
    """`image` (H, W, 3) uint8 resized as upstream's InputProcessor does it, on the host with cv2: to
    bounded_size, then to processed_size, each step INTER_AREA when shrinking and INTER_CUBIC when enlarging
    (any side) and rounded to uint8 in between. Same pixels as upstream, bit for bit."""
    import cv2

    height, width = image.shape[:2]
    for target in (bounded_size(height, width, process_res), processed_size(height, width, process_res)):
        if target == image.shape[:2]:
            continue
        current = image.shape[:2]
        enlarging = target[0] > current[0] or target[1] > current[1]
        # Upstream's first step decides by the scale of the longest side, its second by any side growing;
        # in the first step both sides scale alike, so "any side grows" is the same test.
        interpolation = cv2.INTER_CUBIC if enlarging else cv2.INTER_AREA
        image = cv2.resize(np.ascontiguousarray(image), (target[1], target[0]), interpolation=interpolation)
    return image


def from_upstream_pixel_convention(K):
    """Intrinsics from DA3's pixel convention (the image spans [0, W] x [0, H], so the camera head's centred
    principal point is W/2, H/2) to ROS/OpenCV's (pixel centres at integers: the centre is (W - 1)/2): the
    principal point moves by -0.5 px. Works on numpy arrays and torch tensors (..., 3, 3); returns a copy."""
    K = K.clone() if hasattr(K, "clone") else np.array(K, dtype=np.float64)
    K[..., 0, 2] -= 0.5
    K[..., 1, 2] -= 0.5
    return K


# ----------------------------------------------------------------------------------------------------------
# Precision and memory

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# The DINOv2 encoders (most of the weights; upstream runs them under autocast), by module name in each kind of
# network; everything else (DPT heads, camera encoder/decoder) upstream runs with autocast off, in fp32.
VIT_BACKBONES = ("backbone", "da3.backbone", "da3_metric.backbone")


def amp_dtype(precision: str, device: str):
    """The autocast dtype on `device`: none on the CPU (CPU autocast does not cover DA3's transposed
    convolutions) or for fp32; else bf16, or fp16 where asked or where the GPU lacks bf16. "auto" is upstream's
    choice: fp32 weights, bf16 autocast on CUDA."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be auto, fp32, fp16 or bf16, got {precision!r}")
    if precision == "fp32" or not device.startswith("cuda"):
        return None
    if precision == "fp16":
        return torch.float16
    # asked without a GPU here (a memory estimate for a robot's GPU): assume bf16, as every GPU since Ampere has
    bf16 = torch.cuda.is_bf16_supported() if torch.cuda.is_available() else True
    return torch.bfloat16 if bf16 else torch.float16


def cast_backbones(net, precision: str, amp) -> None:
    """bf16/fp16 asked explicitly (and autocast on): the ViT backbones' weights are stored in that dtype, which
    halves most of the model's memory. The rest stays fp32: upstream runs it with autocast off, in fp32."""
    if precision in ("bf16", "fp16") and amp is not None:
        for name, module in net.named_modules():
            if name in VIT_BACKBONES:
                module.to(amp)


# A 4:3 camera image (640x480) is what memory estimates assume; the node's process_res sets the processed size.
ESTIMATE_IMAGE = (480, 640)


@hookimpl
def estimate_memory(task, name, options, workload):
    variant = next((v for v in VARIANTS if v.name == name), None) if Task(task) is Task.DEPTH else None
    if variant is None:
        return None
    import torch

    from perception_fm.hookspecs import MemoryEstimate
    from perception_fm.runtime.budget import build_on_meta, forward_peak_bytes, module_bytes

    extra = dict(options.extra)
    precision = str(extra.get("precision", "auto"))
    device = options.device if options.device != "auto" else "cpu"
    amp = amp_dtype(precision, device)
    with build_on_meta():
        net = build_network(name)
    cast_backbones(net, precision, amp)
    parameters, parameter_bytes, buffer_bytes = module_bytes(net)
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in net.parameters()})
    views = max(1, int(workload.get("views", 1))) if variant.capabilities.multi_view else 1
    height, width = processed_size(*ESTIMATE_IMAGE, int(extra.get("process_res", 504)))
    if amp is not None:  # autocast, as forward_peak_bytes needs it: the backbones in amp, the heads in fp32
        from torch.utils._pytree import tree_map

        def cast(dtype):
            return lambda module, args, *out: tree_map(
                lambda t: t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t,
                out[0] if out else args)

        for module_name, module in net.named_modules():
            if module_name in VIT_BACKBONES:
                module.to(amp)
                module.register_forward_pre_hook(cast(amp))
                module.register_forward_hook(cast(torch.float32))
    x = torch.zeros(1, views, 3, height, width, device="meta")
    if variant.kind == "nested":
        def forward():
            return net.da3(x), net.da3_metric(x)
    else:
        def forward():
            return net(x)
    return MemoryEstimate(
        parameters=parameters, parameter_bytes=parameter_bytes, buffer_bytes=buffer_bytes,
        dtype="+".join(dtypes), activation_bytes=forward_peak_bytes(forward),
        workload=f"{width}x{height} px, {views} view{'s' if views > 1 else ''}"
                 + (f", {str(amp).replace('torch.', '')} autocast" if amp is not None else ""))


# torch.compile of the network (option "compile"): off by default, so that the default path is upstream's eager
# network; a mode name (or true = "default") compiles the backbones and heads in place on first use.
COMPILE_OFF = "off"
COMPILE_MODES = (COMPILE_OFF, "default", "reduce-overhead", "max-autotune")


def compile_mode(value) -> str:
    """The "compile" option as one of COMPILE_MODES (booleans and "true"/"false" accepted)."""
    text = str(value).strip().lower()
    aliases = {"true": "default", "on": "default", "false": COMPILE_OFF, "none": COMPILE_OFF, "": COMPILE_OFF}
    text = aliases.get(text, text)
    if text not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {COMPILE_MODES} (or true/false), got {value!r}")
    return text


def compile_network(net, mode: str) -> None:
    """torch.compile every DA3 backbone and head in `net` in place (nn.Module.compile: the state-dict keys
    stay as they are). Both pose paths call these two modules; the rest (camera encoder/decoder, the nested
    net's alignment) is small or data-dependent."""
    for module in net.modules():
        if hasattr(module, "backbone") and hasattr(module, "head"):
            module.backbone.compile(mode=mode)
            module.head.compile(mode=mode)


# ----------------------------------------------------------------------------------------------------------
# The model


class Da3DepthModel:
    """A DA3 network on one device, speaking the DepthModel protocol (perception_fm.tasks.depth)."""

    def __init__(self, variant: Da3Variant, net, *, weights: str, device: str, process_res: int = 504,
                 pose_method: str = POSE_CAMERA_HEAD, precision: str = "auto", resize: str = RESIZE_UPSTREAM,
                 ref_view_strategy: str = DEFAULT_REF_VIEW_STRATEGY, compile: str | bool = COMPILE_OFF):
        import torch

        self.variant = variant
        self.name = variant.name
        self.weights = weights
        self.device = device
        self.capabilities = variant.capabilities
        self.process_res = int(process_res)
        if self.capabilities.pose_methods and pose_method not in self.capabilities.pose_methods:
            raise ValueError(f"pose_method must be one of {self.capabilities.pose_methods}, got {pose_method!r}")
        self.pose_method = pose_method if self.capabilities.pose_methods else "none"
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.resize = resize
        if ref_view_strategy not in REF_VIEW_STRATEGIES:
            raise ValueError(f"ref_view_strategy must be one of {REF_VIEW_STRATEGIES}, got {ref_view_strategy!r}")
        self.ref_view_strategy = ref_view_strategy
        self.net = net.to(device).eval()
        self._amp_dtype = self._choose_precision(precision)
        cast_backbones(self.net, precision, self._amp_dtype)
        self.compile_mode = compile_mode(compile)
        if self.compile_mode != COMPILE_OFF:
            compile_network(self.net, self.compile_mode)
        self._mean = torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1)

    @classmethod
    def from_options(cls, variant: Da3Variant, options: ModelOptions) -> "Da3DepthModel":
        import torch

        device = select_device(options.device)
        if options.random_weights:
            torch.manual_seed(0)  # the same random network on every run
            net, weights = build_network(variant.name), RANDOM_WEIGHTS
        else:
            directory = resolve_weights(options.weights or variant.hub_id, options)
            architecture = read_architecture(directory)
            if architecture != variant.name:
                raise WeightsMismatchError(
                    f"weights in {str(directory)!r} are for {architecture!r}, but model {variant.name!r} was asked for"
                )
            net = build_network(architecture)
            load_state(net, directory)
            weights = options.weights or variant.hub_id
        extra = dict(options.extra)
        return cls(
            variant, net, weights=weights, device=device,
            process_res=int(extra.get("process_res", 504)),
            pose_method=str(extra.get("pose_method", POSE_CAMERA_HEAD)),
            precision=str(extra.get("precision", "auto")),
            resize=str(extra.get("resize", RESIZE_UPSTREAM)),
            ref_view_strategy=str(extra.get("ref_view_strategy", DEFAULT_REF_VIEW_STRATEGY)),
            compile=extra.get("compile", COMPILE_OFF),
        )

    def _choose_precision(self, precision: str):
        return amp_dtype(precision, self.device)

    # -- preprocessing ----------------------------------------------------------------------------------

    def prepare(self, image: np.ndarray, intrinsics: np.ndarray | None = None) -> PreparedView:
        import torch
        import torch.nn.functional as F

        from perception_fm.geometry.camera import scale_intrinsics

        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise BadInputError("encoding", f"DA3 takes RGB uint8 (H, W, 3) images, got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        if height < 2 or width < 2:
            raise BadInputError("empty", f"image of {width}x{height} pixels is too small")
        size = processed_size(height, width, self.process_res)
        if self.resize == RESIZE_UPSTREAM:
            # uint8 cv2 on the host (~1 ms for 640x480 -> 504x378 on one core): the only way to get upstream's
            # pixels exactly (cv2's INTER_AREA/INTER_CUBIC with uint8 rounding have no torch equivalent).
            image = resize_like_upstream(image, self.process_res)
        pixels = torch.from_numpy(np.ascontiguousarray(image)).to(self.device, non_blocking=True)
        # uint8 -> float32 / 255, then (x - mean) / std: torchvision's ToTensor + Normalize, operation for operation.
        pixels = pixels.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        if pixels.shape[-2:] != size:
            pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False,
                                   antialias=size[0] < height)
        tensor = ((pixels[0] - self._mean) / self._std).contiguous()
        K = None
        if intrinsics is not None:
            K = scale_intrinsics(np.asarray(intrinsics, dtype=np.float64), size[1] / width, size[0] / height)
        return PreparedView(data=tensor, image_size=(height, width), size=size, intrinsics=K)

    # -- inference --------------------------------------------------------------------------------------

    def predict(self, views: Sequence[PreparedView], *, dense_views: Sequence[int] | None = None,
                known_world_to_camera: np.ndarray | None = None, pose_method: str | None = None) -> DepthPrediction:
        import torch

        if not views:
            raise ValueError("predict needs at least one view")
        if len(views) > 1 and not self.capabilities.multi_view:
            raise ValueError(f"{self.name} is a single-view model; got {len(views)} views")
        sizes = {view.size for view in views}
        if len(sizes) != 1:
            raise BadInputError("size_mismatch", f"views of one call must share a size, got {sorted(sizes)}")
        dense = list(range(len(views))) if dense_views is None else [int(i) % len(views) for i in dense_views]
        method = pose_method or self.pose_method
        if self.capabilities.pose_methods and method not in self.capabilities.pose_methods:
            raise ValueError(f"pose_method must be one of {self.capabilities.pose_methods}, got {method!r}")
        height, width = views[0].size

        started = time.perf_counter()
        x = torch.stack([view.data for view in views]).unsqueeze(0)  # (1, N, 3, h, w)
        extrinsics = intrinsics = None
        if known_world_to_camera is not None:
            extrinsics, intrinsics = self._conditioning(views, known_world_to_camera)
        autocast = torch.autocast(device_type="cuda", dtype=self._amp_dtype) if self._amp_dtype is not None \
            else torch.autocast(device_type="cpu", enabled=False)
        with torch.inference_mode(), autocast:
            if self.variant.kind == "mono":
                output = self.net(x)
                method = "none"
            elif self.variant.kind == "nested":
                output = self._forward_anyview(self.net.da3, x, extrinsics, intrinsics, method)
                metric = self.net.da3_metric(x)
                # The nested net's own alignment of the any-view branch to its metric branch (least squares
                # scale on confident non-sky pixels, sky set to far depth).
                output = self.net._apply_metric_scaling(output, metric)
                output = self.net._apply_depth_alignment(output, metric)
                output = self.net._handle_sky_regions(output, metric)
                output.sky = metric.sky
            else:
                output = self._forward_anyview(self.net, x, extrinsics, intrinsics, method)

        depth = output["depth"][0, dense].float()
        if self.variant.kind == "mono" and self.variant.metric:
            depth = depth * self._metric_factor(views, dense).to(depth.device)
        result = DepthPrediction(
            views=dense,
            depth=depth.cpu().numpy(),
            confidence=output["depth_conf"][0, dense].float().cpu().numpy() if "depth_conf" in output else None,
            is_metric=self.capabilities.metric,
            pose_method=method if self.capabilities.pose_methods else "none",
            sky=(output["sky"][0, dense] >= 0.5).cpu().numpy() if "sky" in output else None,
        )
        if "extrinsics" in output:
            w2c = _homogeneous(output["extrinsics"][0].double().cpu().numpy())
            # Express every pose relative to the first view (view 0 = identity, the window's frame).
            result.world_to_camera = w2c @ np.linalg.inv(w2c[0])
            intrinsics = output["intrinsics"][0].double().cpu().numpy()
            # The camera head speaks DA3's pixel convention; our ray solve already gives ROS's (pixel centres
            # at integers, like every K we publish). One conversion, here.
            result.intrinsics = from_upstream_pixel_convention(intrinsics) if method == POSE_CAMERA_HEAD \
                else intrinsics
        result.timings_ms["predict"] = (time.perf_counter() - started) * 1e3
        return result

    def _forward_anyview(self, net, x, extrinsics, intrinsics, method):
        """Any-view forward. The camera head path is the network's own; the ray path runs the backbone and
        the dual DPT head, then our robust confidence-weighted DLT + RQ solve on the ray map (ray_pose)."""
        import torch
        from addict import Dict

        from perception_fm.geometry.ray_pose import solve_ray_pose

        if method == POSE_CAMERA_HEAD:
            return net(x, extrinsics, intrinsics, export_feat_layers=[], use_ray_pose=False,
                       ref_view_strategy=self.ref_view_strategy)
        height, width = x.shape[-2:]
        cam_token = None
        if extrinsics is not None:
            with torch.autocast(device_type=x.device.type, enabled=False):
                cam_token = net.cam_enc(extrinsics, intrinsics, (height, width))
        # The backbone reorders views around the reference it picks and restores the order in its outputs.
        features, _ = net.backbone(x, cam_token=cam_token, export_feat_layers=[],
                                   ref_view_strategy=self.ref_view_strategy)
        with torch.autocast(device_type=x.device.type, enabled=False):
            head = net.head(features, height, width, patch_start_idx=0)
        K, world_to_camera = solve_ray_pose(head["ray"][0].float(), head["ray_conf"][0].float(), (height, width))
        # float32 like the network's own outputs (the nested net's alignment mixes them with its depth)
        return Dict(
            depth=head["depth"], depth_conf=head["depth_conf"],
            extrinsics=world_to_camera[None, :, :3, :].float(), intrinsics=K[None].float(),
        )

    def _conditioning(self, views: Sequence[PreparedView], known_world_to_camera: np.ndarray):
        """Known poses + intrinsics as the network's camera tokens. Poses are re-expressed relative to the
        first view and translations divided by the median camera distance from it, the normalisation the
        network was trained with; the caller aligns the predicted poses back to the known ones."""
        import torch

        if not self.capabilities.known_poses:
            raise ValueError(f"{self.name} does not take known poses")
        w2c = np.asarray(known_world_to_camera, dtype=np.float64)
        if w2c.shape != (len(views), 4, 4):
            raise ValueError(f"known_world_to_camera must be ({len(views)}, 4, 4), got {w2c.shape}")
        if any(view.intrinsics is None for view in views):
            raise ValueError("known poses need intrinsics for every view")
        relative = w2c @ np.linalg.inv(w2c[0])
        centres = np.linalg.inv(relative)[:, :3, 3]
        relative[:, :3, 3] /= known_pose_unit(centres)
        extrinsics = torch.from_numpy(relative).float().to(self.device)[None]
        intrinsics = torch.from_numpy(np.stack([view.intrinsics for view in views])).float().to(self.device)[None]
        return extrinsics, intrinsics

    def _metric_factor(self, views: Sequence[PreparedView], dense: list[int]):
        import torch

        missing = [i for i in dense if views[i].intrinsics is None]
        if missing:
            raise BadInputError(
                "camera_info", f"{self.name} needs camera intrinsics (camera_info) to output metres; none were given"
            )
        focal = [(views[i].intrinsics[0, 0] + views[i].intrinsics[1, 1]) / 2 for i in dense]
        return torch.tensor(focal, dtype=torch.float32).view(-1, 1, 1) / METRIC_CANONICAL_FOCAL

    def warmup(self, views: int = 1, size: tuple[int, int] = (480, 640)) -> float:
        """One inference on a blank frame (allocations, kernel selection); returns its time in ms."""
        image = np.zeros((*size, 3), dtype=np.uint8)
        K = np.array([[size[1], 0, size[1] / 2], [0, size[1], size[0] / 2], [0, 0, 1]], dtype=np.float64)
        prepared = [self.prepare(image, K)] * (views if self.capabilities.multi_view else 1)
        started = time.perf_counter()
        self.predict(prepared, dense_views=[-1])
        return (time.perf_counter() - started) * 1e3


def _homogeneous(poses: np.ndarray) -> np.ndarray:
    """(N, 3, 4) or (N, 4, 4) → (N, 4, 4)."""
    if poses.shape[-2] == 4:
        return poses
    bottom = np.broadcast_to(np.array([0.0, 0.0, 0.0, 1.0]), (*poses.shape[:-2], 1, 4))
    return np.concatenate([poses, bottom], axis=-2)
