"""concept_node: every instance of typed or spoken concepts, segmented and tracked with stable ids.

Subscribes (relative names; remap them):
  image (sensor_msgs/Image) or image/compressed (image_transport:=compressed)
  concepts (std_msgs/String): "red mug, chair" adds, "-chair" removes, "=a, b" replaces ("=" clears)
  prompt_point (geometry_msgs/PointStamped): a click in image pixels (rqt_image_view's mouse topic) starts
    a new tracked object there
  depth/image, depth/camera_info, depth/info (use_depth:=true; e.g. depth_node's outputs): 3D positions
Publishes, stamped with the input image's header:
  instances (perception_fm/InstanceArray): id, concept, scores, state, box, RLE mask, 3D position
  instances/labels (mono16 or 32SC1 id per pixel), instances/overlay (rgb8), instances/markers (MarkerArray)
Services: ~/set_concepts (perception_fm/SetConcepts), ~/prompt_object (perception_fm/PromptObject)
No concept and no track: the model does not run (frames counted as skipped).
"""
from __future__ import annotations

import numpy as np
from geometry_msgs.msg import PointStamped
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from perception_fm.core.stamped_cache import StampedCache
from perception_fm.errors import BadInputError
from perception_fm.graph import NODE_TYPES
from perception_fm.hookspecs import Task
from perception_fm.msg import DepthInfo, InstanceArray
from perception_fm.nodes.node_base import ModelNode, run_node
from perception_fm.pipelines.concepts import parse_concepts_message
from perception_fm.ros import segmentation_io as io
from perception_fm.ros.qos import qos_profile
from perception_fm.ros.tf import stamp_to_ns
from perception_fm.srv import PromptObject, SetConcepts

COMMANDS_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)  # never lose a command


