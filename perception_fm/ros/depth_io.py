"""The ROS side of the depth task, shared by the depth node and the offline replay: parameters → pipeline,
input messages → stamp pairing → pipeline → output messages. The node adds subscriptions, the latest-frame
slot and publishers; the replay reads and writes bags. Neither decodes, encodes or pairs anything itself:
both feed `depth_pairer` (images wait for the camera_info of their stamp) and hand what it releases to
`DepthFrameHandler.handle`."""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import TransformStamped
from nav_msgs.msg import Path
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header

from perception_fm.core.stamp_pairing import PairedInput, StampPairer
from perception_fm.msg import DepthInfo
from perception_fm.nodes.params import IMAGE_PARAMS, Param
from perception_fm.pipelines.depth_pipeline import DepthInput, DepthOutput, DepthPipeline, DepthPipelineConfig
from perception_fm.ros.camera_info import camera_info_to_intrinsics, check_image_size, make_camera_info
from perception_fm.ros.cloud_codec import xyzrgb_to_pointcloud2
from perception_fm.ros.image_codec import compressed_to_rgb8, image_to_rgb8, numpy_to_image
from perception_fm.ros.pairing import live_clock
from perception_fm.ros.qos import PROFILES
from perception_fm.ros.tf import make_pose_stamped, make_transform, stamp_to_ns

def _parse_onnx_views(views) -> None:
    """onnx_views checked with the ONNX backend's own parser (imported only when a value is checked)."""
    from perception_fm.plugins.da3_onnx import parse_views

    parse_views(views)


# Parameters of the depth node (besides perception_fm.nodes.params.MODEL_PARAMS); the replay reads the same.
DEPTH_PARAMS = (
    # model-specific (a change reloads the model)
    Param("process_res", 504, "Longest image side the model works at (rounded to multiples of 14).", min=14, max=4096),
    Param("pose_method", "camera_head", "Pose estimation: camera_head (fast) or ray (ray map + DLT/RQ solve).",
          choices=("camera_head", "ray")),
    Param("resize", "upstream", "Resampling to the processed size: upstream (uint8 cv2 area/cubic on the host, the "
                                "pixels DA3 was trained on) or fast (one float bilinear resize on the device).",
          choices=("upstream", "fast")),
    Param("ref_view_strategy", "saddle_balanced", "DA3's reference view in windows of 3+ views (upstream's choices "
                                                  "and default); poses are published in the same world frame "
                                                  "whatever the choice.",
          choices=("saddle_balanced", "saddle_sim_range", "first", "middle")),
    Param("compile", "off", "torch.compile of the PyTorch DA3 network (off keeps upstream's eager network; the "
                            "first frames then wait for compilation).",
          choices=("off", "default", "reduce-overhead", "max-autotune")),
    # the ONNX backend (da3-*-onnx models); ignored by the others
    Param("onnx_views", "auto", "View counts the ONNX graphs serve: auto (a graph per segment 1, 2, 3-8, ... "
                                "exported on first use), N (exactly N) or A-B (a range).",
          validate=_parse_onnx_views),
    Param("onnx_providers", "", "ONNX Runtime execution providers, comma-separated; empty: "
                                "$PERCEPTION_FM_ONNX_PROVIDERS, else auto (TensorRT, CUDA, CPU: those present)."),
    Param("onnx_cache_dir", "", "Export cache directory; empty: $PERCEPTION_FM_ONNX_CACHE, else "
                                "~/.cache/perception_fm/da3_onnx."),
    # pipeline
    Param("window_size", 1, "Views per model call: 1 = each frame alone; N > 1 = the last N-1 keyframes plus the "
                            "current frame (multi-view models), poses chained into one trajectory.", min=1, max=64),
    Param("keyframe_every", 5, "A frame becomes a keyframe when this many frames passed since the last one.", min=1),
    Param("keyframe_min_translation", 0.0, "...or when it moved this far from the last keyframe (0 = off).", min=0.0),
    Param("keyframe_min_rotation_deg", 0.0, "...or when it turned this many degrees (0 = off).", min=0.0),
    Param("condition_on_known_poses", True, "Feed known poses (known_pose_frame) to models that accept them."),
    Param("confidence_threshold", 0.0, "Cloud points with a lower confidence are dropped (0 = keep all).", min=0.0),
    Param("cloud_stride", 1, "Keep every n-th pixel (both directions) in the point cloud.", min=1, max=64),
    Param("max_cloud_depth", 0.0, "Drop cloud points beyond this depth (0 = no limit).", min=0.0),
    Param("max_path_length", 1000, "Poses kept in camera_path.", min=1),
    # frames
    Param("world_frame", "da3_world", "Parent frame of the estimated camera pose. With known poses, set it to "
                                      "known_pose_frame so that estimates live in that frame."),
    Param("estimated_frame", "da3_camera", "Child frame published for the estimated camera (optical) pose."),
    Param("attach_image_frame", False, "Also publish estimated_frame -> <image frame_id> (identity), so clouds "
                                       "show under world_frame when nothing else places the camera (camera-only "
                                       "streams). Leave false on robots with their own TF tree.", read_only=True),
    Param("anchor_frame", "", "Place world_frame in this TF frame (e.g. odom): at the start of each sequence, a "
                              "static transform anchor_frame -> world_frame puts the trajectory's origin at the "
                              "camera's pose there, so estimates show beside the robot's own frames. Empty: "
                              "world_frame is a root."),
    Param("known_pose_frame", "", "Frame in which the camera's pose is known from TF (e.g. odom); empty = none."),
    Param("camera_info_wait", 0.05, "Seconds an image waits for the camera_info of its own stamp (in any arrival "
                                    "order); then the newest camera_info is used (counted as "
                                    "camera_info_latest_used).", min=0.0, max=60.0),
    Param("known_pose_timeout", 0.05, "Seconds to wait for TF at the image stamp before going on without it.",
          min=0.0, max=5.0),
    # transport
    Param("image_transport", "raw", "raw: sensor_msgs/Image on `image`; compressed: CompressedImage on "
                                    "`image/compressed`.", choices=("raw", "compressed"), read_only=True),
    Param("input_qos", "sensor_data", "QoS of the image/camera_info subscriptions.", choices=PROFILES, read_only=True),
    Param("output_qos", "reliable", "QoS of the published topics.", choices=PROFILES, read_only=True),
    Param("publish_confidence", True, "Publish depth/confidence when the model predicts it."),
    Param("publish_points", True, "Publish the point cloud."),
    Param("publish_stage_times", False, "Publish each frame's milliseconds per stage (receive, pairing, queue, "
                                        "decode, prepare, predict, postprocess, encode, publish) on ~/stage_times "
                                        "(diagnostic_msgs/DiagnosticArray stamped like the image); what "
                                        "`perception-fm bench node` reads."),
    *IMAGE_PARAMS,
)
# passed to the model: a change reloads it
MODEL_EXTRA_PARAMS = ("process_res", "pose_method", "resize", "ref_view_strategy", "compile", "onnx_views",
                      "onnx_providers", "onnx_cache_dir")

