"""depth_node: camera images in; depth, confidence, point cloud and camera pose (TF, path) out.

Subscribes (relative names; remap them):
  image (sensor_msgs/Image) or image/compressed (sensor_msgs/CompressedImage, image_transport:=compressed)
  camera_info (sensor_msgs/CameraInfo), optional: K for clouds, metric models and known-pose conditioning
Publishes, each stamped with the input image's stamp and frame:
  depth/image (32FC1; metres when depth/info says is_metric, REP 118; +inf = sky), depth/confidence (32FC1),
  depth/info (perception_fm/DepthInfo), depth/camera_info (K at the depth resolution),
  points (PointCloud2 XYZRGB in the image's optical frame), camera_path (nav_msgs/Path in world_frame),
  TF world_frame -> estimated_frame (the estimated camera pose; REP 105: a frame of its own, so it never
  gives the camera's frame a second parent).
Parameters: perception_fm.ros.depth_rig_io.DEPTH_NODE_PARAMS: depth_io.DEPTH_PARAMS (one camera) and RIG_PARAMS
(`cameras`: several cameras through one model; see depth_rig_io). `ros2 param describe` shows each description.
"""
from __future__ import annotations

if __name__ == "__main__":  # python -m: stop quietly on SIGINT/SIGTERM from here on, even while importing
    from perception_fm.nodes.launcher import launch

    raise SystemExit(launch("depth_node"))  # imports this module again, as perception_fm.nodes.depth_node

import time

from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Path
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from perception_fm.graph import NODE_TYPES
from perception_fm.hookspecs import Task
from perception_fm.msg import DepthInfo
from perception_fm.nodes.node_base import ModelNode, run_node
from perception_fm.ros import depth_io
from perception_fm.ros.depth_io import DepthFrameHandler, DepthMessages
from perception_fm.ros.depth_rig_io import DEPTH_NODE_PARAMS, LiveRig
from perception_fm.ros.pairing import LivePairing, live_clock
from perception_fm.ros.qos import qos_profile
from perception_fm.ros.tf import TfPublisher


class DepthNode(ModelNode):
    task = Task.DEPTH
    default_model = NODE_TYPES["depth_node"].default_model
    params = DEPTH_NODE_PARAMS
    model_extra_params = depth_io.MODEL_EXTRA_PARAMS

    def __init__(self, **kwargs):
        super().__init__("depth_node", **kwargs)
        input_qos = qos_profile(self.values["input_qos"])
        output_qos = qos_profile(self.values["output_qos"])
        # images wait for the camera_info of their stamp (depth_io.depth_pairer, as in the replay); callbacks
        # only store, the pairing timer releases images whose wait is over
        self._pairing = LivePairing(self, depth_io.depth_pairer(self.values, live_clock, on_event=self.stats.event,
                                                                on_drop=self._pairing_drop), self.submit)
        # several cameras (`cameras`): their subscriptions, grouping and outputs are the rig's (depth_rig_io)
        self._rig = LiveRig(self, input_qos, output_qos) if self.values["cameras"] else None
        if self._rig is None and self.values["image_transport"] == "compressed":
            self.create_subscription(CompressedImage, "image/compressed", self._pairing.frame, input_qos)
        elif self._rig is None:
            self.create_subscription(Image, "image", self._pairing.frame, input_qos)
        self._pairing.subscribe(depth_io.CAMERA_INFO, CameraInfo, "camera_info", input_qos)
        self._outputs = {
            "depth": self.create_publisher(Image, depth_io.TOPIC_DEPTH, output_qos),
            "confidence": self.create_publisher(Image, depth_io.TOPIC_CONFIDENCE, output_qos),
            "info": self.create_publisher(DepthInfo, depth_io.TOPIC_DEPTH_INFO, output_qos),
            "camera_info": self.create_publisher(CameraInfo, depth_io.TOPIC_DEPTH_CAMERA_INFO, output_qos),
            "points": self.create_publisher(PointCloud2, depth_io.TOPIC_POINTS, output_qos),
            "path": self.create_publisher(Path, depth_io.TOPIC_PATH, output_qos),
            "stage_times": self.create_publisher(DiagnosticArray, "~/stage_times", output_qos),
        }
        self._tf_publisher = TfPublisher(self)
        self._tf_listener = self.create_tf_listener()  # its rejects are counted on /diagnostics
        self.handler: DepthFrameHandler | None = None
        self.start()

    def _pairing_drop(self, reason: str) -> None:
        """A frame the pairer had to drop (too many waiting) was received, and is lost as stale."""
        self.stats.receive()
        self.stats.drop(reason)

    # -- worker thread ------------------------------------------------------------------------------------

    def reconfigure_with(self, model) -> None:
        self.handler = DepthFrameHandler(model, self.values, tf_lookup=self._lookup, on_event=self.stats.event)
        depth_io.update_waits(self._pairing.pairer, self.values)
        if self._rig is not None:
            self._rig.reconfigure(model, self._lookup)

    def process(self, paired) -> float:
        if self._rig is not None:  # a group of the rig's frames
            return self._rig.process(paired)
        taken_ns = live_clock()  # the clock of paired.arrived_ns / released_ns
        # the cloud is most of the per-frame work besides the model: only while someone subscribes (lazy, as
        # image_proc's nodes are); a new subscriber gets it from the next frame on
        cloud = self.values["publish_points"] and self._outputs["points"].get_subscription_count() > 0
        output, messages = self.handler.handle(paired.frame, paired.inputs[depth_io.CAMERA_INFO], cloud=cloud)
        encoded_ns = live_clock()
        self._publish(messages)
        if self.values["publish_stage_times"]:
            self._outputs["stage_times"].publish(
                depth_io.stage_times_message(paired, output, taken_ns, encoded_ns, live_clock()))
        return output.inference_ms

    def _lookup(self, target: str, source: str, stamp_ns: int, wait: bool):
        """TF at the image stamp; when `wait`, give TF up to known_pose_timeout to catch up with the image."""
        deadline = time.monotonic() + (self.values["known_pose_timeout"] if wait else 0.0)
        pose = self._tf_listener.lookup(target, source, stamp_ns)
        while pose is None and time.monotonic() < deadline:
            time.sleep(0.005)
            pose = self._tf_listener.lookup(target, source, stamp_ns)
        if pose is None and wait:
            self.get_logger().warn(f"no TF {target} -> {source} at the image stamp; going on without it",
                                   throttle_duration_sec=5.0)
        return pose

    def _publish(self, messages: DepthMessages) -> None:
        outputs = self._outputs
        outputs["depth"].publish(messages.depth)
        outputs["info"].publish(messages.info)
        if messages.camera_info is not None:
            outputs["camera_info"].publish(messages.camera_info)
        if messages.confidence is not None and self.values["publish_confidence"]:
            outputs["confidence"].publish(messages.confidence)
        if messages.points is not None and self.values["publish_points"]:
            outputs["points"].publish(messages.points)
        if messages.path is not None:
            outputs["path"].publish(messages.path)
        if messages.transform is not None:
            self._tf_publisher.send([messages.transform])
        self._tf_publisher.send_static(messages.static_transforms)


def main(args=None) -> int:
    return run_node(DepthNode, args)

