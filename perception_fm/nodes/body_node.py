"""body_node: full-body human meshes (SAM 3D Body, MHR) with skeletons, for tracked people, in RViz.

Subscribes (relative names; remap them):
  instances (perception_fm/InstanceArray: people come from concept_node with the concept "person"),
  image (or image/compressed) with the same stamps, camera_info (optional: the model estimates a field of view)
Publishes, stamped with the image's header (3D in its optical frame):
  bodies (perception_fm/HumanMesh, one per person and frame: MHR parameters, joints, keypoints, track id),
  bodies/markers (MarkerArray: mesh, bones, joints, label per person), TF <image frame> -> person_<id>
Latest-frame policy: a frame arriving while the model runs replaces the waiting one (dropped_stale).
"""
from __future__ import annotations

import time

from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from visualization_msgs.msg import MarkerArray

from perception_fm.core.stamped_cache import StampedCache
from perception_fm.graph import NODE_TYPES
from perception_fm.hookspecs import Task
from perception_fm.msg import HumanMesh, InstanceArray
from perception_fm.nodes.node_base import ModelNode, run_node
from perception_fm.ros import body_io as io
from perception_fm.ros.camera_info import camera_info_to_intrinsics
from perception_fm.ros.image_codec import compressed_to_rgb8, image_to_rgb8
from perception_fm.ros.qos import qos_profile
from perception_fm.ros.tf import TfPublisher, stamp_to_ns

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


class BodyNode(ModelNode):
    task = Task.BODY_MESH
    default_model = NODE_TYPES["body_node"].default_model
    params = io.BODY_PARAMS
    model_extra_params = io.MODEL_EXTRA_PARAMS

    def __init__(self, **kwargs):
        super().__init__("body_node", **kwargs)
        input_qos = qos_profile(self.values["input_qos"])
        self._images: StampedCache = StampedCache(16)
        self._camera_info: CameraInfo | None = None

        def store(message):
            self._images.put(stamp_to_ns(message.header.stamp), message)

        if self.values["image_transport"] == "compressed":
            self.create_subscription(CompressedImage, "image/compressed", store, input_qos)
        else:
            self.create_subscription(Image, "image", store, input_qos)
        self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, input_qos)
        self.create_subscription(InstanceArray, io.TOPIC_INSTANCES, self._on_instances, RELIABLE)
        self._bodies = self.create_publisher(HumanMesh, io.TOPIC_BODIES, RELIABLE)
        self._markers = self.create_publisher(MarkerArray, io.TOPIC_MARKERS, RELIABLE)
        self._tf_publisher = TfPublisher(self)
        self.handler: io.BodyFrameHandler | None = None
        self.start()

    def reconfigure_with(self, model) -> None:
        self.handler = io.BodyFrameHandler(model, self.values)

    def _on_camera_info(self, message: CameraInfo) -> None:
        self._camera_info = message

    def _on_instances(self, array: InstanceArray) -> None:
        stamp = stamp_to_ns(array.header.stamp)
        image = self._images.get(stamp, timeout=0.2)
        if image is None or stamp_to_ns(image.header.stamp) != stamp:
            self.stats.event("no_image_for_instances")
            return
        self.submit((array, image))

    def process(self, item) -> float | None:
        array, image_message = item
        if not self.handler.tracker.people(array.instances):
            return None  # nobody to estimate: the model does not run
        image = compressed_to_rgb8(image_message) if isinstance(image_message, CompressedImage) \
            else image_to_rgb8(image_message)
        K = camera_info_to_intrinsics(self._camera_info).K if self._camera_info is not None else None
        started = time.perf_counter()
        persons, messages = self.handler.handle(array, image, K)
        inference_ms = (time.perf_counter() - started) * 1e3
        for body in messages.bodies:
            self._bodies.publish(body)
        if messages.markers is not None:
            self._markers.publish(messages.markers)
        self._tf_publisher.send(messages.transforms)
        return inference_ms


def main(args=None) -> int:
    return run_node(BodyNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
