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
"""
from __future__ import annotations

import time

from nav_msgs.msg import Path
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from perception_fm.hookspecs import Task
from perception_fm.msg import DepthInfo
from perception_fm.nodes.node_base import ModelNode, run_node
from perception_fm.nodes.params import Param
from perception_fm.pipelines.depth_pipeline import DepthInput, DepthPipeline, DepthPipelineConfig
from perception_fm.ros import depth_messages as topics
from perception_fm.ros.camera_info import camera_info_to_intrinsics, check_image_size
from perception_fm.ros.depth_messages import DepthFrames, PathBuilder, attach_transform, depth_messages
from perception_fm.ros.image_codec import compressed_to_rgb8, image_to_rgb8
from perception_fm.ros.qos import PROFILES, qos_profile
from perception_fm.ros.tf import TfListener, TfPublisher, stamp_to_ns

DEPTH_PARAMS = (
    # model-specific (a change reloads the model)
    Param("process_res", 504, "Longest image side the model works at (rounded to multiples of 14).", min=14, max=4096),
    Param("pose_method", "camera_head", "Pose estimation: camera_head (fast) or ray (ray map + DLT/RQ solve).",
          choices=("camera_head", "ray")),
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
    Param("known_pose_frame", "", "Frame in which the camera's pose is known from TF (e.g. odom); empty = none."),
    Param("known_pose_timeout", 0.05, "Seconds to wait for TF at the image stamp before going on without it.",
          min=0.0, max=5.0),
    # transport
    Param("image_transport", "raw", "raw: sensor_msgs/Image on `image`; compressed: CompressedImage on "
                                    "`image/compressed`.", choices=("raw", "compressed"), read_only=True),
    Param("input_qos", "sensor_data", "QoS of the image/camera_info subscriptions.", choices=PROFILES, read_only=True),
    Param("output_qos", "reliable", "QoS of the published topics.", choices=PROFILES, read_only=True),
    Param("publish_confidence", True, "Publish depth/confidence when the model predicts it."),
    Param("publish_points", True, "Publish the point cloud."),
)


class DepthNode(ModelNode):
    task = Task.DEPTH
    default_model = "da3-small"
    params = DEPTH_PARAMS
    model_extra_params = ("process_res", "pose_method")

    def __init__(self, **kwargs):
        super().__init__("depth_node", **kwargs)
        values = self.values
        input_qos = qos_profile(values["input_qos"])
        output_qos = qos_profile(values["output_qos"])
        self._camera_info: CameraInfo | None = None
        if values["image_transport"] == "compressed":
            self.create_subscription(CompressedImage, "image/compressed", self._on_image, input_qos)
        else:
            self.create_subscription(Image, "image", self._on_image, input_qos)
        self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, input_qos)
        self._publishers = {
            "depth": self.create_publisher(Image, topics.TOPIC_DEPTH, output_qos),
            "confidence": self.create_publisher(Image, topics.TOPIC_CONFIDENCE, output_qos),
            "info": self.create_publisher(DepthInfo, topics.TOPIC_DEPTH_INFO, output_qos),
            "camera_info": self.create_publisher(CameraInfo, topics.TOPIC_DEPTH_CAMERA_INFO, output_qos),
            "points": self.create_publisher(PointCloud2, topics.TOPIC_POINTS, output_qos),
            "path": self.create_publisher(Path, topics.TOPIC_PATH, output_qos),
        }
        self._tf_publisher = TfPublisher(self)
        self._tf_listener = TfListener(self)
        self._attached: set[str] = set()
        self.pipeline: DepthPipeline | None = None
        self.start()

    # -- callbacks (executor thread): store only -------------------------------------------------------------

    def _on_camera_info(self, message: CameraInfo) -> None:
        self._camera_info = message

    def _on_image(self, message) -> None:
        self.submit((message, self._camera_info))

    # -- worker thread ----------------------------------------------------------------------------------

    def reconfigure_with(self, model) -> None:
        values = self.values
        config = DepthPipelineConfig(
            window_size=values["window_size"], keyframe_every=values["keyframe_every"],
            keyframe_min_translation=values["keyframe_min_translation"],
            keyframe_min_rotation_deg=values["keyframe_min_rotation_deg"],
            pose_method=values["pose_method"] if model.capabilities.pose_methods else "",
            condition_on_known_poses=values["condition_on_known_poses"],
            confidence_threshold=values["confidence_threshold"], cloud_stride=values["cloud_stride"],
            max_cloud_depth=values["max_cloud_depth"],
        )
        self.pipeline = DepthPipeline(model, config)
        self.frames = DepthFrames(values["world_frame"], values["estimated_frame"], values["attach_image_frame"])
        self.path_builder = PathBuilder(values["max_path_length"])

    def process(self, item) -> float:
        message, camera_info = item
        header = message.header
        rgb = compressed_to_rgb8(message) if isinstance(message, CompressedImage) else image_to_rgb8(message)
        intrinsics = None
        if camera_info is not None:
            camera = camera_info_to_intrinsics(camera_info)
            check_image_size(camera, rgb.shape[:2])
            intrinsics = camera.K
        stamp_ns = stamp_to_ns(header.stamp)
        known = self._known_pose(header.frame_id, stamp_ns)
        output = self.pipeline.process(DepthInput(rgb, stamp_ns, intrinsics, known))
        if output.new_sequence:
            self.path_builder.clear()
        messages = depth_messages(output, header, self.frames, model=self.model.name, weights=self.model.weights,
                                  path_builder=self.path_builder)
        self._publish(messages, header)
        return output.inference_ms

    def _known_pose(self, image_frame: str, stamp_ns: int):
        frame = self.values["known_pose_frame"]
        if not frame:
            return None
        deadline = time.monotonic() + self.values["known_pose_timeout"]
        while True:
            pose = self._tf_listener.lookup(frame, image_frame, stamp_ns)
            if pose is not None or time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        if pose is None:
            self.stats.event("no_known_pose")
            self.get_logger().warn(f"no TF {frame} -> {image_frame} at the image stamp; going on without a known "
                                   "pose", throttle_duration_sec=5.0)
        return pose

    def _publish(self, messages, header) -> None:
        publishers = self._publishers
        publishers["depth"].publish(messages.depth)
        publishers["info"].publish(messages.info)
        if messages.camera_info is not None:
            publishers["camera_info"].publish(messages.camera_info)
        if messages.confidence is not None and self.values["publish_confidence"]:
            publishers["confidence"].publish(messages.confidence)
        if messages.points is not None and self.values["publish_points"]:
            publishers["points"].publish(messages.points)
        if messages.transform is not None:
            self._tf_publisher.send([messages.transform])
        if messages.path is not None:
            publishers["path"].publish(messages.path)
        if self.frames.attach_image_frame and header.frame_id and header.frame_id not in self._attached:
            self._attached.add(header.frame_id)
            self._tf_publisher.send_static([attach_transform(self.frames, header.frame_id, header.stamp)])


def main(args=None) -> int:
    return run_node(DepthNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
