"""TF in both worlds: tf2_ros where it is installed (robots), otherwise the same wire protocol done here
(tf2_msgs/TFMessage on /tf and /tf_static, and a small transform buffer), so nodes, RViz and bags see
identical data either way.

Matrices are 4x4 float64. ``lookup(target, source, t)`` returns T_target_source, which maps points expressed
in `source` to `target` (tf2's lookup_transform convention).
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, PoseStamped, Transform, TransformStamped
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

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
REJECT_LOG_PERIOD_S = 5.0
# Below this norm a quaternion has no direction left to normalise (a zeroed or uninitialised message).
MIN_QUATERNION_NORM = 1e-6


# -- conversions --------------------------------------------------------------------------------------------
# Plain numpy on purpose: these run in /tf callbacks, concurrently with the worker thread importing torch.
# scipy's Rotation goes through its array-API layer, which inspects torch whenever torch is in sys.modules,
# and raised on a half-imported torch (issue 9). Nothing here may import or touch a heavy module.

def quaternion_to_matrix(quaternion: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) from unit quaternions (..., 4) in ROS order (x, y, z, w)."""
    x, y, z, w = np.moveaxis(np.asarray(quaternion, np.float64), -1, 0)
    xx, yy, zz, xy, xz, yz, wx, wy, wz = x * x, y * y, z * z, x * y, x * z, y * z, w * x, w * y, w * z
    matrix = np.stack([1 - 2 * (yy + zz), 2 * (xy - wz), 2 * (xz + wy),
                       2 * (xy + wz), 1 - 2 * (xx + zz), 2 * (yz - wx),
                       2 * (xz - wy), 2 * (yz + wx), 1 - 2 * (xx + yy)], axis=-1)
    return matrix.reshape(matrix.shape[:-1] + (3, 3))


def matrix_to_quaternion(rotation: np.ndarray) -> np.ndarray:
    """Unit quaternions (..., 4), (x, y, z, w) with w >= 0, from rotation matrices (..., 3, 3). Each one is
    computed from the largest of its four squared components (Shepperd's method), so it stays accurate near
    180-degree turns where w is small."""
    r = np.asarray(rotation, np.float64)
    batch = r.shape[:-2]
    r = r.reshape(-1, 3, 3)
    trace = np.trace(r, axis1=1, axis2=2)
    diagonal = np.diagonal(r, axis1=1, axis2=2)
    # 4 * squared component (x, y, z, w): 1 + 2*r_ii - trace for the vector part, 1 + trace for w
    squared = np.concatenate([1 + 2 * diagonal - trace[:, None], 1 + trace[:, None]], axis=1)
    largest = np.argmax(squared, axis=1)
    rows = np.arange(len(r))
    # each candidate row: 4*q_k * (x, y, z, w), valid for q_k the largest (its denominator is far from zero)
    candidates = np.empty((len(r), 4, 4))
    candidates[:, 0] = np.stack([squared[:, 0], r[:, 0, 1] + r[:, 1, 0], r[:, 0, 2] + r[:, 2, 0],
                                 r[:, 2, 1] - r[:, 1, 2]], axis=1)
    candidates[:, 1] = np.stack([r[:, 0, 1] + r[:, 1, 0], squared[:, 1], r[:, 1, 2] + r[:, 2, 1],
                                 r[:, 0, 2] - r[:, 2, 0]], axis=1)
    candidates[:, 2] = np.stack([r[:, 0, 2] + r[:, 2, 0], r[:, 1, 2] + r[:, 2, 1], squared[:, 2],
                                 r[:, 1, 0] - r[:, 0, 1]], axis=1)
    candidates[:, 3] = np.stack([r[:, 2, 1] - r[:, 1, 2], r[:, 0, 2] - r[:, 2, 0], r[:, 1, 0] - r[:, 0, 1],
                                 squared[:, 3]], axis=1)
    quaternion = candidates[rows, largest]
    quaternion /= np.linalg.norm(quaternion, axis=1, keepdims=True)
    quaternion *= np.where(quaternion[:, 3:] < 0, -1.0, 1.0)
    return quaternion.reshape(batch + (4,))


