"""The ROS side of a camera rig through one depth model (depth_node's `cameras` parameter), shared by the
live node and the offline replay:

  each camera: image + camera_info of its stamp (stamp pairing, as for one camera: depth_io.depth_pairer)
  -> camera grouping (perception_fm.core.camera_group: stamps within rig_tolerance, bounded rig_wait, a camera
     that stops is skipped, counted camera_missing_<name> / camera_stalled_<name>)
  -> RigFrameHandler: TF rig_frame <- each camera's frame at the group's stamp (known poses), one multi-view
     call (perception_fm.pipelines.depth_rig), messages out:
  per camera, in the camera's own frame and stamp, under the camera's namespace: depth/image,
  depth/confidence, depth/info, depth/camera_info, points; and one fused XYZRGB cloud `points_fused` in
  rig_frame (fused_voxel_size down-samples it for RViz).
  With known_pose_frame (e.g. odom) the rig frame's pose there (TF at the group's stamp) places every camera in
  that frame, which is what a sliding window over past groups (window_size > 1: keyframe groups) needs.

A camera entry of `cameras` is a namespace (`cam0`: subscribes cam0/image and cam0/camera_info, publishes
under cam0/) or an image and camera_info topic pair separated by a comma (`/cam0/color/image_raw,
/cam0/color/camera_info`: publishes in the image topic's namespace, /cam0/color/). The camera's name (in
counters and in instances) is that namespace without its leading slash.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header

from perception_fm.core.camera_group import CameraGroup, CameraGrouper
from perception_fm.errors import BadInputError
from perception_fm.msg import DepthInfo
from perception_fm.nodes.params import Param
from perception_fm.pipelines.depth_pipeline import DepthOutput
from perception_fm.pipelines.depth_rig import DepthRigPipeline, RigOutput, RigView
from perception_fm.ros import depth_io
from perception_fm.ros.cloud_codec import xyzrgb_to_pointcloud2
from perception_fm.ros.tf import stamp_to_ns

TOPIC_POINTS_FUSED = "points_fused"


@dataclass(frozen=True)
class CameraStream:
    name: str  # in counters, logs and instances
    image_topic: str
    camera_info_topic: str
    namespace: str  # where its outputs go ("" never for a rig of 2+: validated)

    def output(self, topic: str) -> str:
        return f"{self.namespace}/{topic}" if self.namespace else topic


def parse_camera(entry: str) -> CameraStream:
    """One `cameras` entry: a namespace, or `image_topic,camera_info_topic`. ValueError naming what is wrong."""
    text = entry.strip()
    if not text:
        raise ValueError("parameter 'cameras': an entry is empty")
    if "," in text:
        parts = [part.strip() for part in text.split(",")]
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"parameter 'cameras': {entry!r} must be a namespace or 'image_topic,camera_info_topic'")
        image, info = parts
        namespace = image.rstrip("/").rpartition("/")[0]
    else:
        namespace = text.rstrip("/")
        image, info = f"{namespace}/image", f"{namespace}/camera_info"
    if any(char.isspace() for char in image + info):
        raise ValueError(f"parameter 'cameras': {entry!r} contains white space inside a topic name")
    name = namespace.strip("/") or image.strip("/")
    return CameraStream(name, image, info, namespace)


def parse_cameras(entries) -> list[CameraStream]:
    streams = [parse_camera(entry) for entry in entries]
    names = [stream.name for stream in streams]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"parameter 'cameras': two cameras share the name/namespace {duplicates[0]!r}; each "
                         "camera's outputs need a namespace of their own")
    if len(streams) > 1 and any(not stream.namespace for stream in streams):
        raise ValueError("parameter 'cameras': with several cameras every image topic needs a namespace "
                         "(their outputs would collide)")
    return streams


def _validate_cameras(value: tuple) -> None:
    parse_cameras(value)


RIG_PARAMS = (
    Param("cameras", (), "Camera rig: several cameras through one model, one multi-view call per group of "
                         "frames within rig_tolerance. Each entry is a namespace (cam0: cam0/image + "
                         "cam0/camera_info, outputs under cam0/) or 'image_topic,camera_info_topic' (outputs in "
                         "the image topic's namespace). Empty: the single camera on image/camera_info.",
          read_only=True, validate=_validate_cameras),
    Param("rig_frame", "", "Common frame of the rig (e.g. base_link): each camera's pose in it, from TF at the "
                           "group's stamp, is fed to the model as a known pose (with its intrinsics), and the "
                           "fused cloud points_fused is published in it. Empty: no known poses, no fused cloud."),
    Param("rig_tolerance", 0.01, "Frames of the rig's cameras whose stamps are this close (s) form one group.",
          min=0.0, max=1.0),
    Param("rig_wait", 0.1, "Seconds a group waits for its missing cameras; then it goes on without them "
                           "(counted camera_missing_<camera>), and a camera that missed a group is not waited for "
                           "until its next frame.", min=0.0, max=60.0),
    Param("fused_voxel_size", 0.0, "Voxel size (m) of the fused cloud's down-sampling (one mean point per voxel; "
                                   "0 = every point).", min=0.0),
)

# the depth node's whole table (besides MODEL_PARAMS): one camera's parameters and the rig's
DEPTH_NODE_PARAMS = depth_io.DEPTH_PARAMS + RIG_PARAMS


def check_rig_values(values: dict) -> None:
    """The depth node's values taken together (graph configs: `up --dry-run` refuses what configure would):
    a rig's window keeps past groups, which needs the rig's pose over time (DepthRigPipeline refuses it too)."""
    if values["cameras"] and values["window_size"] > 1 and not (values["known_pose_frame"] and values["rig_frame"]):
        raise ValueError(f"a camera rig with window_size {values['window_size']} needs known_pose_frame (e.g. "
                         "odom) and rig_frame: past groups are placed by the rig's pose over time; or use "
                         "window_size 1")


class RigFrameHandler:
    """A group of rig frames (CameraGroup of stamp-paired image + camera_info) through the rig pipeline:
    messages per camera and the fused cloud. `tf_lookup(target, source, stamp_ns, wait)` as in depth_io;
    `on_event(name)` counts what loses no group (a camera without its pose, a camera's bad image)."""

    def __init__(self, model, values: dict, streams: list[CameraStream], tf_lookup=None,
                 on_event: Callable[[str], None] = lambda name: None):
        self.model = model
        self.values = values
        self.streams = {stream.name: stream for stream in streams}
        self.pipeline = DepthRigPipeline(model, depth_io.pipeline_config(values, model),
                                         voxel_size=values["fused_voxel_size"],
                                         known_world=bool(values["known_pose_frame"] and values["rig_frame"]))
        self.frames = depth_io.DepthFrames(values["world_frame"], values["estimated_frame"], False)
        self._tf_lookup = tf_lookup
        self._on_event = on_event

    def handle(self, group: CameraGroup) -> tuple[RigOutput, dict[str, depth_io.DepthMessages], PointCloud2 | None]:
        """Raises BadInputError when no camera of the group can be used (the caller counts the drop)."""
        rig_frame = self.values["rig_frame"]
        views, headers, error = [], {}, None
        for camera, paired in group.frames.items():
            message = paired.frame
            try:
                rgb, intrinsics = self._decode(message, paired.inputs.get(depth_io.CAMERA_INFO))
            except BadInputError as bad:  # this camera sits out the group; the others go on
                self._on_event(f"camera_bad_{bad.reason}_{camera}")
                error = bad
                continue
            pose = None
            if rig_frame and self._tf_lookup is not None:
                pose = self._tf_lookup(rig_frame, message.header.frame_id, group.stamp_ns, True)
                if pose is None:
                    self._on_event(f"no_rig_pose_{camera}")
            views.append(RigView(camera, rgb, stamp_to_ns(message.header.stamp), intrinsics, pose))
            headers[camera] = message.header
        if not views:
            raise error
        rig_to_world = None
        known_frame = self.values["known_pose_frame"]
        if known_frame and rig_frame and self._tf_lookup is not None:
            rig_to_world = self._tf_lookup(known_frame, rig_frame, group.stamp_ns, True)
            if rig_to_world is None:  # the group runs alone in the rig frame; no keyframe
                self._on_event("no_known_pose")
        output = self.pipeline.process(views, rig_to_world)
        messages = {}
        for index, camera_output in enumerate(output.cameras):
            single = DepthOutput(
                stamp_ns=camera_output.stamp_ns, depth=camera_output.depth, confidence=camera_output.confidence,
                intrinsics=camera_output.intrinsics, points=camera_output.points, colors=camera_output.colors,
                camera_to_world=None, is_metric=output.is_metric, scale_source=output.scale_source,
                scale=output.scale, pose_method=self.pipeline.config.pose_method or "none",
                window_size=output.views_in_call,  # the group's cameras are the call's last views
                view_index=output.views_in_call - len(output.cameras) + index, inference_ms=output.inference_ms,
                keyframe=output.keyframe, new_sequence=output.new_sequence)
            messages[camera_output.camera] = depth_io.depth_messages(
                single, headers[camera_output.camera], self.frames, model=self.model.name, weights=self.model.weights)
        fused = None
        if rig_frame and any(c.camera_to_rig is not None for c in output.cameras):
            header = Header(stamp=min(headers.values(), key=lambda h: stamp_to_ns(h.stamp)).stamp, frame_id=rig_frame)
            fused = xyzrgb_to_pointcloud2(output.fused_points, output.fused_colors, header)
        return output, messages, fused

    def _decode(self, message, camera_info):
        return depth_io.decode_frame(message, camera_info, self.values["max_image_pixels"])


class LiveRig:
    """The rig inside depth_node: per camera a stamp pairer (image + camera_info) feeding one CameraGrouper,
    whose groups go to the node's worker (node.submit); per-camera publishers and the fused cloud's."""

    def __init__(self, node, input_qos, output_qos):
        from rclpy.clock import Clock, ClockType

        from perception_fm.ros.pairing import POLL_PERIOD_S, LivePairing, live_clock

        self.node = node
        self.streams = parse_cameras(node.values["cameras"])
        self.grouper = CameraGrouper([stream.name for stream in self.streams], live_clock,
                                     tolerance_s=node.values["rig_tolerance"], wait_s=node.values["rig_wait"],
                                     on_event=node.stats.event, on_drop=self._drop)
        self.pairings = {}
        for stream in self.streams:
            pairer = depth_io.depth_pairer(node.values, live_clock, on_event=node.stats.event, on_drop=self._drop)
            pairing = LivePairing(node, pairer, self._deliver(stream.name))
            if node.values["image_transport"] == "compressed":
                node.create_subscription(CompressedImage, f"{stream.image_topic}/compressed", pairing.frame,
                                         input_qos)
            else:
                node.create_subscription(Image, stream.image_topic, pairing.frame, input_qos)
            pairing.subscribe(depth_io.CAMERA_INFO, CameraInfo, stream.camera_info_topic, input_qos)
            self.pairings[stream.name] = pairing
        node.create_timer(POLL_PERIOD_S, self._poll, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.outputs = {stream.name: {
            "depth": node.create_publisher(Image, stream.output(depth_io.TOPIC_DEPTH), output_qos),
            "confidence": node.create_publisher(Image, stream.output(depth_io.TOPIC_CONFIDENCE), output_qos),
            "info": node.create_publisher(DepthInfo, stream.output(depth_io.TOPIC_DEPTH_INFO), output_qos),
            "camera_info": node.create_publisher(CameraInfo, stream.output(depth_io.TOPIC_DEPTH_CAMERA_INFO),
                                                 output_qos),
            "points": node.create_publisher(PointCloud2, stream.output(depth_io.TOPIC_POINTS), output_qos),
        } for stream in self.streams}
        self.fused = node.create_publisher(PointCloud2, TOPIC_POINTS_FUSED, output_qos)
        self.handler: RigFrameHandler | None = None

    def _deliver(self, camera: str):
        def deliver(paired) -> None:
            self._submit(self.grouper.add(camera, paired.stamp_ns, paired))
        return deliver

    def _poll(self) -> None:
        self._submit(self.grouper.poll())

    def _submit(self, groups) -> None:
        for group in groups:
            self.node.submit(group)

    def _drop(self, reason: str) -> None:
        """A frame lost before it reached the worker (pairer or grouper bounds, late frames): counted."""
        self.node.stats.receive()
        self.node.stats.drop(reason)

    # -- worker thread ------------------------------------------------------------------------------------

    def reconfigure(self, model, tf_lookup) -> None:
        values = self.node.values
        self.handler = RigFrameHandler(model, values, self.streams, tf_lookup=tf_lookup, on_event=self.node.stats.event)
        self.grouper.set_timing(values["rig_tolerance"], values["rig_wait"])
        for pairing in self.pairings.values():
            depth_io.update_waits(pairing.pairer, values)

    def process(self, group: CameraGroup) -> float:
        output, messages, fused = self.handler.handle(group)
        values = self.node.values
        for camera, camera_messages in messages.items():
            outputs = self.outputs[camera]
            outputs["depth"].publish(camera_messages.depth)
            outputs["info"].publish(camera_messages.info)
            if camera_messages.camera_info is not None:
                outputs["camera_info"].publish(camera_messages.camera_info)
            if camera_messages.confidence is not None and values["publish_confidence"]:
                outputs["confidence"].publish(camera_messages.confidence)
            if camera_messages.points is not None and values["publish_points"]:
                outputs["points"].publish(camera_messages.points)
        if fused is not None and values["publish_points"]:
            self.fused.publish(fused)
        return output.inference_ms

