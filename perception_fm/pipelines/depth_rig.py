"""Depth from a calibrated camera rig, group by group, without ROS: the cameras' frames of one instant are the
views of ONE multi-view model call, conditioned on the rig's known extrinsics and the cameras' intrinsics, so
depth is consistent across cameras and its scale is the rig's (metres when the extrinsics are).

- Known poses: each camera's optical frame in the rig's common frame (TF common_frame <- camera frame at the
  group's stamp). When every view has one (and intrinsics) and the model accepts them, they condition the
  network (the plugin re-expresses them relative to the first view, normalised as in training: see
  perception_fm.plugins.da3); in any case the call's predicted poses are aligned to them (Sim3 over the
  camera centres, perception_fm.geometry.sim3.chain_window, as upstream DA3 aligns to input extrinsics),
  which gives relative models the rig's scale. When the predicted centres do not determine a positive scale
  (e.g. untrained weights) but the known poses conditioned the call, the depth is taken to be in the units
  the poses were normalised to for the network (the median distance of the cameras from the first one,
  `rig_extent`, as perception_fm.plugins.da3 normalises them), scale_source "rig_extent". Otherwise the
  scale stays at the last one determined.
- Outputs per camera keep the camera's own optical frame and stamp (depth, confidence, K, cloud); one fused
  XYZRGB cloud in the common frame gathers every camera with a pose (known, else aligned prediction),
  optionally voxel down-sampled (one point per occupied voxel: mean position and colour), vectorised.
- Sliding window (window_size W > 1): past groups are keyframes, as frames are for one camera (the same
  KeyframeWindow: a new keyframe group every keyframe_every groups, or on the rig's motion; a new sequence when
  time goes back or the processed size changes). Each call sees the last W - 1 keyframe groups' views (all
  their cameras, prepared once when they arrived and kept, never prepared again) and the current group's.
  This needs the rig's pose over time: `rig_to_world` (the rig frame in the known world frame, e.g. odom,
  from TF at the group's stamp) makes every camera's pose known in that frame (rig_to_world x camera_to_rig),
  so all views of the window condition the call and its depth is in that frame's units, consistent over
  time. Without it a window is refused (chaining groups on predicted poses alone is not done). A group whose
  rig pose is missing runs alone (its cameras conditioned in the rig frame) and does not become a keyframe.
- Memory: the keyframe groups' prepared views (at most (W - 1) x cameras) and the running scale.

The single-camera stream (perception_fm.pipelines.depth_pipeline) is untouched by this module.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from perception_fm.errors import BadInputError
from perception_fm.geometry.camera import known_pose_unit, transform_points
from perception_fm.geometry.sim3 import chain_window, invert_pose
from perception_fm.pipelines.depth_pipeline import (SCALE_KNOWN_POSES, SCALE_MODEL, SCALE_NONE, DepthPipeline,
                                                    DepthPipelineConfig, KeyframeWindow)
from perception_fm.tasks.depth import DepthModel, PreparedView

SCALE_RIG_EXTENT = "rig_extent"


@dataclass
class RigView:
    camera: str  # the camera's name in the rig
    image: np.ndarray  # (H, W, 3) uint8 RGB
    stamp_ns: int  # the frame's own stamp
    intrinsics: np.ndarray | None  # K of `image`
    camera_to_rig: np.ndarray | None  # the optical frame in the rig's common frame (TF), None when unknown


@dataclass
class RigCameraOutput:
    camera: str
    stamp_ns: int
    depth: np.ndarray  # (h, w) float32, the group's units; +inf where the model saw sky
    confidence: np.ndarray | None
    intrinsics: np.ndarray | None  # K at the depth resolution
    points: np.ndarray  # (M, 3) float32 in the camera's optical frame
    colors: np.ndarray  # (M, 3) uint8
    camera_to_rig: np.ndarray | None  # pose used for the fused cloud: known, else aligned prediction
    pose_known: bool


@dataclass
class RigOutput:
    stamp_ns: int
    cameras: list[RigCameraOutput]
    fused_points: np.ndarray  # (M, 3) float32 in the common frame
    fused_colors: np.ndarray  # (M, 3) uint8
    is_metric: bool
    scale_source: str
    scale: float
    conditioned: bool  # the known poses conditioned the network
    inference_ms: float
    rig_to_world: np.ndarray | None = None  # the rig frame in the known world frame (given), for the window
    window_groups: int = 1  # groups in the call: keyframe groups + this one
    views_in_call: int = 0  # views in the call: keyframe groups' + this group's
    keyframe: bool = False  # this group was kept as a keyframe group
    new_sequence: bool = False  # first group after a reset: the window restarted here
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class _KeyframeGroup:
    """A past group in the window: its cameras' prepared views (kept on the model's device, never prepared
    again) and their poses in the known world frame."""
    views: list[PreparedView]
    camera_to_world: list[np.ndarray]


def rig_extent(camera_to_rig: list[np.ndarray]) -> float:
    """The unit DA3's plugin normalises known poses to before they condition the network (upstream's: see
    known_pose_unit)."""
    return known_pose_unit(np.stack([pose[:3, 3] for pose in camera_to_rig]))


def voxel_downsample(points: np.ndarray, colors: np.ndarray, voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """One point per occupied voxel of side `voxel_size`: the mean of its points and of their colours
    (vectorised: np.unique over integer voxel keys, sums by bincount). `voxel_size` <= 0 returns the input."""
    if voxel_size <= 0 or len(points) == 0:
        return points, colors
    cells = np.floor(points / np.float32(voxel_size)).astype(np.int64)
    _, inverse, counts = np.unique(cells, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    sums = np.stack([np.bincount(inverse, weights=points[:, axis], minlength=len(counts)) for axis in range(3)],
                    axis=1)
    color_sums = np.stack([np.bincount(inverse, weights=colors[:, axis], minlength=len(counts))
                           for axis in range(3)], axis=1)
    fused = (sums / counts[:, None]).astype(np.float32)
    fused_colors = np.clip(np.round(color_sums / counts[:, None]), 0, 255).astype(np.uint8)
    return fused, fused_colors


class DepthRigPipeline:
    """One model call per group of rig frames; see the module docstring. `config` carries the cloud settings,
    the pose method and the sliding window of the single-camera pipeline. `known_world`: the caller gives each
    group's `rig_to_world` (a known world frame from TF); a window (window_size > 1) needs it."""

    def __init__(self, model: DepthModel, config: DepthPipelineConfig = DepthPipelineConfig(), *,
                 voxel_size: float = 0.0, known_world: bool = False):
        capabilities = model.capabilities
        if not capabilities.multi_view:
            raise ValueError(f"a camera rig needs a multi-view model (one call for all cameras); {model.name} "
                             "sees one view")
        if config.window_size > 1 and not known_world:
            raise ValueError(f"a camera rig with window_size {config.window_size} keeps past groups as keyframes, "
                             "which needs the rig's pose over time: set known_pose_frame (e.g. odom: TF "
                             "known_pose_frame <- rig_frame at each group's stamp) and rig_frame, or use "
                             "window_size 1")
        # the single-camera pipeline's checks (pose_method, window_size) and its cloud code, one place for both
        self._cloud_pipeline = DepthPipeline(model, config)
        self.model = model
        self.config = config
        self.voxel_size = float(voxel_size)
        self._window = KeyframeWindow(config)
        self._restart()

    def reset(self) -> None:
        """Forget the keyframe groups and the scale (new sequence)."""
        self._window = KeyframeWindow(self.config)
        self._restart()

    def _restart(self) -> None:
        self._window.clear()
        self._scale = 1.0
        self._scale_source = SCALE_MODEL if self.model.capabilities.metric else SCALE_NONE
        self._new_sequence = True

    @property
    def kept_views(self) -> int:
        """Prepared views kept between groups (the keyframe groups'): at most (window_size - 1) x cameras."""
        return sum(len(group.views) for group in self._window.keyframes)

    def process(self, views: list[RigView], rig_to_world: np.ndarray | None = None) -> RigOutput:
        """`rig_to_world`: the rig frame's pose in the known world frame at the group's stamp (TF), None when
        unknown (the group then runs alone, in the rig frame, and is no keyframe)."""
        if not views:
            raise ValueError("a group needs at least one view")
        started = time.perf_counter()
        if self._window.went_back(min(view.stamp_ns for view in views)):
            self._restart()  # a bag restarted or time jumped back: the window no longer describes the stream
        prepared = [self.model.prepare(view.image, view.intrinsics) for view in views]
        sizes = {p.size for p in prepared}
        if len(sizes) != 1:
            raise BadInputError("size_mismatch", f"the rig's cameras must share an image size for one model call "
                                                 f"(processed sizes {sorted(sizes)})")
        size = sizes.pop()
        if self._window.resized(size):
            self._restart()  # the cameras' resolution changed
        # Known poses of this group: in the world frame when the rig's pose there is known, else in the rig
        # frame (the network sees poses relative to the call's first view, so a lone group's call is the same).
        in_world = None
        if rig_to_world is not None:
            in_world = [None if view.camera_to_rig is None else rig_to_world @ view.camera_to_rig for view in views]
        keyframes = list(self._window.keyframes) if in_world is not None else []
        call_views = [view for group in keyframes for view in group.views] + prepared
        knowns = [pose for group in keyframes for pose in group.camera_to_world] + (
            in_world if in_world is not None else [view.camera_to_rig for view in views])
        first = len(call_views) - len(views)  # this group's views are the call's last ones
        condition = (self.config.condition_on_known_poses and self.model.capabilities.known_poses
                     and len(call_views) >= 2 and all(known is not None for known in knowns)
                     and all(p.intrinsics is not None for p in call_views))
        prepared_at = time.perf_counter()
        prediction = self.model.predict(
            call_views, dense_views=list(range(first, len(call_views))),
            known_world_to_camera=invert_pose(np.stack(knowns)) if condition else None,
            pose_method=self.config.pose_method or None)
        predicted_at = time.perf_counter()

        poses = self._poses(prediction, knowns, condition)[first:]
        if in_world is not None:  # back to the rig frame, where the fused cloud is
            world_to_rig = invert_pose(rig_to_world)
            poses = [view.camera_to_rig if view.camera_to_rig is not None
                     else None if pose is None else world_to_rig @ pose for view, pose in zip(views, poses)]
        scale = 1.0 if prediction.is_metric else self._scale
        outputs = []
        for index, (view, view_prepared) in enumerate(zip(views, prepared)):
            depth = prediction.depth[index]
            if scale != 1.0:
                depth = depth * np.float32(scale)
            if prediction.sky is not None:
                depth = np.where(prediction.sky[index], np.float32(np.inf), depth)
            confidence = prediction.confidence[index] if prediction.confidence is not None else None
            K = view_prepared.intrinsics
            if K is None and prediction.intrinsics is not None:
                K = prediction.intrinsics[first + index]
            points, colors = self._cloud_pipeline._cloud(view.image, depth, confidence, K)
            outputs.append(RigCameraOutput(view.camera, view.stamp_ns, depth.astype(np.float32, copy=False),
                                           confidence, K, points, colors, poses[index],
                                           view.camera_to_rig is not None))
        fused_points, fused_colors = self._fuse(outputs)
        # A keyframe group needs every camera's world pose: later calls are conditioned on all of them.
        keyframe = (in_world is not None and all(pose is not None for pose in in_world)
                    and self._window.due(rig_to_world))
        if keyframe:
            self._window.add(_KeyframeGroup(prepared, in_world), rig_to_world, size)
        new_sequence, self._new_sequence = self._new_sequence, False
        done = time.perf_counter()
        return RigOutput(
            stamp_ns=min(view.stamp_ns for view in views), cameras=outputs, fused_points=fused_points,
            fused_colors=fused_colors, is_metric=prediction.is_metric or self._scale_source == SCALE_KNOWN_POSES,
            scale_source=self._scale_source, scale=float(scale), conditioned=bool(condition),
            inference_ms=(predicted_at - started) * 1e3, rig_to_world=rig_to_world,
            window_groups=len(keyframes) + 1, views_in_call=len(call_views), keyframe=keyframe,
            new_sequence=new_sequence,
            timings_ms={"prepare": (prepared_at - started) * 1e3, "predict": (predicted_at - prepared_at) * 1e3,
                        "postprocess": (done - predicted_at) * 1e3})

    def _poses(self, prediction, knowns, conditioned: bool) -> list[np.ndarray | None]:
        """Each view's pose in the common frame (known, else the prediction aligned to the known ones); updates
        the running scale (prediction -> common frame) for relative models."""
        anchors = {index: known for index, known in enumerate(knowns) if known is not None}
        if prediction.world_to_camera is None or not anchors:
            return list(knowns)
        metric = prediction.is_metric
        chained, sim3, determined = chain_window(invert_pose(prediction.world_to_camera), anchors,
                                                 scale=1.0 if metric else None, fallback_scale=self._scale)
        if determined and not metric:
            self._scale, self._scale_source = float(sim3.scale), SCALE_KNOWN_POSES
        elif conditioned and not metric and rig_extent(knowns) > 0:
            self._scale, self._scale_source = rig_extent(knowns), SCALE_RIG_EXTENT
            chained, _, _ = chain_window(invert_pose(prediction.world_to_camera), anchors, scale=self._scale)
        return [known if known is not None else chained[index] for index, known in enumerate(knowns)]

    def _fuse(self, outputs: list[RigCameraOutput]) -> tuple[np.ndarray, np.ndarray]:
        placed = [(transform_points(output.camera_to_rig, output.points), output.colors)
                  for output in outputs if output.camera_to_rig is not None and len(output.points)]
        if not placed:
            return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
        points = np.concatenate([p for p, _ in placed]).astype(np.float32, copy=False)
        colors = np.concatenate([c for _, c in placed])
        return voxel_downsample(points, colors, self.voxel_size)
