"""The depth task: images (one view or a window of views) in; depth, confidence and camera poses out.

Conventions (all arrays numpy, float32 unless stated):
- images are RGB uint8 (H, W, 3);
- intrinsics K are 3x3 pinhole matrices in pixels of the image they belong to (OpenCV: pixel centres at
  integer coordinates);
- poses are OpenCV world-to-camera 4x4 matrices (x right, y down, z forward: the REP 103 optical frame), in
  the frame of the first view of the call unless known poses were given, float64;
- depth is z-depth along the optical axis at the model's processed resolution.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

POSE_CAMERA_HEAD = "camera_head"
POSE_RAY = "ray"


@dataclass(frozen=True)
class DepthCapabilities:
    metric: bool  # depth in metres (given intrinsics where the model needs them)
    multi_view: bool  # accepts several views in one call and relates them (cross-view attention)
    pose_methods: tuple[str, ...] = ()  # how it can predict poses: POSE_CAMERA_HEAD, POSE_RAY
    known_poses: bool = False  # accepts known extrinsics + intrinsics as conditioning
    needs_intrinsics: bool = False  # metric output requires K (e.g. DA3 Metric: metres = f * raw / 300)
    sky: bool = False  # predicts a sky mask


@dataclass
class PreparedView:
    """One image made ready for the model (resized and normalised on the model's device).

    Pipelines keep PreparedViews of keyframes so a sliding window never preprocesses an image twice.
    """

    data: Any  # model-specific, e.g. a (3, h, w) tensor on the GPU
    image_size: tuple[int, int]  # (H, W) of the input image
    size: tuple[int, int]  # (h, w) the model works at; depth comes out at this size
    intrinsics: np.ndarray | None  # K scaled to `size`, when the caller knew K

    @property
    def scale_xy(self) -> tuple[float, float]:
        """(sx, sy): processed pixels per input pixel."""
        return self.size[1] / self.image_size[1], self.size[0] / self.image_size[0]


@dataclass
class DepthPrediction:
    """Output of one model call over N views. Dense maps only for the views asked for (`views`)."""

    views: list[int]  # indices (into the call's views) of the dense maps below
    depth: np.ndarray  # (len(views), h, w) float32; metres when is_metric
    confidence: np.ndarray | None  # (len(views), h, w) float32, higher is better; None if not predicted
    is_metric: bool
    world_to_camera: np.ndarray | None = None  # (N, 4, 4) float64 for all N views, first view = identity
    intrinsics: np.ndarray | None = None  # (N, 3, 3) float64 predicted K at the processed size
    pose_method: str = "none"
    sky: np.ndarray | None = None  # (len(views), h, w) bool
    timings_ms: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class DepthModel(Protocol):
    name: str  # model name, e.g. "da3-small"
    weights: str  # hub id or directory, or "random-init"
    device: str
    capabilities: DepthCapabilities

    def prepare(self, image: np.ndarray, intrinsics: np.ndarray | None = None) -> PreparedView:
        """Resize/normalise one RGB uint8 image on the model's device; scale `intrinsics` with it."""

    def predict(
        self,
        views: Sequence[PreparedView],
        *,
        dense_views: Sequence[int] | None = None,
        known_world_to_camera: np.ndarray | None = None,
        pose_method: str | None = None,
    ) -> DepthPrediction:
        """Run the model on `views` (len 1 unless capabilities.multi_view).

        dense_views: which views' depth/confidence to return (None: all); poses are always for all views.
        known_world_to_camera: (N, 4, 4) known poses used as conditioning (capabilities.known_poses);
            every view then needs intrinsics. Predicted poses stay in the model's own frame and scale;
            aligning them to the known poses is the caller's job.
        pose_method: one of capabilities.pose_methods (None: the model's default).
        """
