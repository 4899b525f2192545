"""The ROS side of a camera rig through one concept model (concept_node's `cameras` parameter), shared by the
live node and the offline replay:

  each camera's images -> camera grouping (perception_fm.core.camera_group, the depth rig's: stamps within
  rig_tolerance, bounded rig_wait, a camera that stops is skipped, counted camera_missing_<name>)
  -> RigSegmentationHandler: one batched backbone pass for the group, each camera's own tracker
     (perception_fm.pipelines.concept_rig; track ids unique across cameras), messages out:
  per camera, in its own frame and stamp, under the camera's namespace: instances, instances/labels,
  instances/overlay (each Instance's `camera` is the camera's name); and one InstanceArray `instances` with
  every camera's instances of the group (stamp: the group's, frame_id empty: each instance names its camera).

`cameras` entries are parsed as depth_node's (perception_fm.ros.depth_rig_io.parse_cameras: a namespace, or
an image and camera_info topic pair; the concept node reads only the image topic).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from perception_fm.core.camera_group import CameraGroup, CameraGrouper
from perception_fm.errors import BadInputError
from perception_fm.msg import InstanceArray
from perception_fm.pipelines.concept_rig import ConceptRig
from perception_fm.ros import segmentation_io as io
from perception_fm.ros.depth_rig_io import RIG_PARAMS, CameraStream, parse_cameras
from perception_fm.ros.tf import ns_to_time, stamp_to_ns

_SHARED = {"cameras", "rig_tolerance", "rig_wait"}
# The rig's parameters of the concept node: depth_node's, less what only depth has (rig_frame: known poses,
# fused_voxel_size: the fused cloud)
CONCEPT_RIG_PARAMS = tuple(
    replace(param, description="Camera rig: several cameras through one concept model, one batched backbone pass "
                               "per group of frames within rig_tolerance, tracks per camera with ids unique across "
                               "cameras. Each entry is a namespace (cam0: cam0/image, outputs under cam0/) or "
                               "'image_topic,camera_info_topic' (outputs in the image topic's namespace). Empty: "
                               "the single camera on image.")
    if param.name == "cameras" else param
    for param in RIG_PARAMS if param.name in _SHARED)
CONCEPT_NODE_PARAMS = io.CONCEPT_PARAMS + CONCEPT_RIG_PARAMS


def check_rig_values(values: dict) -> list[CameraStream]:
    """The rig's cameras; ValueError for what a concept rig cannot do."""
    streams = parse_cameras(values["cameras"])
    if streams and values["use_depth"]:
        raise ValueError("parameter 'use_depth' is not supported with 'cameras' yet (instance positions need each "
                         "camera's depth paired by stamp); set use_depth:=false")
    return streams


@dataclass
class RigSegmentation:
    cameras: dict[str, io.SegmentationMessages]  # per camera of the group
    instances: InstanceArray  # every camera's instances of the group
    inference_ms: float


class RigSegmentationHandler(io.SegmentationFrameHandler):
    """A group of rig images (CameraGroup of image messages) through ConceptRig: messages per camera and the
    combined InstanceArray. Concepts as the single-camera handler's (`concepts`, one set for the rig);
    `tracker` is the ConceptRig. `on_event(name)` counts a camera's bad image (the others go on)."""

    def __init__(self, model, values: dict, streams: list[CameraStream],
                 on_event: Callable[[str], None] = lambda name: None):
        self.streams = {stream.name: stream for stream in streams}
        self._on_event = on_event
        super().__init__(model, values,
                         tracker=ConceptRig(model, [stream.name for stream in streams], io.tracker_config(values)))

    def handle_group(self, group: CameraGroup) -> RigSegmentation | None:
        """None when there is nothing to look for; raises BadInputError when no camera's image can be used."""
        concepts = self.sync_concepts()
        if not concepts and not self.tracker.tracks:
            return None
        images, headers, error = {}, {}, None
        for camera, message in group.frames.items():
            try:
                images[camera] = self.decode(message)
            except BadInputError as bad:  # this camera sits out the group; the others go on
                self._on_event(f"camera_bad_{bad.reason}_{camera}")
                error = bad
                continue
            headers[camera] = message.header
        if not images:
            raise error
        output = self.tracker.step(images, concepts)
        for camera in images:  # prompts apply to these images; a click names its camera by their frame
            self.tracker.note_frame(camera, headers[camera].frame_id)
        per_camera = {}
        for camera, frame in output.frames.items():
            masks = self._full_resolution(frame, images[camera].shape[:2])
            messages = self._messages(headers[camera], images[camera], frame, masks, concepts, None,
                                      output.inference_ms)
            for instance in messages.instances.instances:
                instance.camera = camera
            per_camera[camera] = messages
        sizes = {images[camera].shape[:2] for camera in per_camera}
        height, width = sizes.pop() if len(sizes) == 1 else (0, 0)  # masks are each camera's own size
        first = next(iter(per_camera.values())).instances
        combined = InstanceArray(
            header=Header(stamp=ns_to_time(min(stamp_to_ns(h.stamp) for h in headers.values())), frame_id=""),
            height=height, width=width, concepts=list(first.concepts), prompt_ids=list(first.prompt_ids),
            instances=[instance for messages in per_camera.values() for instance in messages.instances.instances],
            depth_is_metric=False, model=first.model, weights=first.weights, inference_ms=float(output.inference_ms))
        self.last_size = None  # each camera's tracker checks prompts against its own last image (ConceptRig.prompt)
        return RigSegmentation(per_camera, combined, output.inference_ms)


