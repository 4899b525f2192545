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

if __name__ == "__main__":  # python -m: stop quietly on SIGINT/SIGTERM from here on, even while importing
    from perception_fm.nodes.launcher import launch

    raise SystemExit(launch("object_mesh_node"))  # imports this module again, as perception_fm.nodes.object_mesh_node

from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from visualization_msgs.msg import MarkerArray

from perception_fm.errors import BadInputError
from perception_fm.graph import NODE_TYPES
from perception_fm.hookspecs import Task
from perception_fm.msg import InstanceArray, ObjectMesh
from perception_fm.nodes.node_base import ModelNode, run_node
from perception_fm.ros import object_mesh_io as io
from perception_fm.ros import pairing
from perception_fm.ros.pairing import LivePairing, live_clock
from perception_fm.ros.qos import qos_profile
from perception_fm.ros.tf import TfPublisher
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
        # instances wait for the image, camera_info, depth and TF of their stamp in the shared pairer (as in
        # the replay); callbacks only store, the pairing timer releases arrays whose wait is over
        self._tf_listener = self.create_tf_listener()  # its rejects are counted on /diagnostics
        self._pairing = LivePairing(self, pairing.instances_pairer(
            self.values, live_clock, use_depth=self.values["use_depth"], on_event=self.stats.event,
            on_drop=self._pairing_drop, tf_lookup=self._tf_listener.lookup), self._on_paired)
        if self.values["image_transport"] == "compressed":
            self._pairing.subscribe(pairing.IMAGE, CompressedImage, "image/compressed", input_qos)
        else:
            self._pairing.subscribe(pairing.IMAGE, Image, "image", input_qos)
        self._pairing.subscribe(pairing.CAMERA_INFO, CameraInfo, "camera_info", input_qos)
        self.create_subscription(InstanceArray, io.TOPIC_INSTANCES, self._pairing.frame, RELIABLE)
        if self.values["use_depth"]:
            self._pairing.subscribe(pairing.DEPTH, Image, io.TOPIC_DEPTH, RELIABLE)
            self._pairing.subscribe(pairing.DEPTH_CAMERA_INFO, CameraInfo, io.TOPIC_DEPTH_CAMERA_INFO, RELIABLE)
        self._objects = self.create_publisher(ObjectMesh, io.TOPIC_OBJECTS, RELIABLE)
        self._markers = self.create_publisher(MarkerArray, io.TOPIC_MARKERS, qos_profile("transient_local"))
        self._tf_publisher = TfPublisher(self)
        self.create_service(LiftObject, "~/lift_object", self._lift_object)
        self.create_service(ExportScene, "~/export_scene", self._export_scene)
        self.handler: io.ObjectMeshHandler | None = None
        self.start()

    def reconfigure_with(self, model) -> None:
        self.handler = io.ObjectMeshHandler(model, self.values, on_event=self.stats.event)
        pairing.update_instance_waits(self._pairing.pairer, self.values)

    def _pairing_drop(self, reason: str) -> None:
        self.stats.drop(reason)

    # -- selection (executor thread): cheap, never runs the model ------------------------------------------

    def _on_paired(self, paired) -> None:
        """An InstanceArray released by the pairer, with its stamp's inputs: select lift jobs."""
        handler = self.handler
        if handler is None:
            self.stats.drop("no_model")
            return
        try:
            jobs = handler.select_paired(paired, self._tf_listener.lookup)
        except BadInputError as error:
            self.stats.drop(error.reason)
            self._log_drop(error.reason, f"instances at {paired.stamp_ns} ns ignored: {error}")
            return
        finally:
            self.stats.event("instance_arrays")  # arrays through selection (lift jobs are `received`)
        for job in jobs:
            self.submit(job)

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

