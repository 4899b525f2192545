"""Depth from a camera stream, frame by frame, without ROS: the depth node and the offline replay both run
this, so a bag replayed offline gives what the live node would publish.

Modes
- window_size == 1: each frame alone. Depth (metric for metric models, relative otherwise); no pose
  unless a known pose is given.
- window_size > 1 (multi-view models): the model sees the last window_size - 1 keyframes plus the current
  frame. Each call's poses and depth come in that call's own frame and scale. The scale to the trajectory is
  the median ratio of the keyframes' depth as published to their depth in this call (one shared view is
  enough, and it does not need the camera to move); rotation and translation come from the keyframes'
  trajectory poses (orientations + centres, so a single keyframe or collinear motion suffice). Depth, clouds
  and poses so stay consistent across windows, in the scale of the stream's first frame.
- known poses (e.g. odometry from TF): when every view of the window has one and the model accepts them,
  they condition the network; in any case they anchor the chain, which puts estimates in the known frame and
  gives relative models the known poses' scale (metres for odometry) once the camera has moved.

Memory is bounded: a fixed number of keyframes (preprocessed on the model's device), nothing else per frame.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from perception_fm.geometry.camera import select_pixels, unproject_depth
from perception_fm.geometry.sim3 import chain_window, invert_pose
from perception_fm.tasks.depth import DepthModel, PreparedView

SCALE_MODEL, SCALE_KNOWN_POSES, SCALE_WINDOW_CHAIN, SCALE_NONE = "model", "known_poses", "window_chain", "none"


@dataclass(frozen=True)
class DepthPipelineConfig:
    window_size: int = 1
    keyframe_every: int = 5  # a frame becomes a keyframe when this many frames passed since the last one...
    keyframe_min_translation: float = 0.0  # ...or it moved this far from it (trajectory units; 0 = off)
    keyframe_min_rotation_deg: float = 0.0  # ...or turned this much (0 = off)
    pose_method: str = ""  # "" = the model's default
    condition_on_known_poses: bool = True
    confidence_threshold: float = 0.0  # cloud points below this confidence are dropped
    cloud_stride: int = 1  # keep every n-th pixel in both directions in the cloud
    max_cloud_depth: float = 0.0  # drop cloud points farther than this (0 = no limit)


@dataclass
class DepthInput:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    stamp_ns: int
    intrinsics: np.ndarray | None = None  # K of `image` (validated by the caller)
    known_camera_to_world: np.ndarray | None = None  # optical frame in the known world frame


@dataclass
class DepthOutput:
    stamp_ns: int
    depth: np.ndarray  # (h, w) float32, published units; +inf where the model saw sky
    confidence: np.ndarray | None  # (h, w) float32
    intrinsics: np.ndarray | None  # K at the depth resolution (known, else predicted)
    points: np.ndarray  # (M, 3) float32 in the optical frame; (0, 3) when process() was asked for no cloud
    colors: np.ndarray  # (M, 3) uint8 RGB
    camera_to_world: np.ndarray | None  # estimated pose of the optical frame in the world frame
    is_metric: bool
    scale_source: str
    scale: float
    pose_method: str
    window_size: int
    view_index: int
    inference_ms: float
    keyframe: bool
    new_sequence: bool  # first frame after a reset: trajectory restarted at this frame
    timings_ms: dict[str, float] = field(default_factory=dict)


# Keyframes keep their published depth subsampled by this step, for the scale ratio of later windows.
SCALE_SAMPLE_STEP = 4


@dataclass
class _Keyframe:
    view: PreparedView
    camera_to_world: np.ndarray  # trajectory pose
    known_camera_to_world: np.ndarray | None
    depth_sample: np.ndarray  # published depth [::SCALE_SAMPLE_STEP, ::SCALE_SAMPLE_STEP]


class KeyframeWindow:
    """The sliding window's memory of a stream, shared by the single-camera pipeline (a keyframe is a frame)
    and the camera rig's (perception_fm.pipelines.depth_rig: a keyframe is a group of cameras): the last
    window_size - 1 keyframes, when the next one is due, and when the stream broke so the window no longer
    describes it. Keyframes are whatever the pipeline keeps (prepared views, poses); bounded by the deque."""

    def __init__(self, config: DepthPipelineConfig):
        self.config = config
        self._last_stamp: int | None = None
        self.clear()

    def clear(self) -> None:
        """Forget the keyframes (not the last stamp: a frame older than the one that broke the stream breaks
        it again)."""
        self.keyframes: deque = deque(maxlen=max(self.config.window_size - 1, 0))
        self._since_keyframe = 0
        self._last_pose: np.ndarray | None = None
        self._size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.keyframes)

    def went_back(self, stamp_ns: int) -> bool:
        """Whether time went back at this frame (a bag restarted, a clock jumped): the window no longer
        describes the stream. Call once per frame, before anything can fail on it."""
        back = self._last_stamp is not None and stamp_ns < self._last_stamp
        self._last_stamp = stamp_ns
        return back

    def resized(self, size: tuple[int, int]) -> bool:
        """Whether the processed size differs from the keyframes' (the camera's resolution changed)."""
        return bool(self.keyframes) and self._size != size

    def due(self, pose: np.ndarray | None) -> bool:
        """Count one frame; whether it becomes a keyframe: the first, then every keyframe_every frames, or once
        `pose` (trajectory camera_to_world) moved keyframe_min_translation or turned keyframe_min_rotation_deg
        from the last keyframe's. Never with window_size 1."""
        if self.config.window_size == 1:
            return False
        self._since_keyframe += 1
        take = self._last_pose is None or self._since_keyframe >= self.config.keyframe_every
        if not take and pose is not None:
            moved = np.linalg.norm(pose[:3, 3] - self._last_pose[:3, 3])
            relative = self._last_pose[:3, :3].T @ pose[:3, :3]
            turned = np.degrees(np.arccos(np.clip((np.trace(relative) - 1) / 2, -1.0, 1.0)))
            take = (0 < self.config.keyframe_min_translation <= moved) or (
                0 < self.config.keyframe_min_rotation_deg <= turned)
        return take

    def add(self, keyframe, pose: np.ndarray, size: tuple[int, int]) -> None:
        """Keep `keyframe` (the oldest leaves when the window is full); `pose` is what later motion is measured
        from, `size` the processed size later frames must share."""
        self.keyframes.append(keyframe)
        self._since_keyframe = 0
        self._last_pose = pose
        self._size = size


