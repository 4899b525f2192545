"""TF in both worlds: tf2_ros where it is installed (robots), otherwise the same wire protocol done here
(tf2_msgs/TFMessage on /tf and /tf_static, and a small transform buffer), so nodes, RViz and bags see
identical data either way.

Matrices are 4x4 float64. ``lookup(target, source, t)`` returns T_target_source, which maps points expressed
in `source` to `target` (tf2's lookup_transform convention).
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, PoseStamped, Transform, TransformStamped
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from scipy.spatial.transform import Rotation, Slerp

try:  # robots: the real thing
    import tf2_ros  # type: ignore
except ImportError:  # PyPI wheels: no tf2_ros
    tf2_ros = None

TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"
# The QoS tf2_ros uses, so our publishers and subscribers match theirs.
TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE,
                    history=HistoryPolicy.KEEP_LAST)
TF_STATIC_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)


# -- conversions --------------------------------------------------------------------------------------------

def matrix_to_transform(matrix: np.ndarray) -> Transform:
    x, y, z, w = Rotation.from_matrix(matrix[:3, :3]).as_quat()
    transform = Transform()
    transform.translation.x, transform.translation.y, transform.translation.z = (float(v) for v in matrix[:3, 3])
    transform.rotation.x, transform.rotation.y, transform.rotation.z, transform.rotation.w = (
        float(x), float(y), float(z), float(w))
    return transform


def transform_to_matrix(transform: Transform) -> np.ndarray:
    t, q = transform.translation, transform.rotation
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()
    matrix[:3, 3] = (t.x, t.y, t.z)
    return matrix


def matrix_to_pose(matrix: np.ndarray) -> Pose:
    transform = matrix_to_transform(matrix)
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (
        transform.translation.x, transform.translation.y, transform.translation.z)
    pose.orientation = transform.rotation
    return pose


def pose_to_matrix(pose: Pose) -> np.ndarray:
    transform = Transform()
    transform.translation.x, transform.translation.y, transform.translation.z = (
        pose.position.x, pose.position.y, pose.position.z)
    transform.rotation = pose.orientation
    return transform_to_matrix(transform)


def make_transform(matrix: np.ndarray, parent: str, child: str, stamp) -> TransformStamped:
    """TransformStamped placing `child` in `parent` (matrix = T_parent_child)."""
    message = TransformStamped()
    message.header.stamp = stamp
    message.header.frame_id = parent
    message.child_frame_id = child
    message.transform = matrix_to_transform(matrix)
    return message


def make_pose_stamped(matrix: np.ndarray, frame_id: str, stamp) -> PoseStamped:
    message = PoseStamped()
    message.header.stamp = stamp
    message.header.frame_id = frame_id
    message.pose = matrix_to_pose(matrix)
    return message


def stamp_to_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_time(stamp_ns: int) -> Time:
    return Time(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))


# -- buffer -------------------------------------------------------------------------------------------------

@dataclass
class _Edge:
    parent: str
    static: bool
    stamps: deque  # int ns, increasing
    matrices: deque  # 4x4, T_parent_child


class TfBuffer:
    """Transform tree with a bounded history per frame, interpolating between samples like tf2.

    Memory is bounded: each dynamic edge keeps at most `max_samples` samples spanning at most `cache_ns`.
    A frame's parent is whatever its newest sample says (as in tf2).
    """

    def __init__(self, cache_s: float = 10.0, max_samples: int = 1000):
        self._cache_ns = int(cache_s * 1e9)
        self._max_samples = max_samples
        self._edges: dict[str, _Edge] = {}
        self._lock = threading.Lock()

    def add(self, message, static: bool = False) -> None:
        """Add every transform of a tf2_msgs/TFMessage (or an iterable of TransformStamped)."""
        transforms = getattr(message, "transforms", message)
        with self._lock:
            for transform in transforms:
                self._add_one(transform, static)

    def _add_one(self, transform: TransformStamped, static: bool) -> None:
        child = transform.child_frame_id.lstrip("/")
        parent = transform.header.frame_id.lstrip("/")
        stamp = stamp_to_ns(transform.header.stamp)
        matrix = transform_to_matrix(transform.transform)
        edge = self._edges.get(child)
        if edge is None or edge.parent != parent or edge.static != static or static:
            self._edges[child] = _Edge(parent, static, deque([stamp], self._max_samples),
                                       deque([matrix], self._max_samples))
            return
        if stamp < edge.stamps[-1]:  # out of order: insert keeping the history sorted
            position = int(np.searchsorted(np.fromiter(edge.stamps, np.int64), stamp))
            edge.stamps.insert(position, stamp)
            edge.matrices.insert(position, matrix)
        else:
            edge.stamps.append(stamp)
            edge.matrices.append(matrix)
        while edge.stamps[-1] - edge.stamps[0] > self._cache_ns:
            edge.stamps.popleft()
            edge.matrices.popleft()

    def parent(self, frame: str) -> str | None:
        edge = self._edges.get(frame)
        return edge.parent if edge else None

    def frames(self) -> list[str]:
        with self._lock:
            return sorted(set(self._edges) | {edge.parent for edge in self._edges.values()})

    def _edge_at(self, edge: _Edge, stamp: int, tolerance_ns: int) -> np.ndarray | None:
        if edge.static or stamp == 0:
            return edge.matrices[-1]
        stamps = np.fromiter(edge.stamps, np.int64, len(edge.stamps))
        if stamp < stamps[0] - tolerance_ns or stamp > stamps[-1] + tolerance_ns:
            return None
        index = int(np.searchsorted(stamps, stamp))
        if index == 0:
            return edge.matrices[0]
        if index >= len(stamps):
            return edge.matrices[-1]
        t0, t1 = stamps[index - 1], stamps[index]
        m0, m1 = edge.matrices[index - 1], edge.matrices[index]
        alpha = (stamp - t0) / (t1 - t0)
        result = np.eye(4)
        result[:3, 3] = (1 - alpha) * m0[:3, 3] + alpha * m1[:3, 3]
        slerp = Slerp([0.0, 1.0], Rotation.from_matrix(np.stack([m0[:3, :3], m1[:3, :3]])))
        result[:3, :3] = slerp([alpha]).as_matrix()[0]
        return result

    def _to_root(self, frame: str, stamp: int, tolerance_ns: int) -> list[tuple[str, np.ndarray | None]]:
        """[(frame, T_parent_frame), ...] walking up to the root; None where no sample covers `stamp`."""
        chain, seen = [], set()
        while frame in self._edges and frame not in seen:
            seen.add(frame)
            edge = self._edges[frame]
            chain.append((edge.parent, self._edge_at(edge, stamp, tolerance_ns)))
            frame = edge.parent
        return chain

    def lookup(self, target: str, source: str, stamp_ns: int = 0, tolerance_ns: int = 0) -> np.ndarray | None:
        """T_target_source at `stamp_ns` (0: latest), or None when the frames are not connected or the
        history does not cover the time (extrapolation beyond `tolerance_ns` is refused, as in tf2)."""
        target, source = target.lstrip("/"), source.lstrip("/")
        if target == source:
            return np.eye(4)
        with self._lock:
            source_chain = self._to_root(source, stamp_ns, tolerance_ns)
            target_chain = self._to_root(target, stamp_ns, tolerance_ns)
        source_frames = [source] + [parent for parent, _ in source_chain]
        target_frames = [target] + [parent for parent, _ in target_chain]
        common = next((frame for frame in source_frames if frame in target_frames), None)
        if common is None:
            return None
        root_from_source = np.eye(4)  # T_common_source
        for parent, matrix in source_chain[: source_frames.index(common)]:
            if matrix is None:
                return None
            root_from_source = matrix @ root_from_source
        root_from_target = np.eye(4)
        for parent, matrix in target_chain[: target_frames.index(common)]:
            if matrix is None:
                return None
            root_from_target = matrix @ root_from_target
        return np.linalg.inv(root_from_target) @ root_from_source


# -- node-side helpers --------------------------------------------------------------------------------------

class TfPublisher:
    """Broadcasts dynamic and static transforms (tf2_ros broadcasters where available)."""

    def __init__(self, node):
        self._static: dict[str, TransformStamped] = {}
        if tf2_ros is not None:
            self._dynamic_broadcaster = tf2_ros.TransformBroadcaster(node)
            self._static_broadcaster = tf2_ros.StaticTransformBroadcaster(node)
            self._tf = self._tf_static = None
        else:
            from tf2_msgs.msg import TFMessage

            self._message = TFMessage
            self._tf = node.create_publisher(TFMessage, TF_TOPIC, TF_QOS)
            self._tf_static = node.create_publisher(TFMessage, TF_STATIC_TOPIC, TF_STATIC_QOS)

    def send(self, transforms: list[TransformStamped]) -> None:
        if not transforms:
            return
        if self._tf is None:
            self._dynamic_broadcaster.sendTransform(transforms)
        else:
            self._tf.publish(self._message(transforms=transforms))

    def send_static(self, transforms: list[TransformStamped]) -> None:
        """Latched; like tf2_ros, every static transform sent so far is republished together."""
        if not transforms:
            return
        if self._tf is None:
            self._static_broadcaster.sendTransform(transforms)
            return
        for transform in transforms:
            self._static[transform.child_frame_id] = transform
        self._tf_static.publish(self._message(transforms=list(self._static.values())))


class TfListener:
    """Keeps a TfBuffer filled from /tf and /tf_static (tf2_ros.Buffer where available)."""

    def __init__(self, node, cache_s: float = 10.0):
        self._tf2_buffer = None
        if tf2_ros is not None:
            from rclpy.duration import Duration

            self._tf2_buffer = tf2_ros.Buffer(cache_time=Duration(seconds=cache_s))
            self._listener = tf2_ros.TransformListener(self._tf2_buffer, node, spin_thread=False)
            self.buffer = None
        else:
            from tf2_msgs.msg import TFMessage

            self.buffer = TfBuffer(cache_s=cache_s)
            node.create_subscription(TFMessage, TF_TOPIC, lambda m: self.buffer.add(m, static=False), TF_QOS)
            node.create_subscription(TFMessage, TF_STATIC_TOPIC, lambda m: self.buffer.add(m, static=True),
                                     TF_STATIC_QOS)

    def lookup(self, target: str, source: str, stamp_ns: int = 0, tolerance_ns: int = 0) -> np.ndarray | None:
        if self._tf2_buffer is None:
            return self.buffer.lookup(target, source, stamp_ns, tolerance_ns)
        from rclpy.time import Time

        try:
            transform = self._tf2_buffer.lookup_transform(target, source, Time(nanoseconds=stamp_ns))
        except (tf2_ros.LookupException, tf2_ros.ConnectivityException, tf2_ros.ExtrapolationException):
            return None
        return transform_to_matrix(transform.transform)

    def parent(self, frame: str) -> str | None:
        """The frame's parent in the tree (None if the frame is unknown or a root)."""
        if self._tf2_buffer is None:
            return self.buffer.parent(frame)
        import yaml

        frames = yaml.safe_load(self._tf2_buffer.all_frames_as_yaml()) or {}
        return (frames.get(frame) or {}).get("parent")