# Topic names relative to the node's namespace (remap them in launch files / config).
TOPIC_DEPTH = "depth/image"
TOPIC_CONFIDENCE = "depth/confidence"
TOPIC_DEPTH_INFO = "depth/info"
TOPIC_DEPTH_CAMERA_INFO = "depth/camera_info"
TOPIC_POINTS = "points"
TOPIC_PATH = "camera_path"


# Stamp pairing: the inputs an image waits for (names used by the node's and the replay's routing).
CAMERA_INFO = "camera_info"


def decode_frame(message, camera_info: CameraInfo | None, max_pixels: int) -> tuple[np.ndarray, np.ndarray | None]:
    """An Image or CompressedImage as RGB8 and its camera_info's K (None without one); BadInputError for what
    cannot be used (the caller counts the drop). One camera's frame and each camera of a rig decode alike."""
    rgb = compressed_to_rgb8(message, max_pixels) if isinstance(message, CompressedImage) \
        else image_to_rgb8(message, max_pixels)
    intrinsics = None
    if camera_info is not None:
        camera = camera_info_to_intrinsics(camera_info)
        check_image_size(camera, rgb.shape[:2])
        intrinsics = camera.K
    return rgb, intrinsics


def depth_pairer(values: dict, clock: Callable[[], int], *, on_event: Callable[[str], None],
                 on_drop: Callable[[str], None], max_pending: int = 32) -> StampPairer:
    """Images (frames) paired with the camera_info of their stamp; a missing one is replaced by the newest
    (intrinsics rarely change), counted as camera_info_latest_used, or counted as no_camera_info."""
    return StampPairer([PairedInput(CAMERA_INFO, wait_s=values["camera_info_wait"], latest_fallback=True,
                                    capacity=32)],
                       clock, max_pending=max_pending, on_event=on_event, on_drop=on_drop)


def update_waits(pairer: StampPairer, values: dict) -> None:
    """Parameters changed at runtime."""
    pairer.set_wait(CAMERA_INFO, values["camera_info_wait"])