class DepthPipeline:
    def __init__(self, model: DepthModel, config: DepthPipelineConfig = DepthPipelineConfig()):
        capabilities = model.capabilities
        if config.window_size < 1:
            raise ValueError("window_size must be >= 1")
        if config.window_size > 1 and not capabilities.multi_view:
            raise ValueError(f"window_size {config.window_size} needs a multi-view model; {model.name} sees one view")
        if config.pose_method and config.pose_method not in capabilities.pose_methods:
            raise ValueError(f"{model.name} cannot estimate poses with {config.pose_method!r}; "
                             f"it offers: {', '.join(capabilities.pose_methods) or 'none'}")
        self.model = model
        self.config = config
        self.reset()

    def reset(self) -> None:
        """Forget the window and the trajectory (new sequence, time jumped back, camera changed). The next
        output has `new_sequence` set, so publishers can drop what they accumulated (e.g. a path)."""
        self._window = KeyframeWindow(self.config)
        self._restart()

    def _restart(self) -> None:
        """reset() when the stream itself broke: the window still remembers the stamp that broke it."""
        self._window.clear()
        self._scale = 1.0
        if self.model.capabilities.metric:
            self._scale_source = SCALE_MODEL
        else:  # a sliding window keeps the first window's scale; single frames have none to keep
            self._scale_source = SCALE_WINDOW_CHAIN if self.config.window_size > 1 else SCALE_NONE
        self._new_sequence = True

    @property
    def keyframes(self) -> int:
        return len(self._window)

    @property
    def _keyframes(self) -> deque[_Keyframe]:
        return self._window.keyframes

    def process(self, frame: DepthInput, cloud: bool = True) -> DepthOutput:
        """`cloud`: compute the point cloud (points, colors); a live node skips it while nobody subscribes to it
        (its colour resize and back-projection are most of the postprocessing)."""
        started = time.perf_counter()
        if self._window.went_back(frame.stamp_ns):
            self._restart()  # a bag restarted or time jumped back: the window no longer describes this stream
        view = self.model.prepare(frame.image, frame.intrinsics)
        if self._window.resized(view.size):
            self._restart()  # the camera's resolution changed
        views = [keyframe.view for keyframe in self._keyframes] + [view]
        knowns = [keyframe.known_camera_to_world for keyframe in self._keyframes] + [frame.known_camera_to_world]
        condition = (
            self.config.condition_on_known_poses
            and self.model.capabilities.known_poses
            and len(views) >= 2
            and all(known is not None for known in knowns)
            and all(v.intrinsics is not None for v in views)
        )
        # Relative models chained on keyframes need the keyframes' depth in this call for the scale ratio.
        chain_on_depth = (len(views) > 1 and not self.model.capabilities.metric
                          and all(known is None for known in knowns))
        prepared = time.perf_counter()
        prediction = self.model.predict(
            views,
            dense_views=None if chain_on_depth else [len(views) - 1],
            known_world_to_camera=invert_pose(np.stack(knowns)) if condition else None,
            pose_method=self.config.pose_method or None,
        )
        predicted = time.perf_counter()

        camera_to_world, pose_method = self._pose(prediction, knowns, frame, chain_on_depth)
        metric = prediction.is_metric or self._scale_source == SCALE_KNOWN_POSES
        depth = prediction.depth[-1]
        if not prediction.is_metric and self._scale != 1.0:
            depth = depth * np.float32(self._scale)
        if prediction.sky is not None:
            depth = np.where(prediction.sky[-1], np.float32(np.inf), depth)
        confidence = prediction.confidence[-1] if prediction.confidence is not None else None

        K = view.intrinsics
        if K is None and prediction.intrinsics is not None:
            K = prediction.intrinsics[-1]
        points, colors = self._cloud(frame.image, depth, confidence, K if cloud else None)
        keyframe = self._update_keyframes(view, camera_to_world, frame, depth)
        new_sequence, self._new_sequence = self._new_sequence, False
        done = time.perf_counter()
        return DepthOutput(
            stamp_ns=frame.stamp_ns, depth=depth.astype(np.float32, copy=False), confidence=confidence,
            intrinsics=K, points=points, colors=colors, camera_to_world=camera_to_world,
            is_metric=metric, scale_source=self._scale_source, scale=float(self._scale), pose_method=pose_method,
            window_size=len(views), view_index=len(views) - 1,
            inference_ms=(predicted - started) * 1e3, keyframe=keyframe, new_sequence=new_sequence,
            timings_ms={"prepare": (prepared - started) * 1e3, "predict": (predicted - prepared) * 1e3,
                        "postprocess": (done - predicted) * 1e3},
        )

    # -- poses --------------------------------------------------------------------------------------------

    def _pose(self, prediction, knowns, frame: DepthInput, chain_on_depth: bool) -> tuple[np.ndarray | None, str]:
        """Trajectory pose of the current frame; updates the running scale (window -> trajectory)."""
        metric_model = self.model.capabilities.metric
        if prediction.world_to_camera is None or len(knowns) == 1:
            if frame.known_camera_to_world is not None:
                return frame.known_camera_to_world, "known"
            if self.config.window_size > 1:
                # First frame of a multi-view stream: it defines the trajectory's origin and scale.
                return np.eye(4), prediction.pose_method
            return None, "none"
        window_camera_to_world = invert_pose(prediction.world_to_camera)
        known_anchors = {i: known for i, known in enumerate(knowns) if known is not None}
        if known_anchors:
            # Known poses fix the frame, and (once the camera moved) the scale.
            chained, sim3, determined = chain_window(
                window_camera_to_world, known_anchors, scale=1.0 if metric_model else None,
                fallback_scale=self._scale)
            if determined:
                self._scale, self._scale_source = float(sim3.scale), SCALE_KNOWN_POSES
        else:
            if chain_on_depth:
                self._scale = self._depth_ratio(prediction, fallback=self._scale)
            anchors = {i: keyframe.camera_to_world for i, keyframe in enumerate(self._keyframes)}
            chained, _, _ = chain_window(window_camera_to_world, anchors,
                                         scale=1.0 if metric_model else self._scale)
        return chained[-1], prediction.pose_method

    def _depth_ratio(self, prediction, fallback: float) -> float:
        """Median of (keyframe depth as published) / (its depth in this call) over the keyframes' pixels."""
        step = SCALE_SAMPLE_STEP
        published = np.concatenate([keyframe.depth_sample.ravel() for keyframe in self._keyframes])
        predicted = np.concatenate([prediction.depth[i][::step, ::step].ravel() for i in range(len(self._keyframes))])
        valid = np.isfinite(published) & np.isfinite(predicted) & (published > 0) & (predicted > 0)
        if not valid.any():
            return fallback
        return float(np.median(published[valid] / predicted[valid]))

    def _update_keyframes(self, view: PreparedView, camera_to_world, frame: DepthInput, depth: np.ndarray) -> bool:
        take = self._window.due(camera_to_world)
        if take:
            pose = camera_to_world if camera_to_world is not None else np.eye(4)
            sample = depth[::SCALE_SAMPLE_STEP, ::SCALE_SAMPLE_STEP].copy()
            self._window.add(_Keyframe(view, pose, frame.known_camera_to_world, sample), pose, view.size)
        return take

    # -- cloud --------------------------------------------------------------------------------------------

    def _cloud(self, image, depth, confidence, K):
        if K is None:
            return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
        height, width = depth.shape
        valid = np.isfinite(depth)
        if confidence is not None and self.config.confidence_threshold > 0:
            valid &= confidence >= self.config.confidence_threshold
        if self.config.max_cloud_depth > 0:
            valid &= depth <= self.config.max_cloud_depth
        points, mask = unproject_depth(depth, K, stride=self.config.cloud_stride, valid=valid)
        if image.shape[:2] != (height, width):
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        colors = select_pixels(image, mask)
        return points, colors
