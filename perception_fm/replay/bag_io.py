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
    message: object  # rclpy message; None for types without a Python class here (then `raw` is set)
    raw: bytes | None = None  # CDR payload of messages of unknown types, for passing them through
    definition: tuple[str, str] | None = None  # (message definition text, RIHS01 hash) of unknown types


class BagReadError(RuntimeError):
    pass


class BagReader:
    """Messages of a rosbag2 (directory or single .mcap/.db3 file) in log-time order.

    A truncated or damaged MCAP file (no footer/summary: a recorder that was killed) cannot be indexed; it is
    then read as a stream from the start, in file order, up to the damage (`streaming` is True and
    `damage` says where reading stopped)."""

    def __init__(self, path: str | Path):
        from rosbags.highlevel import AnyReader

        self.path = Path(path)
        self.streaming = False
        self.damage: str | None = None
        if not self.path.exists():
            raise BagReadError(f"bag {str(self.path)!r} does not exist")
        try:
            self._reader = AnyReader([self.path])
            self._reader.open()
        except Exception as error:  # rosbags raises several types for unreadable bags
            mcap_files = sorted(self.path.glob("*.mcap")) if self.path.is_dir() else (
                [self.path] if self.path.suffix == ".mcap" else [])
            if not mcap_files:
                raise BagReadError(f"cannot open bag {str(self.path)!r}: {error}") from error
            self._reader = _McapStream(mcap_files, reason=str(error))
            self.streaming = True

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
        """Deserialised messages. Those of types without an installed Python class come with `raw` and
        `definition` instead (counted in `unknown`: {topic: (msgtype, count)}). Raises BagReadError naming
        the last good topic and log time when the file is corrupt or truncated, after yielding everything
        before that point."""
        connections = [c for c in self._reader.connections if topics is None or c.topic in topics]
        classes = {c.id: message_class(c.msgtype) for c in connections}
        last = None
        try:
            for connection, timestamp, raw in self._reader.messages(connections=connections):
                last = (connection.topic, timestamp)
                cls = classes.get(connection.id) or message_class(connection.msgtype)
                if cls is None:
                    if unknown is not None:
                        msgtype, count = unknown.get(connection.topic, (connection.msgtype, 0))
                        unknown[connection.topic] = (msgtype, count + 1)
                    definition = (getattr(connection.msgdef, "data", ""), connection.digest)
                    yield BagMessage(connection.topic, connection.msgtype, timestamp, None, bytes(raw), definition)
                    continue
                yield BagMessage(connection.topic, connection.msgtype, timestamp, deserialize_message(raw, cls))
        except Exception as error:
            where = f"after topic {last[0]!r} at log time {last[1]} ns" if last else "before the first message"
            offset = f", byte offset {self._reader.offset}" if self.streaming else ""
            self.damage = f"{where}{offset}"
            raise BagReadError(f"bag {str(self.path)!r} is unreadable {where}{offset}: "
                               f"{type(error).__name__}: {error}") from error


@dataclass
class _StreamConnection:
    id: int
    topic: str
    msgtype: str
    msgdef: object
    digest: str
    msgcount: int = 0


_MCAP_MAGIC = b"\x89MCAP0\r\n"
_OP_CHUNK = 0x06


class McapDamage(EOFError):
    """An MCAP file ends early or holds a damaged record at `offset`."""

    def __init__(self, offset: int):
        self.offset = offset
        super().__init__(f"incomplete or damaged record at byte {offset}")