@dataclass(frozen=True)
class DepthFrames:
    world_frame: str  # parent of the estimated camera frame (REP 105: e.g. odom when known poses come from it)
    estimated_frame: str  # the estimated camera (optical) frame; never the camera's own frame
    attach_image_frame: bool  # also publish estimated_frame -> image frame (identity) for camera-only streams


@dataclass
class DepthMessages:
    depth: Image
    info: DepthInfo
    camera_info: CameraInfo | None
    confidence: Image | None
    points: PointCloud2 | None
    transform: TransformStamped | None
    path: Path | None
    static_transforms: list[TransformStamped] = field(default_factory=list)  # anchor / attach, when they change


class PathBuilder:
    """nav_msgs/Path of the estimated trajectory, the last `max_poses` poses; each pose is converted once."""

    def __init__(self, max_poses: int):
        self._poses: deque = deque(maxlen=max(1, max_poses))

    def clear(self) -> None:
        self._poses.clear()

    def add(self, camera_to_world: np.ndarray, frame_id: str, stamp) -> Path:
        self._poses.append(make_pose_stamped(camera_to_world, frame_id, stamp))
        path = Path()
        path.header.stamp = stamp
        path.header.frame_id = frame_id
        path.poses = list(self._poses)
        return path


def depth_messages(output: DepthOutput, header: Header, frames: DepthFrames, *, model: str, weights: str,
                   path_builder: PathBuilder | None = None, cloud: bool = True) -> DepthMessages:
    """All messages for one frame, stamped with the input image's header (stamp and optical frame_id); without
    `cloud`, no points."""
    height, width = output.depth.shape
    info = DepthInfo(
        header=header, model=model, weights=weights, is_metric=output.is_metric, scale_source=output.scale_source,
        scale=float(output.scale), pose_method=output.pose_method, window_size=output.window_size,
        view_index=output.view_index, inference_ms=float(output.inference_ms),
    )
    camera_info = make_camera_info(output.intrinsics, width, height, header) if output.intrinsics is not None else None
    points = None
    if output.intrinsics is not None and cloud:
        points = xyzrgb_to_pointcloud2(output.points, output.colors, header)
    transform = path = None
    if output.camera_to_world is not None:
        transform = make_transform(output.camera_to_world, frames.world_frame, frames.estimated_frame, header.stamp)
        if path_builder is not None:
            path = path_builder.add(output.camera_to_world, frames.world_frame, header.stamp)
    return DepthMessages(
        depth=numpy_to_image(output.depth, "32FC1", header),
        info=info,
        camera_info=camera_info,
        confidence=numpy_to_image(output.confidence, "32FC1", header) if output.confidence is not None else None,
        points=points,
        transform=transform,
        path=path,
    )


# The stages of one frame in a live node, in order; `predict` is the model's own time.
STAGES = ("receive", "pairing", "queue", "decode", "prepare", "predict", "postprocess", "encode", "publish")


def stage_times_message(paired, output: DepthOutput, taken_ns: int, encoded_ns: int, published_ns: int,
                        now: tuple[int, int] | None = None) -> DiagnosticArray:
    """One frame's milliseconds per stage (STAGES) as a DiagnosticArray stamped with the image's header.
    `paired` is the pairer's release (arrived_ns, released_ns on the live_clock); `taken_ns` (the worker took
    it), `encoded_ns` (messages built), `published_ns` (all published) are live_clock too. receive = the image's
    stamp to its callback: transport plus the executor's delay when the publisher stamps at publish time (a
    camera stamps at exposure, so there it includes the driver's latency too). `now`: (live_clock, wall clock)
    in ns read together (default: now), to place the arrival on the stamps' clock."""
    now_live, now_wall = (live_clock(), time.time_ns()) if now is None else now
    arrived_wall = now_wall - (now_live - paired.arrived_ns)
    header = paired.frame.header
    ms = {
        "receive": (arrived_wall - stamp_to_ns(header.stamp)) / 1e6,
        "pairing": (paired.released_ns - paired.arrived_ns) / 1e6,
        "queue": (taken_ns - paired.released_ns) / 1e6,
        **{name: output.timings_ms.get(name, 0.0) for name in ("decode", "prepare", "predict", "postprocess",
                                                                "encode")},
        "publish": (published_ns - encoded_ns) / 1e6,
    }
    message = DiagnosticArray()
    message.header = header
    message.status = [DiagnosticStatus(name="stage_ms", values=[KeyValue(key=name, value=f"{ms[name]:.4f}")
                                                                 for name in STAGES])]
    return message