def rig_image_topic(stream: CameraStream, values: dict) -> str:
    return f"{stream.image_topic}/compressed" if values["image_transport"] == "compressed" else stream.image_topic


class LiveConceptRig:
    """The rig inside concept_node: per camera an image subscription feeding one CameraGrouper, whose groups
    go to the node's worker (node.submit); per-camera publishers and the combined `instances`."""

    def __init__(self, node, input_qos, output_qos):
        from rclpy.clock import Clock, ClockType

        from perception_fm.ros.pairing import POLL_PERIOD_S, live_clock

        self.node = node
        self.streams = check_rig_values(node.values)
        self.grouper = CameraGrouper([stream.name for stream in self.streams], live_clock,
                                     tolerance_s=node.values["rig_tolerance"], wait_s=node.values["rig_wait"],
                                     on_event=node.stats.event, on_drop=self._drop)
        message_type = CompressedImage if node.values["image_transport"] == "compressed" else Image
        for stream in self.streams:
            node.create_subscription(message_type, rig_image_topic(stream, node.values), self._deliver(stream.name),
                                     input_qos)
        node.create_timer(POLL_PERIOD_S, self._poll, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.outputs = {stream.name: {
            "instances": node.create_publisher(InstanceArray, stream.output(io.TOPIC_INSTANCES), output_qos),
            "labels": node.create_publisher(Image, stream.output(io.TOPIC_LABELS), output_qos),
            "overlay": node.create_publisher(Image, stream.output(io.TOPIC_OVERLAY), output_qos),
        } for stream in self.streams}
        self.combined = node.create_publisher(InstanceArray, io.TOPIC_INSTANCES, output_qos)

    def _deliver(self, camera: str):
        def deliver(message) -> None:
            self._submit(self.grouper.add(camera, stamp_to_ns(message.header.stamp), message))
        return deliver

    def _poll(self) -> None:
        self._submit(self.grouper.poll())

    def _submit(self, groups) -> None:
        for group in groups:
            self.node.submit(group)

    def _drop(self, reason: str) -> None:
        """A frame lost before it reached the worker (grouper bounds, late frames): counted."""
        self.node.stats.receive()
        self.node.stats.drop(reason)

    # -- worker thread ------------------------------------------------------------------------------------

    def handler(self, model) -> RigSegmentationHandler:
        values = self.node.values
        self.grouper.set_timing(values["rig_tolerance"], values["rig_wait"])
        return RigSegmentationHandler(model, values, self.streams, on_event=self.node.stats.event)

    def process(self, handler: RigSegmentationHandler, group: CameraGroup) -> float | None:
        result = handler.handle_group(group)
        if result is None:
            return None
        for camera, messages in result.cameras.items():
            outputs = self.outputs[camera]
            outputs["instances"].publish(messages.instances)
            if messages.labels is not None:
                outputs["labels"].publish(messages.labels)
            if messages.overlay is not None:
                outputs["overlay"].publish(messages.overlay)
        self.combined.publish(result.instances)
        return result.inference_ms
