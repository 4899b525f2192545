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

if __name__ == "__main__":  # python -m: stop quietly on SIGINT/SIGTERM from here on, even while importing
    from perception_fm.nodes.launcher import launch

    raise SystemExit(launch("body_node"))  # imports this module again, as perception_fm.nodes.body_node

from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from visualization_msgs.msg import MarkerArray

from perception_fm.graph import NODE_TYPES
from perception_fm.hookspecs import Task
from perception_fm.msg import HumanMesh, InstanceArray
from perception_fm.nodes.node_base import ModelNode, run_node
from perception_fm.ros import body_io as io
from perception_fm.ros import pairing
from perception_fm.ros.pairing import LivePairing, live_clock
from perception_fm.ros.qos import qos_profile
from perception_fm.ros.tf import TfPublisher

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


class BodyNode(ModelNode):
    task = Task.BODY_MESH
    default_model = NODE_TYPES["body_node"].default_model
    params = io.BODY_PARAMS
    model_extra_params = io.MODEL_EXTRA_PARAMS

    def __init__(self, **kwargs):
        super().__init__("body_node", **kwargs)
        input_qos = qos_profile(self.values["input_qos"])
        # instances wait for the image and camera_info of their stamp in the shared pairer (as in the replay);
        # callbacks only store, the pairing timer releases arrays whose wait is over
        self._pairing = LivePairing(self, pairing.instances_pairer(
            self.values, live_clock, use_depth=False, on_event=self.stats.event, on_drop=self._pairing_drop),
            self.submit)
        if self.values["image_transport"] == "compressed":
            self._pairing.subscribe(pairing.IMAGE, CompressedImage, "image/compressed", input_qos)
        else:
            self._pairing.subscribe(pairing.IMAGE, Image, "image", input_qos)
        self._pairing.subscribe(pairing.CAMERA_INFO, CameraInfo, "camera_info", input_qos)
        self.create_subscription(InstanceArray, io.TOPIC_INSTANCES, self._pairing.frame, RELIABLE)
        self._bodies = self.create_publisher(HumanMesh, io.TOPIC_BODIES, RELIABLE)
        self._markers = self.create_publisher(MarkerArray, io.TOPIC_MARKERS, RELIABLE)
        self._tf_publisher = TfPublisher(self)
        self.handler: io.BodyFrameHandler | None = None
        self.start()

    def reconfigure_with(self, model) -> None:
        self.handler = io.BodyFrameHandler(model, self.values)
        pairing.update_instance_waits(self._pairing.pairer, self.values)

    def _pairing_drop(self, reason: str) -> None:
        """A frame the pairer had to drop (too many waiting) was received, and is lost as stale."""
        self.stats.receive()
        self.stats.drop(reason)

    def process(self, paired) -> float | None:
        inference_ms, messages = self.handler.handle_paired(paired)
        if messages is None:
            return None  # nobody to estimate, or no image: the model does not run
        for body in messages.bodies:
            self._bodies.publish(body)
        if messages.markers is not None:
            self._markers.publish(messages.markers)
        self._tf_publisher.send(messages.transforms)
        return inference_ms


def main(args=None) -> int:
    return run_node(BodyNode, args)