def slerp(q0: np.ndarray, q1: np.ndarray, alpha: float) -> np.ndarray:
    """Spherical interpolation between unit quaternions (x, y, z, w), the short way round (q and -q are the
    same rotation), as tf2 interpolates."""
    dot = float(np.dot(q0, q1))
    if dot < 0.0:
        q1, dot = -q1, -dot
    if dot > 0.9995:  # nearly equal: the sine ratios lose precision; linear is exact to ~1e-7 rad here
        result = q0 + alpha * (q1 - q0)
        return result / np.linalg.norm(result)
    angle = math.acos(min(dot, 1.0))
    sin_angle = math.sin(angle)
    return (math.sin((1.0 - alpha) * angle) * q0 + math.sin(alpha * angle) * q1) / sin_angle


def _pose_matrix(translation: np.ndarray, quaternion: np.ndarray) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = quaternion_to_matrix(quaternion)
    matrix[:3, 3] = translation
    return matrix


def matrix_to_transform(matrix: np.ndarray) -> Transform:
    x, y, z, w = matrix_to_quaternion(matrix[:3, :3])
    transform = Transform()
    transform.translation.x, transform.translation.y, transform.translation.z = (float(v) for v in matrix[:3, 3])
    transform.rotation.x, transform.rotation.y, transform.rotation.z, transform.rotation.w = (
        float(x), float(y), float(z), float(w))
    return transform


def transform_to_matrix(transform: Transform) -> np.ndarray:
    """4x4 from a Transform. The quaternion is normalised; a zero or non-finite one raises ValueError (use
    TfBuffer for message streams: it counts and drops those instead)."""
    t, q = transform.translation, transform.rotation
    quaternion = np.array([q.x, q.y, q.z, q.w], np.float64)
    norm = float(np.linalg.norm(quaternion))
    if not math.isfinite(norm) or norm < MIN_QUATERNION_NORM:
        raise ValueError(f"invalid quaternion {tuple(quaternion)}")
    return _pose_matrix(np.array([t.x, t.y, t.z], np.float64), quaternion / norm)


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

class _History:
    """One edge's samples sorted by stamp (strictly increasing), kept in numpy arrays so that lookups are a
    binary search. Live samples are [start, end); spare room at the end makes appends amortised O(1), and
    dropping the oldest is moving `start`."""

    MIN_CAPACITY = 16

    def __init__(self) -> None:
        self.stamps = np.empty(self.MIN_CAPACITY, np.int64)
        self.translations = np.empty((self.MIN_CAPACITY, 3))
        self.quaternions = np.empty((self.MIN_CAPACITY, 4))
        self.start = self.end = 0

    def __len__(self) -> int:
        return self.end - self.start

    def live_stamps(self) -> np.ndarray:
        return self.stamps[self.start:self.end]

    def newest(self) -> int:
        return int(self.stamps[self.end - 1])

    def insert(self, stamp: int, translation: np.ndarray, quaternion: np.ndarray) -> None:
        """Insert in stamp order; a sample with an existing stamp replaces it (as a republished transform)."""
        if len(self) and stamp > self.stamps[self.end - 1]:
            position = self.end  # the usual case: newer than everything
        else:
            position = self.start + int(np.searchsorted(self.live_stamps(), stamp))
            if position < self.end and self.stamps[position] == stamp:
                self.translations[position], self.quaternions[position] = translation, quaternion
                return
        if self.end == len(self.stamps):
            position -= self.start
            self._compact()
            position += self.start
        if position < self.end:  # out of order: shift the newer samples up by one (numpy handles the overlap)
            for array in (self.stamps, self.translations, self.quaternions):
                array[position + 1:self.end + 1] = array[position:self.end]
        self.stamps[position], self.translations[position], self.quaternions[position] = stamp, translation, quaternion
        self.end += 1

    def _compact(self) -> None:
        """Move the live samples to the front of arrays sized 2x their count: at least half the room is then
        free (amortised appends), and a history that shrank gives its memory back."""
        count = len(self)
        capacity = max(self.MIN_CAPACITY, 2 * count)
        for name in ("stamps", "translations", "quaternions"):
            old = getattr(self, name)
            new = np.empty((capacity,) + old.shape[1:], old.dtype)
            new[:count] = old[self.start:self.end]
            setattr(self, name, new)
        self.start, self.end = 0, count

    def drop_before(self, stamp: int) -> None:
        self.start += int(np.searchsorted(self.live_stamps(), stamp))

    def drop_oldest(self, count: int) -> None:
        self.start += count

    def at(self, stamp: int, tolerance_ns: int) -> np.ndarray | None:
        """T_parent_child at `stamp` (0: newest), interpolated like tf2; None outside the history (beyond
        `tolerance_ns`)."""
        if stamp == 0:
            index = self.end - 1
            return _pose_matrix(self.translations[index], self.quaternions[index])
        stamps = self.live_stamps()
        if stamp < stamps[0] - tolerance_ns or stamp > stamps[-1] + tolerance_ns:
            return None
        index = int(np.searchsorted(stamps, stamp))
        if index == 0 or index >= len(stamps) or stamps[index] == stamp:
            index = min(index, len(stamps) - 1) + self.start
            return _pose_matrix(self.translations[index], self.quaternions[index])
        index += self.start
        t0, t1 = self.stamps[index - 1], self.stamps[index]
        alpha = float(stamp - t0) / float(t1 - t0)
        translation = (1 - alpha) * self.translations[index - 1] + alpha * self.translations[index]
        return _pose_matrix(translation, slerp(self.quaternions[index - 1], self.quaternions[index], alpha))


