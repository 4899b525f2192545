"""object_mesh_node: a textured mesh and a layout for tracked objects (SAM 3D Objects), shown in RViz.

Subscribes (relative names; remap them):
  instances (perception_fm/InstanceArray, e.g. concept_node's), image (or image/compressed) with the same
  stamps, camera_info (optional), depth/image + depth/camera_info (use_depth: the pointmap that conditions the
  layout, e.g. depth_node's outputs), TF fixed_frame <- image frame
Publishes:
  objects (perception_fm/ObjectMesh) per lift, objects/markers (MarkerArray, latched: every object),
  TF (static) fixed_frame -> object_<id> per object
Services: ~/lift_object (perception_fm/LiftObject), ~/export_scene (perception_fm/ExportScene)

Work is per track, not per frame: selection happens as instances arrive (cheap), lifting in the worker,
one queued job per track (a newer one replaces it), at most queue_size tracks waiting: the model's latency
never stalls the image path.
"""
from __future__ import annotations

import numpy as np
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from visualization_msgs.msg import MarkerArray

from perception_fm.core.stamped_cache import StampedCache
from perception_fm.errors import BadInputError
from perception_fm.graph import NODE_TYPES
from perception_fm.hookspecs import Task
from perception_fm.msg import InstanceArray, ObjectMesh
from perception_fm.nodes.node_base import ModelNode, run_node
from perception_fm.ros import object_mesh_io as io
from perception_fm.ros.camera_info import camera_info_to_intrinsics
from perception_fm.ros.image_codec import compressed_to_rgb8, image_to_rgb8
from perception_fm.ros.qos import qos_profile
from perception_fm.ros.segmentation_io import depth_frame
from perception_fm.ros.tf import TfListener, TfPublisher, stamp_to_ns
from perception_fm.srv import ExportScene, LiftObject

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


class ObjectMeshNode(ModelNode):
    task = Task.OBJECT_MESH
    default_model = NODE_TYPES["object_mesh_node"].default_model
    params = io.OBJECT_PARAMS
    model_extra_params = io.MODEL_EXTRA_PARAMS
    queue_size = 8
    keyed_queue = True

    def __init__(self, **kwargs):
        super().__init__("object_mesh_node", **kwargs)
        input_qos = qos_profile(self.values["input_qos"])
        self._images: StampedCache = StampedCache(16)
        self._camera_info: CameraInfo | None = None
        self._depths: StampedCache = StampedCache(8)
        self._depth_infos: StampedCache = StampedCache(8)
        store = lambda cache: (lambda m: cache.put(stamp_to_ns(m.header.stamp), m))  # noqa: E731
        if self.values["image_transport"] == "compressed":
            self.create_subscription(CompressedImage, "image/compressed", store(self._images), input_qos)
        else:
            self.create_subscription(Image, "image", store(self._images), input_qos)
        self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, input_qos)
        self.create_subscription(InstanceArray, io.TOPIC_INSTANCES, self._on_instances, RELIABLE)
        if self.values["use_depth"]:
            self.create_subscription(Image, io.TOPIC_DEPTH, store(self._depths), RELIABLE)
            self.create_subscription(CameraInfo, io.TOPIC_DEPTH_CAMERA_INFO, store(self._depth_infos), RELIABLE)
        self._objects = self.create_publisher(ObjectMesh, io.TOPIC_OBJECTS, RELIABLE)
        self._markers = self.create_publisher(MarkerArray, io.TOPIC_MARKERS, qos_profile("transient_local"))
        self._tf_publisher = TfPublisher(self)
        self._tf_listener = TfListener(self)
        self.create_service(LiftObject, "~/lift_object", self._lift_object)
        self.create_service(ExportScene, "~/export_scene", self._export_scene)
        self.handler: io.ObjectMeshHandler | None = None
        self.start()

    def reconfigure_with(self, model) -> None:
        self.handler = io.ObjectMeshHandler(model, self.values)

    def _on_camera_info(self, message: CameraInfo) -> None:
        self._camera_info = message

    # -- selection (executor thread): cheap, never runs the model ------------------------------------------

    def _on_instances(self, array: InstanceArray) -> None:
        handler = self.handler
        if handler is None or not array.instances:
            return
        stamp = stamp_to_ns(array.header.stamp)
        image_message = self._images.get(stamp, timeout=0.2)
        if image_message is None or stamp_to_ns(image_message.header.stamp) != stamp:
            self.stats.event("no_image_for_instances")
            return
        try:
            image = compressed_to_rgb8(image_message) if isinstance(image_message, CompressedImage) \
                else image_to_rgb8(image_message)
            K = camera_info_to_intrinsics(self._camera_info).K if self._camera_info is not None else None
            depth = self._depth_for(stamp)
            pose, parent = self._camera_pose(image_message.header.frame_id, stamp)
            jobs = handler.select(array, image, depth, K, pose, parent)
        except (BadInputError, ValueError) as error:
            self.stats.drop(getattr(error, "reason", "instances"))
            self._log_drop("instances", f"instances at {stamp} ns ignored: {error}")
            return
        for job in jobs:
            self.submit(job)

    def _depth_for(self, stamp: int):
        if not self.values["use_depth"]:
            return None
        image = self._depths.get(stamp, timeout=self.values["depth_wait"])
        info = self._depth_infos.get(stamp, timeout=0.0)
        if image is None or info is None or stamp_to_ns(image.header.stamp) != stamp:
            self.stats.event("no_depth")
            return None
        return depth_frame(image, info, True)

    def _camera_pose(self, image_frame: str, stamp: int) -> tuple[np.ndarray, str]:
        fixed = self.values["fixed_frame"]
        pose = self._tf_listener.lookup(fixed, image_frame, stamp) if fixed else None
        if pose is None:
            if fixed:
                self.stats.event("no_fixed_frame_tf")
            return np.eye(4), image_frame
        return pose, fixed

    # -- lifting (worker) ---------------------------------------------------------------------------------

    def process(self, job) -> float:
        lifted, messages = self.handler.run(job)
        self._objects.publish(messages.object)
        self._markers.publish(messages.markers)
        self._tf_publisher.send_static(messages.transforms)
        self.get_logger().info(f"object {lifted.id} ({lifted.concept}) lifted in {lifted.inference_ms:.0f} ms: "
                               f"{len(lifted.mesh.faces)} faces in {lifted.parent_frame}")
        return lifted.inference_ms

    # -- services -----------------------------------------------------------------------------------------

    def _lift_object(self, request, response):
        job = self.handler.request(request.object_id) if self.handler else None
        if job is None:
            response.success, response.message = False, f"object {request.object_id} was not seen recently"
            return response
        self.submit(job)
        response.success, response.message = True, "queued"
        return response

    def _export_scene(self, request, response):
        try:
            path, count = self.handler.export(request.path)
            response.success, response.message, response.path, response.objects = True, "ok", str(path), count
        except (ValueError, OSError, AttributeError) as error:
            response.success, response.message = False, str(error)
        return response


def main(args=None) -> int:
    return run_node(ObjectMeshNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