def _mcap_records(data: bytes):
    """(record, byte offset) of every readable record of an MCAP file, chunks opened, up to the first
    incomplete or damaged record, where McapDamage is raised. A cut, uncompressed chunk (a recorder killed
    mid-chunk) still gives the records it holds in full. Parsing is mcap's; this only finds where records
    end."""
    import io
    import struct

    from mcap.exceptions import McapError
    from mcap.stream_reader import StreamReader

    def parse(blob: bytes, base: int):
        """Records of `blob`; True if it was read to its end."""
        stream = io.BytesIO(blob)
        try:
            for record in StreamReader(stream, skip_magic=True).records:
                yield record, base
        except (McapError, EOFError, struct.error, ValueError, UnicodeDecodeError):
            return stream.tell() >= len(blob)  # the reader stops with an error at the end of every blob
        return True

    if not data.startswith(_MCAP_MAGIC):
        raise McapDamage(0)
    position = len(_MCAP_MAGIC)
    while position + 9 <= len(data):
        opcode = data[position]
        (length,) = struct.unpack_from("<Q", data, position + 1)
        end = position + 9 + length
        if end <= len(data):
            complete = yield from parse(data[position:end], position)
            if not complete:
                raise McapDamage(position)
        else:
            if opcode == _OP_CHUNK and position + 9 + 32 <= len(data):
                # chunk body: start, end, uncompressed size (u64 x3), crc (u32), compression (u32 len +
                # bytes), records (u64 len + bytes); an uncompressed one can be read up to the cut
                (name_length,) = struct.unpack_from("<I", data, position + 9 + 28)
                records_at = position + 9 + 32 + name_length + 8
                if name_length == 0 and records_at <= len(data):
                    yield from parse(data[records_at:], records_at)
            raise McapDamage(position)
        if opcode == 0x02:  # footer: the file ends here, cleanly
            return
        position = end
    if position < len(data):
        raise McapDamage(position)


def _until_damage(records):
    try:
        yield from records
    except McapDamage:
        return  # reported again when the messages are read


class _McapStream:
    """The part of AnyReader's interface BagReader uses, over MCAP files read record by record (no index)."""

    def __init__(self, files: list[Path], reason: str):
        self.files, self.reason = files, reason
        self.offset = 0
        self.duration = 0
        self._channels: dict[int, _StreamConnection] = {}
        # Channels are declared before their messages: a first pass collects them (cheap: no payloads kept).
        for _ in self._records(channels_only=True):
            pass

    @property
    def connections(self) -> list[_StreamConnection]:
        return list(self._channels.values())

    def _records(self, channels_only: bool = False):
        from mcap.records import Channel, Message, Schema
        from rosbags.interfaces import MessageDefinition, MessageDefinitionFormat

        schemas = {}
        for path in self.files:
            data = path.read_bytes()
            records = _mcap_records(data)
            if channels_only:
                records = _until_damage(records)
            for record, offset in records:
                self.offset = offset
                if isinstance(record, Schema):
                    schemas[record.id] = record
                elif isinstance(record, Channel) and record.id not in self._channels:
                    schema = schemas.get(record.schema_id)
                    self._channels[record.id] = _StreamConnection(
                        record.id, record.topic, schema.name if schema else "",
                        MessageDefinition(MessageDefinitionFormat.MSG, schema.data.decode() if schema else ""),
                        record.metadata.get("rihs01", ""))
                elif isinstance(record, Message) and not channels_only:
                    yield self._channels[record.channel_id], record.log_time, record.data

    def messages(self, connections=()):
        wanted = {c.id for c in connections} if connections else None
        for connection, log_time, data in self._records():
            if wanted is None or connection.id in wanted:
                yield connection, log_time, data

    def close(self) -> None:
        pass


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

    def write_raw(self, item: BagMessage) -> None:
        """Pass a message of a type not installed here through unchanged (its own definition is kept)."""
        key = (item.topic, item.msgtype)
        connection = self._connections.get(key)
        if connection is None:
            text, digest = item.definition or ("", "")
            connection = self._writer.add_connection(item.topic, item.msgtype, msgdef=text, rihs01=digest)
            self._connections[key] = connection
        self._writer.write(connection, int(item.timestamp_ns), item.raw)
        self.counts[item.topic] = self.counts.get(item.topic, 0) + 1

    def write(self, topic: str, message, timestamp_ns: int, latched: bool = False, msgtype: str | None = None) -> None:
        """`message`: an rclpy message, or its serialised bytes (CDR, as nodes publish them) with `msgtype`."""
        serialized = isinstance(message, (bytes, bytearray))
        if serialized and not msgtype:
            raise ValueError(f"serialised message for {topic!r} written without its type")
        msgtype = msgtype or msgtype_of(message)
        key = (topic, msgtype)
        connection = self._connections.get(key)
        if connection is None:
            qos = (_latched_qos(),) if latched else ()
            connection = self._writer.add_connection(topic, msgtype, typestore=self._store, offered_qos_profiles=qos)
            self._connections[key] = connection
        self._writer.write(connection, int(timestamp_ns), bytes(message) if serialized else serialize_message(message))
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