class ConceptNode(ModelNode):
    task = Task.SEGMENTATION
    default_model = NODE_TYPES["concept_node"].default_model
    params = io.CONCEPT_PARAMS
    model_extra_params = io.MODEL_EXTRA_PARAMS

    def __init__(self, **kwargs):
        super().__init__("concept_node", **kwargs)
        input_qos = qos_profile(self.values["input_qos"])
        output_qos = qos_profile(self.values["output_qos"])
        if self.values["image_transport"] == "compressed":
            self.create_subscription(CompressedImage, "image/compressed", self.submit, input_qos)
        else:
            self.create_subscription(Image, "image", self.submit, input_qos)
        self.create_subscription(String, io.TOPIC_CONCEPTS, self._on_concepts, COMMANDS_QOS)
        self.create_subscription(PointStamped, "prompt_point", self._on_prompt_point, COMMANDS_QOS)
        self._depths: StampedCache[Image] = StampedCache()
        self._depth_infos: StampedCache[CameraInfo] = StampedCache()
        self._depth_metric = False
        if self.values["use_depth"]:
            self.create_subscription(Image, io.TOPIC_DEPTH, lambda m: self._depths.put(stamp_to_ns(m.header.stamp), m),
                                     output_qos)
            self.create_subscription(CameraInfo, io.TOPIC_DEPTH_CAMERA_INFO,
                                     lambda m: self._depth_infos.put(stamp_to_ns(m.header.stamp), m), output_qos)
            self.create_subscription(DepthInfo, "depth/info", self._on_depth_info, output_qos)
        self._outputs = {
            "instances": self.create_publisher(InstanceArray, io.TOPIC_INSTANCES, output_qos),
            "labels": self.create_publisher(Image, io.TOPIC_LABELS, output_qos),
            "overlay": self.create_publisher(Image, io.TOPIC_OVERLAY, output_qos),
            "markers": self.create_publisher(MarkerArray, io.TOPIC_MARKERS, output_qos),
        }
        self.create_service(SetConcepts, "~/set_concepts", self._set_concepts)
        self.create_service(PromptObject, "~/prompt_object", self._prompt_object)
        self.handler: io.SegmentationFrameHandler | None = None
        self.start()

    # -- model and concepts -------------------------------------------------------------------------------

    def reconfigure_with(self, model) -> None:
        previous = [c.text for c in self.handler.concepts.snapshot().values()] if self.handler else []
        self.handler = io.SegmentationFrameHandler(model, self.values)
        if previous:  # concepts given at runtime survive a model reload or parameter change
            self.handler.concepts.add(previous)

    def _on_concepts(self, message: String) -> None:
        if self.handler is None:
            self.get_logger().error("concepts received before the model is ready; ignored")
            self.stats.event("concepts_ignored")
            return
        for command in parse_concepts_message(message.data):
            try:
                self.handler.concepts.apply(command)
            except (BadInputError, ValueError) as error:
                self.stats.event("bad_concept")
                self.get_logger().error(f"concept command {command.operation} {list(command.phrases)} refused: {error}")
            else:
                self.get_logger().info(f"concepts: {command.operation} {list(command.phrases)}")

    def _set_concepts(self, request, response):
        handler = self.handler
        if handler is None:
            response.success, response.message = False, f"no model: {self.model_error or 'loading'}"
            return response
        operations = {SetConcepts.Request.SET: handler.concepts.set, SetConcepts.Request.ADD: handler.concepts.add,
                      SetConcepts.Request.REMOVE: handler.concepts.remove, SetConcepts.Request.LIST: lambda _: None}
        operation = operations.get(request.operation)
        try:
            if operation is None:
                raise ValueError(f"unknown operation {request.operation}")
            operation(list(request.concepts))
            response.success, response.message = True, "ok"
        except (BadInputError, ValueError) as error:
            response.success, response.message = False, str(error)
        active = sorted(handler.concepts.snapshot().values(), key=lambda c: c.prompt_id)
        response.concepts = [c.text for c in active]
        response.prompt_ids = [c.prompt_id for c in active]
        return response

    def _prompt_object(self, request, response):
        points = np.array([[p.x, p.y] for p in request.points], np.float64).reshape(-1, 2)
        labels = np.array([int(p.z > 0.5) for p in request.points], np.int64)
        box = None
        if request.box.width > 0 and request.box.height > 0:
            b = request.box
            box = np.array([b.x_offset, b.y_offset, b.x_offset + b.width, b.y_offset + b.height], np.float64)
        if not len(points) and box is None:
            response.success, response.message = False, "give points or a box"
            return response
        try:
            response.object_id = self.run_in_worker(lambda: self.handler.tracker.prompt(
                points if len(points) else None, labels if len(points) else None, box,
                concept=request.concept or "object", obj_id=request.object_id or None))
            response.success, response.message = True, "ok"
        except (ValueError, KeyError, TimeoutError, AttributeError) as error:
            response.success, response.message = False, f"{type(error).__name__}: {error}"
        return response

    def _on_prompt_point(self, message: PointStamped) -> None:
        points = np.array([[message.point.x, message.point.y]])

        def prompt():
            try:
                self.handler.tracker.prompt(points, np.array([1]), None)
            except (ValueError, AttributeError) as error:
                self.get_logger().error(f"click prompt ignored: {error}")

        self.run_in_worker(prompt, wait=False)  # runs before the next frame

    def _on_depth_info(self, message: DepthInfo) -> None:
        self._depth_metric = message.is_metric

    # -- frames -------------------------------------------------------------------------------------------

    def process(self, message) -> float | None:
        depth = None
        if self.values["use_depth"]:
            stamp = stamp_to_ns(message.header.stamp)
            depth_image = self._depths.get(stamp, timeout=self.values["depth_wait"])
            depth_info = self._depth_infos.get(stamp, timeout=0.0)
            if depth_image is not None and depth_info is not None and stamp_to_ns(depth_image.header.stamp) == stamp:
                depth = io.depth_frame(depth_image, depth_info, self._depth_metric)
            else:
                self.stats.event("no_depth")
        result = self.handler.handle(message, depth)
        if result is None:
            return None
        frame, messages = result
        self._outputs["instances"].publish(messages.instances)
        if messages.labels is not None:
            self._outputs["labels"].publish(messages.labels)
        if messages.overlay is not None:
            self._outputs["overlay"].publish(messages.overlay)
        if messages.markers is not None:
            self._outputs["markers"].publish(messages.markers)
        return messages.instances.inference_ms


def main(args=None) -> int:
    return run_node(ConceptNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