def _numbers(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"


@dataclass
class _Edge:
    parent: str
    static: bool
    history: _History = field(default_factory=_History)


class TfBuffer:
    """Transform tree with a bounded history per frame, interpolating between samples like tf2.

    Like tf2's buffer, bad input never raises: a transform with an empty frame id, a frame as its own parent,
    a zero or non-finite quaternion, a non-finite translation, or a stamp older than the edge's cache window
    is dropped, counted in `rejected` (by reason) and logged at most every REJECT_LOG_PERIOD_S per reason.
    Finite quaternions are normalised. Out-of-order samples are inserted in order.

    Memory is bounded by time: each dynamic edge keeps the samples within `cache_s` of its newest one. A hard
    cap of `max_samples` per edge (far above any sane rate times `cache_s`) guards memory against a sender
    flooding one edge: beyond it the oldest samples go, counted as `cache_full`.
    A frame's parent is whatever its newest sample says (as in tf2).
    """

    def __init__(self, cache_s: float = 10.0, max_samples: int = 100_000,
                 warn: Callable[[str], None] | None = None):
        self._cache_ns = round(cache_s * 1e9)
        self._max_samples = max(2, int(max_samples))
        self._edges: dict[str, _Edge] = {}
        self._lock = threading.Lock()
        self._warn = warn or logging.getLogger(__name__).warning
        self._warned_at: dict[str, float] = {}
        self.rejected: Counter[str] = Counter()  # reason -> transforms dropped (exact; the log is rate-limited)

    def add(self, message, static: bool = False) -> None:
        """Add every transform of a tf2_msgs/TFMessage (or an iterable of TransformStamped)."""
        transforms = getattr(message, "transforms", message)
        with self._lock:
            for transform in transforms:
                self._add_one(transform, static)

    def _reject(self, reason: str, transform: TransformStamped, detail: str) -> None:
        self.rejected[reason] += 1
        now = time.monotonic()
        if now - self._warned_at.get(reason, -math.inf) >= REJECT_LOG_PERIOD_S:
            self._warned_at[reason] = now
            self._warn(f"TF rejected ({reason}, {self.rejected[reason]} so far): "
                       f"{transform.header.frame_id!r} -> {transform.child_frame_id!r} at "
                       f"{stamp_to_ns(transform.header.stamp)} ns: {detail}")

    def _add_one(self, transform: TransformStamped, static: bool) -> None:
        child = transform.child_frame_id.lstrip("/")
        parent = transform.header.frame_id.lstrip("/")
        if not child or not parent:
            return self._reject("empty_frame_id", transform, "empty frame id")
        if child == parent:
            return self._reject("self_transform", transform, "a frame cannot be its own parent")
        t, q = transform.transform.translation, transform.transform.rotation
        translation = np.array((t.x, t.y, t.z), np.float64)
        if not np.isfinite(translation).all():
            return self._reject("bad_translation", transform, f"non-finite translation {_numbers(translation)}")
        quaternion = np.array((q.x, q.y, q.z, q.w), np.float64)
        norm = float(np.linalg.norm(quaternion))
        if not math.isfinite(norm) or norm < MIN_QUATERNION_NORM:
            return self._reject("bad_quaternion", transform, f"zero or non-finite quaternion {_numbers(quaternion)}")
        quaternion /= norm
        stamp = stamp_to_ns(transform.header.stamp)
        edge = self._edges.get(child)
        if edge is None or edge.parent != parent or edge.static != static or static:
            if edge is not None and not static and not edge.static and stamp < edge.history.newest():
                # an older sample naming another parent must not undo a newer reparenting
                return self._reject("old_data", transform, f"older than the newest sample (parent {edge.parent!r})")
            edge = self._edges[child] = _Edge(parent, static)
        history = edge.history
        if len(history) and stamp < history.newest() - self._cache_ns:
            return self._reject("old_data", transform, f"older than the {self._cache_ns / 1e9:g} s cache")
        history.insert(stamp, translation, quaternion)
        history.drop_before(history.newest() - self._cache_ns)
        overflow = len(history) - self._max_samples
        if overflow > 0:
            history.drop_oldest(overflow)
            self.rejected["cache_full"] += overflow - 1  # _reject counts the last one
            self._reject("cache_full", transform, f"more than {self._max_samples} samples in the cache window; "
                                                  "the oldest were dropped")

    def parent(self, frame: str) -> str | None:
        edge = self._edges.get(frame)
        return edge.parent if edge else None

    def frames(self) -> list[str]:
        with self._lock:
            return sorted(set(self._edges) | {edge.parent for edge in self._edges.values()})

    def rejected_counts(self) -> Counter:
        """A copy of `rejected`, safe while the callback thread adds."""
        with self._lock:
            return Counter(self.rejected)

    def sample_count(self, frame: str) -> int:
        """Samples held for the edge ending in `frame` (0 if unknown)."""
        with self._lock:
            edge = self._edges.get(frame)
            return len(edge.history) if edge else 0

    def _to_root(self, frame: str, stamp: int, tolerance_ns: int) -> list[tuple[str, np.ndarray | None]]:
        """[(frame, T_parent_frame), ...] walking up to the root; None where no sample covers `stamp`."""
        chain, seen = [], set()
        while frame in self._edges and frame not in seen:
            seen.add(frame)
            edge = self._edges[frame]
            chain.append((edge.parent, edge.history.at(0 if edge.static else stamp, tolerance_ns)))
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
    """Keeps a TfBuffer filled from /tf and /tf_static (tf2_ros.Buffer where available).

    The subscription callbacks only validate and store (numpy, no lazy imports), so /tf at any rate is safe
    while the node's worker is still importing its model. Bad transforms are dropped and counted in
    `rejected` (tf2_ros does its own checking and logging where it is installed; `rejected` stays empty)."""

    def __init__(self, node, cache_s: float = 10.0):
        self._tf2_buffer = None
        if tf2_ros is not None:
            from rclpy.duration import Duration

            self._tf2_buffer = tf2_ros.Buffer(cache_time=Duration(seconds=cache_s))
            self._listener = tf2_ros.TransformListener(self._tf2_buffer, node, spin_thread=False)
            self.buffer = None
        else:
            from tf2_msgs.msg import TFMessage

            logger = node.get_logger()
            self.buffer = TfBuffer(cache_s=cache_s, warn=logger.warning)
            node.create_subscription(TFMessage, TF_TOPIC, lambda m: self.buffer.add(m, static=False), TF_QOS)
            node.create_subscription(TFMessage, TF_STATIC_TOPIC, lambda m: self.buffer.add(m, static=True),
                                     TF_STATIC_QOS)

    @property
    def rejected(self) -> Counter:
        """Transforms dropped as bad, by reason (a copy; e.g. for diagnostics)."""
        return self.buffer.rejected_counts() if self.buffer is not None else Counter()

    def lookup(self, target: str, source: str, stamp_ns: int = 0, tolerance_ns: int = 0) -> np.ndarray | None:
        if self._tf2_buffer is None:
            return self.buffer.lookup(target, source, stamp_ns, tolerance_ns)
        from rclpy.time import Time

        try:
            transform = self._tf2_buffer.lookup_transform(target, source, Time(nanoseconds=stamp_ns))
            return transform_to_matrix(transform.transform)
        except (tf2_ros.TransformException, ValueError):  # every tf2 lookup failure, incl. invalid frame ids
            return None

    def parent(self, frame: str) -> str | None:
        """The frame's parent in the tree (None if the frame is unknown or a root)."""
        if self._tf2_buffer is None:
            return self.buffer.parent(frame)
        import yaml

        frames = yaml.safe_load(self._tf2_buffer.all_frames_as_yaml()) or {}
        return (frames.get(frame) or {}).get("parent")
