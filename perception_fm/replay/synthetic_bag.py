"""The synthetic sample as a rosbag2 (MCAP) bag: messages built with a rosbags typestore (no rclpy needed)
from the frames of perception_fm.replay.synthetic_render; the overview is in perception_fm.replay.synthetic."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from perception_fm.replay.synthetic_render import render_frame
from perception_fm.replay.synthetic_scene import (
    TOPICS,
    T_LINK_OPTICAL,
    SampleConfig,
    camera_link_to_world,
    instance_labels,
    intrinsics,
    rig_camera_frame,
    rig_mount,
    rig_topics,
    stamp_ns,
)

# -- rosbag2 writer ----------------------------------------------------------------------------------------

def _rotation_to_quaternion(r: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, z, w) with w >= 0 of a rotation matrix (Shepperd's method)."""
    m = np.asarray(r, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0.0:
        s = 2.0 * math.sqrt(1.0 + trace)
        q = (
            (m[2, 1] - m[1, 2]) / s,
            (m[0, 2] - m[2, 0]) / s,
            (m[1, 0] - m[0, 1]) / s,
            0.25 * s,
        )
    elif m[0, 0] >= m[1, 1] and m[0, 0] >= m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = (0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s)
    elif m[1, 1] >= m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = ((m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s)
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = ((m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s)
    qa = np.array(q)
    qa /= np.linalg.norm(qa)
    if qa[3] < 0:
        qa = -qa
    return tuple(float(v) for v in qa)  # type: ignore[return-value]


class _Messages:
    """Builds the bag's messages with a rosbags typestore (no rclpy needed)."""

    def __init__(self, config: SampleConfig) -> None:
        from rosbags.typesys import Stores, get_typestore

        self.config = config
        self.store = get_typestore(Stores.ROS2_KILTED)
        self.t = self.store.types

    def serialize(self, msg: object) -> bytes:
        return bytes(self.store.serialize_cdr(msg, msg.__msgtype__))  # type: ignore[attr-defined]

    def header(self, stamp: int, frame_id: str):
        time = self.t["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9)
        return self.t["std_msgs/msg/Header"](stamp=time, frame_id=frame_id)

    def image(self, stamp: int, array: np.ndarray, encoding: str, frame_id: str | None = None):
        h, w = array.shape[:2]
        data = np.ascontiguousarray(array)
        if data.dtype.itemsize > 1:
            data = data.astype(data.dtype.newbyteorder("<"), copy=False)
        raw = np.frombuffer(data.tobytes(), dtype=np.uint8)
        return self.t["sensor_msgs/msg/Image"](
            header=self.header(stamp, frame_id or self.config.camera_frame),
            height=h,
            width=w,
            encoding=encoding,
            is_bigendian=0,
            step=len(raw) // h,
            data=raw,
        )

    def compressed(self, stamp: int, rgb: np.ndarray, frame_id: str | None = None):
        import cv2

        ok, buf = cv2.imencode(
            ".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality]
        )
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        return self.t["sensor_msgs/msg/CompressedImage"](
            header=self.header(stamp, frame_id or self.config.camera_frame),
            format="rgb8; jpeg compressed bgr8",
            data=np.asarray(buf, dtype=np.uint8).reshape(-1),
        )

    def camera_info(self, stamp: int, k: np.ndarray, frame_id: str | None = None):
        p = np.zeros((3, 4))
        p[:, :3] = k
        roi = self.t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        return self.t["sensor_msgs/msg/CameraInfo"](
            header=self.header(stamp, frame_id or self.config.camera_frame),
            height=self.config.height,
            width=self.config.width,
            distortion_model="plumb_bob",
            d=np.zeros(5),
            k=k.reshape(-1).astype(np.float64),
            r=np.eye(3).reshape(-1),
            p=p.reshape(-1),
            binning_x=0,
            binning_y=0,
            roi=roi,
        )

    def _xyzq(self, matrix: np.ndarray):
        x, y, z, w = _rotation_to_quaternion(matrix[:3, :3])
        q = self.t["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w)
        tx, ty, tz = (float(v) for v in matrix[:3, 3])
        return (tx, ty, tz), q

    def pose_stamped(self, stamp: int, matrix: np.ndarray):
        (x, y, z), q = self._xyzq(matrix)
        pose = self.t["geometry_msgs/msg/Pose"](position=self.t["geometry_msgs/msg/Point"](x=x, y=y, z=z), orientation=q)
        return self.t["geometry_msgs/msg/PoseStamped"](header=self.header(stamp, self.config.world_frame), pose=pose)

    def tf(self, stamp: int, transforms: Sequence[tuple[str, str, np.ndarray]]):
        items = []
        for parent, child, matrix in transforms:
            (x, y, z), q = self._xyzq(matrix)
            transform = self.t["geometry_msgs/msg/Transform"](
                translation=self.t["geometry_msgs/msg/Vector3"](x=x, y=y, z=z), rotation=q
            )
            items.append(
                self.t["geometry_msgs/msg/TransformStamped"](
                    header=self.header(stamp, parent), child_frame_id=child, transform=transform
                )
            )
        return self.t["tf2_msgs/msg/TFMessage"](transforms=items)

    def string(self, text: str):
        return self.t["std_msgs/msg/String"](data=text)


def _latched_qos():
    """The QoS rosbag2 records for a transient-local (latched) publisher such as tf_static."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    infinite = QosTime(9223372036, 854775807)  # RMW_DURATION_INFINITE as rosbag2 writes it
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=1,
        reliability=QosReliability.RELIABLE,
        durability=QosDurability.TRANSIENT_LOCAL,
        deadline=infinite,
        lifespan=infinite,
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=infinite,
        avoid_ros_namespace_conventions=False,
    )


def write_sample_bag(
    path: str | Path,
    config: SampleConfig = SampleConfig(),
    *,
    compressed: bool = False,
    with_tf: bool = True,
) -> dict:
    """Render the sequence and write it as a rosbag2 MCAP bag directory at `path` (which must not exist).

    Topics (all stamped with the frame's stamp, header and bag log time alike):
    /camera/color/image_raw (rgb8 Image) or, with compressed, /camera/color/image_raw/compressed (JPEG),
    /camera/color/camera_info, /gt/depth (32FC1, metres), /gt/instances (16UC1), /gt/camera_pose (PoseStamped
    of the optical frame in world_frame), /gt/instance_labels (String, JSON {"id": "concept"}, once, latched),
    and with with_tf /tf (world_frame -> camera_link per frame) and /tf_static (camera_link -> camera_frame,
    once, latched). With a rig (config.rig_cameras > 1) the per-camera topics are those of `rig_topics` for
    each camera (/cam<i>/color/..., /gt/cam<i>/...), each in its own optical frame, and /tf_static carries
    camera_link -> every camera's optical frame (the rig's known extrinsics). Returns a summary: path, topics
    -> message counts, types, frames, start/duration, bytes.
    """
    from rosbags.rosbag2 import Writer

    from perception_fm.replay.bag_io import rosbag2_writer

    path = Path(path)
    msgs = _Messages(config)
    store = msgs.store
    cameras = range(config.rig_cameras)
    topics = [rig_topics(config, camera) for camera in cameras]
    image_key = "image_compressed" if compressed else "image"
    image_type = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    latched = [_latched_qos()]
    plan: list[tuple[str, str, list]] = [
        (TOPICS["instance_labels"], "std_msgs/msg/String", latched),
    ]
    if with_tf:
        plan.append((TOPICS["tf_static"], "tf2_msgs/msg/TFMessage", latched))
        plan.append((TOPICS["tf"], "tf2_msgs/msg/TFMessage", []))
    for camera_topics in topics:
        plan += [
            (camera_topics[image_key], image_type, []),
            (camera_topics["camera_info"], "sensor_msgs/msg/CameraInfo", []),
            (camera_topics["depth"], "sensor_msgs/msg/Image", []),
            (camera_topics["instances"], "sensor_msgs/msg/Image", []),
            (camera_topics["camera_pose"], "geometry_msgs/msg/PoseStamped", []),
        ]
    counts = {topic: 0 for topic, _, _ in plan}
    types = {topic: msgtype for topic, msgtype, _ in plan}
    labels = {str(k): v for k, v in sorted(instance_labels(config).items())}

    # MCAP written with chunk CRCs (as `ros2 bag record` writes it), so damage to the sample can be detected
    writer = rosbag2_writer(path, version=Writer.VERSION_LATEST)
    writer.open()
    try:
        conns = {
            topic: writer.add_connection(topic, msgtype, typestore=store, offered_qos_profiles=qos)
            for topic, msgtype, qos in plan
        }

        def put(topic: str, stamp: int, msg: object) -> None:
            writer.write(conns[topic], stamp, msgs.serialize(msg))
            counts[topic] += 1

        t0 = stamp_ns(config, 0)
        put(TOPICS["instance_labels"], t0, msgs.string(json.dumps(labels, sort_keys=True)))
        if with_tf:
            mounts = [(config.camera_link_frame, rig_camera_frame(config, camera),
                       rig_mount(config, camera) @ T_LINK_OPTICAL) for camera in cameras]
            put(TOPICS["tf_static"], t0, msgs.tf(t0, mounts))
        k = intrinsics(config)
        for index in range(config.frames):
            t = stamp_ns(config, index)
            if with_tf:
                link = camera_link_to_world(config, index)
                put(TOPICS["tf"], t, msgs.tf(t, [(config.world_frame, config.camera_link_frame, link)]))
            for camera, camera_topics in zip(cameras, topics):
                frame = render_frame(config, index, camera)
                frame_id = rig_camera_frame(config, camera)
                if compressed:
                    put(camera_topics[image_key], t, msgs.compressed(t, frame.rgb, frame_id))
                else:
                    put(camera_topics[image_key], t, msgs.image(t, frame.rgb, "rgb8", frame_id))
                put(camera_topics["camera_info"], t, msgs.camera_info(t, k, frame_id))
                put(camera_topics["depth"], t, msgs.image(t, frame.depth, "32FC1", frame_id))
                put(camera_topics["instances"], t, msgs.image(t, frame.instances, "16UC1", frame_id))
                put(camera_topics["camera_pose"], t, msgs.pose_stamped(t, frame.camera_to_world))
    except BaseException:
        writer.close()
        raise
    writer.close()

    start = stamp_ns(config, 0)
    end = stamp_ns(config, config.frames - 1)
    return {
        "path": str(path),
        "topics": counts,
        "types": types,
        "frames": config.frames,
        "messages": sum(counts.values()),
        "start_ns": start,
        "duration_ns": end - start,
        "duration_s": (end - start) / 1e9,
        "bytes": sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
    }