def attach_transform(frames: DepthFrames, image_frame: str, stamp) -> TransformStamped:
    """Identity estimated_frame → image frame: makes clouds/depth in the image's optical frame displayable
    under world_frame when nothing else gives the image frame a parent (camera-only streams and bags)."""
    return make_transform(np.eye(4), frames.estimated_frame, image_frame, stamp)


# tf_lookup(target_frame, source_frame, stamp_ns, wait) -> T_target_source or None. `wait`: the caller
# needs this transform now and may wait briefly for TF to arrive (live nodes); replays never wait.
TfLookup = Callable[[str, str, int, bool], "np.ndarray | None"]


class DepthFrameHandler:
    """One camera stream through the depth pipeline: Image/CompressedImage (+ CameraInfo, + TF) in,
    DepthMessages out. `on_event(name)` counts things that lose no frame (e.g. a missing known pose)."""

    def __init__(self, model, values: dict, tf_lookup: TfLookup | None = None,
                 on_event: Callable[[str], None] = lambda name: None):
        self.model = model
        self.values = values
        self.pipeline = DepthPipeline(model, pipeline_config(values, model))
        self.frames = DepthFrames(values["world_frame"], values["estimated_frame"], values["attach_image_frame"])
        self.path_builder = PathBuilder(values["max_path_length"])
        self._tf_lookup = tf_lookup
        self._on_event = on_event
        self._attached: set[str] = set()
        self._anchored = False

    def handle(self, message, camera_info: CameraInfo | None, cloud: bool = True) -> tuple[DepthOutput, DepthMessages]:
        """Raises BadInputError for messages that cannot be processed (the caller counts the drop). Without
        `cloud`, the point cloud is neither computed nor built (messages.points is None)."""
        started = time.perf_counter()
        header = message.header
        rgb, intrinsics = decode_frame(message, camera_info, self.values["max_image_pixels"])
        stamp_ns = stamp_to_ns(header.stamp)
        known = self._lookup(self.values["known_pose_frame"], header.frame_id, stamp_ns, wait=True)
        if self.values["known_pose_frame"] and known is None:
            self._on_event("no_known_pose")
        decoded = time.perf_counter()
        output = self.pipeline.process(DepthInput(rgb, stamp_ns, intrinsics, known), cloud=cloud)
        processed = time.perf_counter()
        if output.new_sequence:
            self.path_builder.clear()
            self._anchored = False
        messages = depth_messages(output, header, self.frames, model=self.model.name, weights=self.model.weights,
                                  path_builder=self.path_builder, cloud=cloud)
        messages.static_transforms = self._static_transforms(output, header)
        # decode includes the camera_info check and the known-pose lookup (which may wait for TF)
        output.timings_ms.update(decode=(decoded - started) * 1e3, encode=(time.perf_counter() - processed) * 1e3)
        return output, messages

    def _lookup(self, target: str, source: str, stamp_ns: int, wait: bool):
        if not target or self._tf_lookup is None:
            return None
        return self._tf_lookup(target, source, stamp_ns, wait)

    def _static_transforms(self, output: DepthOutput, header) -> list[TransformStamped]:
        transforms = []
        anchor = self.values["anchor_frame"]
        if anchor and not self._anchored and output.camera_to_world is not None:
            camera_in_anchor = self._lookup(anchor, header.frame_id, output.stamp_ns, wait=False)
            if camera_in_anchor is not None:
                # anchor_T_world = anchor_T_camera * (world_T_camera)^-1; at a sequence's first frame
                # world_T_camera is the identity, so the origin sits exactly at the camera.
                world_in_anchor = camera_in_anchor @ np.linalg.inv(output.camera_to_world)
                transforms.append(make_transform(world_in_anchor, anchor, self.frames.world_frame, header.stamp))
                self._anchored = True
            else:
                self._on_event("no_anchor_pose")
        image_frame = header.frame_id
        if self.frames.attach_image_frame and image_frame and image_frame not in self._attached:
            self._attached.add(image_frame)
            transforms.append(attach_transform(self.frames, image_frame, header.stamp))
        return transforms


def pipeline_config(values: dict, model) -> DepthPipelineConfig:
    """DepthPipelineConfig from depth node parameter values."""
    return DepthPipelineConfig(
        window_size=values["window_size"], keyframe_every=values["keyframe_every"],
        keyframe_min_translation=values["keyframe_min_translation"],
        keyframe_min_rotation_deg=values["keyframe_min_rotation_deg"],
        pose_method=values["pose_method"] if model.capabilities.pose_methods else "",
        condition_on_known_poses=values["condition_on_known_poses"],
        confidence_threshold=values["confidence_threshold"], cloud_stride=values["cloud_stride"],
        max_cloud_depth=values["max_cloud_depth"],
    )
