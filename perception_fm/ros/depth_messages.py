"""DepthOutput → ROS messages. The depth node publishes them; the offline replay writes them to a bag."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import TransformStamped
from nav_msgs.msg import Path
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

from perception_fm.msg import DepthInfo
from perception_fm.pipelines.depth_pipeline import DepthOutput
from perception_fm.ros.camera_info import make_camera_info
from perception_fm.ros.cloud_codec import xyzrgb_to_pointcloud2
from perception_fm.ros.image_codec import numpy_to_image
from perception_fm.ros.tf import make_pose_stamped, make_transform

# Topic names relative to the node's namespace (remap them in launch files / config).
TOPIC_DEPTH = "depth/image"
TOPIC_CONFIDENCE = "depth/confidence"
TOPIC_DEPTH_INFO = "depth/info"
TOPIC_DEPTH_CAMERA_INFO = "depth/camera_info"
TOPIC_POINTS = "points"
TOPIC_PATH = "camera_path"


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


def ns_to_time(stamp_ns: int) -> Time:
    return Time(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))


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
                   path_builder: PathBuilder | None = None) -> DepthMessages:
    """All messages for one frame, stamped with the input image's header (stamp and optical frame_id)."""
    height, width = output.depth.shape
    info = DepthInfo(
        header=header, model=model, weights=weights, is_metric=output.is_metric, scale_source=output.scale_source,
        scale=float(output.scale), pose_method=output.pose_method, window_size=output.window_size,
        view_index=output.view_index, inference_ms=float(output.inference_ms),
    )
    camera_info = make_camera_info(output.intrinsics, width, height, header) if output.intrinsics is not None else None
    points = None
    if output.intrinsics is not None:
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


def attach_transform(frames: DepthFrames, image_frame: str, stamp) -> TransformStamped:
    """Identity estimated_frame → image frame: makes clouds/depth in the image's optical frame displayable
    under world_frame when nothing else gives the image frame a parent (camera-only streams and bags)."""
    return make_transform(np.eye(4), frames.estimated_frame, image_frame, stamp)
