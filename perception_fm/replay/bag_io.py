"""rosbag2 in and out (MCAP and sqlite3) with rclpy message objects, through `rosbags` (pure Python).

Payloads are standard CDR: rclpy.serialization reads and writes them, so what the replay writes is byte for
byte what a live node would publish. rosbags supplies the container formats and the message definitions
(ROS 2 Kilted's standard types plus this package's own, registered from their .msg text).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from rclpy.serialization import deserialize_message, serialize_message

from perception_fm.ros.interfaces import message_definitions


def message_class(msgtype: str):
    """The rclpy class for "pkg/msg/Name"; None when that package is not installed here."""
    package, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError):
        return None


def msgtype_of(message) -> str:
    cls = type(message)
    package, kind = cls.__module__.split(".")[:2]
    return f"{package}/{kind}/{cls.__name__}"


def typestore():
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    types = {}
    for msgtype, text in message_definitions().items():
        types.update(get_types_from_msg(text, msgtype))
    store.register(types)
    return store


@dataclass
class BagMessage:
    topic: str
    msgtype: str
    timestamp_ns: int  # log time
    message: object  # rclpy message


class BagReadError(RuntimeError):
    pass


class BagReader:
    """Messages of a rosbag2 (directory or single .mcap/.db3 file) in log-time order."""

    def __init__(self, path: str | Path):
        from rosbags.highlevel import AnyReader

        self.path = Path(path)
        if not self.path.exists():
            raise BagReadError(f"bag {str(self.path)!r} does not exist")
        try:
            self._reader = AnyReader([self.path])
            self._reader.open()
        except Exception as error:  # rosbags raises several types for unreadable bags
            raise BagReadError(f"cannot open bag {str(self.path)!r}: {error}") from error

    def close(self) -> None:
        self._reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def topics(self) -> dict[str, str]:
        return {c.topic: c.msgtype for c in self._reader.connections}

    def count(self, topic: str) -> int:
        return sum(c.msgcount for c in self._reader.connections if c.topic == topic)

    @property
    def duration_ns(self) -> int:
        return self._reader.duration

    def messages(self, topics: set[str] | None = None, unknown: dict | None = None) -> Iterator[BagMessage]:
        """Deserialised messages; those of types without an installed Python class are counted in
        `unknown` ({topic: (msgtype, count)}) and skipped. Raises BagReadError naming the topic and log time
        when the file is corrupt or truncated, after yielding everything before that point."""
        connections = [c for c in self._reader.connections if topics is None or c.topic in topics]
        classes = {c.id: message_class(c.msgtype) for c in connections}
        last = None
        try:
            for connection, timestamp, raw in self._reader.messages(connections=connections):
                last = (connection.topic, timestamp)
                cls = classes[connection.id]
                if cls is None:
                    if unknown is not None:
                        msgtype, count = unknown.get(connection.topic, (connection.msgtype, 0))
                        unknown[connection.topic] = (msgtype, count + 1)
                    continue
                yield BagMessage(connection.topic, connection.msgtype, timestamp, deserialize_message(raw, cls))
        except Exception as error:
            where = f"after topic {last[0]!r} at log time {last[1]} ns" if last else "before the first message"
            raise BagReadError(f"bag {str(self.path)!r} is unreadable {where}: {type(error).__name__}: {error}") \
                from error


class BagWriter:
    """Writes rclpy messages to a new rosbag2 MCAP bag directory."""

    def __init__(self, path: str | Path):
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.path = Path(path)
        self._store = typestore()
        self._writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._connections: dict[tuple[str, str], object] = {}
        self.counts: dict[str, int] = {}

    def write(self, topic: str, message, timestamp_ns: int, latched: bool = False) -> None:
        msgtype = msgtype_of(message)
        key = (topic, msgtype)
        connection = self._connections.get(key)
        if connection is None:
            qos = (_latched_qos(),) if latched else ()
            connection = self._writer.add_connection(topic, msgtype, typestore=self._store, offered_qos_profiles=qos)
            self._connections[key] = connection
        self._writer.write(connection, int(timestamp_ns), serialize_message(message))
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def close(self) -> None:
        self._writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _latched_qos():
    """The QoS /tf_static is offered with, so `ros2 bag play` re-publishes it latched."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    never = QosTime(sec=0, nsec=0)
    return Qos(history=QosHistory.KEEP_LAST, depth=1, reliability=QosReliability.RELIABLE,
               durability=QosDurability.TRANSIENT_LOCAL, deadline=never, lifespan=never,
               liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=never,
               avoid_ros_namespace_conventions=False)
