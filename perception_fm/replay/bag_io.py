"""rosbag2 in and out (MCAP and sqlite3) with rclpy message objects.

Payloads are standard CDR: rclpy.serialization reads and writes them, so what the replay writes is byte for
byte what a live node would publish.

Reading. MCAP files are read through the `mcap` package's own record readers (`SeekingReader.get_summary`,
`Chunk.read`, `breakup_chunk`, `StreamReader`), each file once, one chunk at a time (bounded memory), with every
integrity check the format offers: chunk CRCs, the summary CRC, the data-section CRC (when the file is read as a
stream), each indexed chunk's record header and sizes against its index entry, and message counts against the
file's statistics. Chunks written without a CRC (rosbags' own writer leaves it 0) are checked against their
message-index records instead. Any damage raises BagReadError naming the file, the byte offset, the topics and
log times concerned, after everything before it has been yielded. sqlite3 bags (and file-compressed bags) are
read through `rosbags`. ROS 1 bags (.bag) are read through rosbags' rosbag1 reader with every message converted
to its ROS 2 type (perception_fm.replay.ros1), so replay and eval take them as they are.

Writing. rosbags' Writer writes the rosbag2 directory and its metadata.yaml; the MCAP file inside is written by
`mcap`'s Writer (a storage plugin below), which computes chunk and summary CRCs, so the replay's
own outputs are protected the way `ros2 bag record`'s are.
"""
from __future__ import annotations

import heapq
import importlib
import struct
import zlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Iterator

from rclpy.serialization import deserialize_message, serialize_message

from perception_fm.errors import PerceptionFmError
from perception_fm.replay.ros1 import ROS1_MAGIC
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


class BagReadError(PerceptionFmError, RuntimeError):
    """The input is not a bag, or is damaged. The text is one line naming the file and, for damage, the byte
    offset and the last message read before it."""


_MCAP_MAGIC = b"\x89MCAP0\r\n"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_OP_CHUNK, _OP_MESSAGE_INDEX = 0x06, 0x07
# A compressed chunk claiming more than this when decompressed is taken as damaged (its header is not covered
# by the CRC, and believing a flipped size would allocate it).
_MAX_CHUNK_BYTES = 2**31


class McapDamage(Exception):
    """Damage found in one MCAP file: `offset` is the byte where the damaged record starts."""

    def __init__(self, file: Path, offset: int, detail: str):
        self.file, self.offset, self.detail = file, offset, detail
        super().__init__(f"{str(file)!r} damaged at byte {offset}: {detail}")


class BagReader:
    """Messages of a rosbag2 (directory or single .mcap/.db3 file) or a ROS 1 .bag in log-time order.

    An MCAP file without a usable index (a recorder killed before it wrote the summary, or a damaged summary) is
    read as a stream in file order (`streaming` is True, `reason` says why); its topics come from a first pass
    over it. Damage found when opening, before any message could be read, raises BagReadError from the
    constructor; damage found later raises it from `messages()` after everything before it was yielded, and
    `damage` keeps its text."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.streaming = False
        self.reason = ""
        self.damage: str | None = None
        if not self.path.exists():
            raise BagReadError(f"bag {str(self.path)!r} does not exist")
        storage, files, digests = _locate(self.path)
        if storage == "mcap":
            self._reader = _McapBag(files, digests)
            self.streaming = any(source.reason for source in self._reader.sources)
            self.reason = "; ".join(f"{s.path.name}: {s.reason}" for s in self._reader.sources if s.reason)
            self._reader.reason = self.reason  # read by the runner's warning
        elif storage == "rosbag1":
            from perception_fm.replay.ros1 import Ros1Bag

            try:
                self._reader = Ros1Bag(self.path)
            except Exception as error:  # rosbags raises several types for unreadable bags
                raise BagReadError(f"cannot open ROS 1 bag {str(self.path)!r}: {type(error).__name__}: "
                                   f"{_one_line(error)}") from error
        else:
            from rosbags.highlevel import AnyReader

            try:
                self._reader = AnyReader([self.path])
                self._reader.open()
            except Exception as error:  # rosbags raises several types for unreadable bags
                raise BagReadError(f"cannot open bag {str(self.path)!r}: {type(error).__name__}: "
                                   f"{_one_line(error)}") from error

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
        the damaged file, its byte offset and the last good topic and log time when the file is corrupt or
        truncated, after yielding everything before that point."""
        connections = [c for c in self._reader.connections if topics is None or c.topic in topics]
        classes = {id(c): message_class(c.msgtype) for c in connections}
        last = None
        try:
            for connection, timestamp, raw in self._reader.messages(connections=connections):
                cls = classes.get(id(connection)) or message_class(connection.msgtype)
                if cls is None:
                    if unknown is not None:
                        msgtype, count = unknown.get(connection.topic, (connection.msgtype, 0))
                        unknown[connection.topic] = (msgtype, count + 1)
                    definition = (getattr(connection.msgdef, "data", ""), connection.digest)
                    item = BagMessage(connection.topic, connection.msgtype, timestamp, None, bytes(raw), definition)
                else:
                    try:
                        message = deserialize_message(bytes(raw), cls)
                    except Exception as error:  # a payload that is not this type's CDR: damaged
                        raise _PayloadDamage(connection.topic, timestamp, error) from error
                    item = BagMessage(connection.topic, connection.msgtype, timestamp, message)
                last = (connection.topic, timestamp)
                yield item
        except Exception as error:
            before = (f"last good message: topic {last[0]!r} at log time {last[1]} ns" if last
                      else "before the first message")
            if isinstance(error, McapDamage):
                text = f"input {str(error.file)!r} damaged at byte {error.offset}: {error.detail} ({before})"
            elif isinstance(error, _PayloadDamage):
                text = (f"input {str(self.path)!r} damaged: the message on {error.topic!r} at log time "
                        f"{error.timestamp} ns does not deserialise ({type(error.__cause__).__name__}: "
                        f"{_one_line(error.__cause__)}; {before})")
            else:
                text = (f"input {str(self.path)!r} is unreadable ({before}): {type(error).__name__}: "
                        f"{_one_line(error)}")
            self.damage = text
            raise BagReadError(text) from error


class _PayloadDamage(Exception):
    def __init__(self, topic: str, timestamp: int, error: Exception):
        self.topic, self.timestamp = topic, timestamp
        super().__init__(str(error))


def _one_line(error) -> str:
    return " ".join(str(error).split())


def _locate(path: Path) -> tuple[str, list[Path], dict[str, str]]:
    """("mcap" | "rosbags", MCAP files in order, {topic: RIHS01 hash}) of a bag path; BagReadError when the
    path is not a bag."""
    if path.is_file():
        with open(path, "rb") as stream:
            start = stream.read(16)
        if not start:
            raise BagReadError(f"input {str(path)!r} is empty (0 bytes): not a bag")
        if start.startswith(_MCAP_MAGIC[:len(start)]) or path.suffix == ".mcap":
            return "mcap", [path], {}  # a wrong magic is reported with the byte offset by _McapSource
        if start.startswith(_SQLITE_MAGIC):
            return "rosbags", [], {}
        if start.startswith(ROS1_MAGIC[:len(start)]) or path.suffix == ".bag":
            return "rosbag1", [path], {}
        raise BagReadError(f"input {str(path)!r} is not a bag: neither MCAP, SQLite nor ROS 1 (its first bytes are "
                           f"{start[:8]!r}); damaged or another format")
    metadata_file = path / "metadata.yaml"
    if not metadata_file.exists():
        mcaps = sorted(path.glob("*.mcap"))
        if mcaps:  # a recorder killed before it wrote metadata.yaml leaves only its .mcap files
            return "mcap", mcaps, {}
        if list(path.glob("*.db3")):
            raise BagReadError(f"bag directory {str(path)!r} has .db3 files but no metadata.yaml: "
                               "an sqlite3 bag cannot be read without it")
        raise BagReadError(f"{str(path)!r} is not a rosbag2 bag: no metadata.yaml and no .mcap or .db3 files")
    import yaml

    try:
        info = yaml.safe_load(metadata_file.read_text())["rosbag2_bagfile_information"]
        storage = info["storage_identifier"]
        names = list(info["relative_file_paths"])
        digests = {t["topic_metadata"]["name"]: t["topic_metadata"].get("type_description_hash", "")
                   for t in info.get("topics_with_message_count") or []}
        file_compressed = info.get("compression_mode", "").upper() == "FILE"
    except Exception as error:
        mcaps = sorted(path.glob("*.mcap"))
        if mcaps:
            return "mcap", mcaps, {}
        raise BagReadError(f"bag {str(path)!r}: unreadable metadata.yaml ({type(error).__name__}: "
                           f"{_one_line(error)})") from error
    if storage != "mcap" or file_compressed:
        return "rosbags", [], digests
    files = [path / name for name in names]
    missing = [str(f.name) for f in files if not f.exists()]
    if missing:
        raise BagReadError(f"bag {str(path)!r} lacks {', '.join(missing)} named in its metadata.yaml")
    return "mcap", files, digests


@dataclass(eq=False)
class _Connection:
    """The part of rosbags' Connection that BagReader uses, for a channel of one MCAP file."""

    id: int
    topic: str
    msgtype: str
    msgdef: object
    digest: str
    msgcount: int = 0


class _BoundedFile:
    """A read-only file that refuses reads past its end instead of returning short data: a record length
    damaged into something huge then fails at once, instead of reading the rest of a multi-GB file into memory."""

    def __init__(self, path: Path):
        self._file = open(path, "rb")
        self.size = path.stat().st_size
        self.position = 0

    def seek(self, position: int) -> None:
        self.position = self._file.seek(position)

    def tell(self) -> int:
        return self.position

    def read(self, length: int = -1) -> bytes:
        if length < 0:
            length = self.size - self.position
        if self.position + length > self.size:
            raise _PastEnd(self.position, length, self.size)
        data = self._file.read(length)
        self.position += len(data)
        return data

    def close(self) -> None:
        self._file.close()


class _PastEnd(EOFError):
    def __init__(self, position: int, length: int, size: int):
        self.position, self.length, self.size = position, length, size
        super().__init__(f"a read of {length} bytes at byte {position} passes the end of the file ({size} bytes)")


class _McapSource:
    """One MCAP file: its channels and message counts (from its summary, or from a first streaming pass when
    it has none), and its messages (log-time order through the chunk index, or file order as a stream)."""

    def __init__(self, path: Path, digests: dict[str, str]):
        from mcap.reader import SeekingReader

        self.path, self.digests = path, digests
        self.reason = ""  # why the file is read as a stream; "" when read through its index
        self.summary_damage: McapDamage | None = None
        self.connections: dict[int, _Connection] = {}
        self.start_ns, self.end_ns = 0, 0
        self._file = _BoundedFile(path)
        magic = self._file.read(min(8, self._file.size))
        if magic != _MCAP_MAGIC:
            self.close()
            if not magic:
                raise BagReadError(f"input {str(path)!r} is empty (0 bytes): not a bag")
            if _MCAP_MAGIC.startswith(magic):
                raise BagReadError(f"input {str(path)!r} damaged at byte {len(magic)}: the file ends inside "
                                   "MCAP's magic")
            raise BagReadError(f"input {str(path)!r} is not an MCAP file (its first bytes are {magic!r}, not "
                               "MCAP's magic): damaged at byte 0, or not a bag")
        self.summary, self.summary_start = None, 0
        try:
            self._file.seek(0)  # SeekingReader checks the magic where the file stands
            self.summary = SeekingReader(self._file_for_mcap()).get_summary()
            if self.summary is not None:
                self._check_summary_crc()
        except McapDamage as damage:
            self.summary, self.summary_damage = None, damage
            self.reason = f"its summary is damaged at byte {damage.offset} ({damage.detail})"
        except Exception as error:  # no footer (truncated) or a damaged one
            self.summary = None
            self.reason = f"no readable summary ({type(error).__name__}: {_one_line(error) or 'file ends early'})"
        if self.summary is not None and not self.summary.chunk_indexes:
            self.summary, self.reason = None, "no chunk index"
        if self.summary is not None and self.summary.statistics is None:
            self.summary, self.reason = None, "no statistics record"
        if self.summary is not None:
            for channel in self.summary.channels.values():
                self._add_channel(channel, self.summary.schemas.get(channel.schema_id))
            for channel_id, count in self.summary.statistics.channel_message_counts.items():
                if channel_id in self.connections:
                    self.connections[channel_id].msgcount = count
            self.start_ns = self.summary.statistics.message_start_time
            self.end_ns = self.summary.statistics.message_end_time
        else:
            self._first_pass()

    def _file_for_mcap(self):
        """The file as mcap's SeekingReader wants it (seek with a whence, seekable()); reads stay bounded."""
        return _SeekableView(self._file)

    def _check_summary_crc(self) -> None:
        """The footer's CRC over the summary section (mcap's reader does not check it)."""
        from mcap.records import Footer
        from mcap.stream_reader import StreamReader

        footer_at = self._file.size - 8 - 29  # footer record: opcode, length, 2 x u64, u32 CRC
        self._file.seek(footer_at)
        footer = next(StreamReader(self._file_for_mcap(), skip_magic=True).records)
        if not isinstance(footer, Footer):
            return
        self.summary_start = footer.summary_start
        if footer.summary_crc == 0:
            return
        crc, position, end = 0, footer.summary_start, footer_at + 1 + 8 + 8 + 8
        self._file.seek(position)
        while position < end:
            block = self._file.read(min(1 << 20, end - position))
            crc = zlib.crc32(block, crc)
            position += len(block)
        if crc != footer.summary_crc:
            raise McapDamage(self.path, footer.summary_start,
                             f"the summary section's CRC is {crc:#010x}, its footer says {footer.summary_crc:#010x}")

    def _add_channel(self, channel, schema) -> None:
        from rosbags.interfaces import MessageDefinition, MessageDefinitionFormat

        if channel.id in self.connections:
            return
        text = schema.data.decode(errors="replace") if schema else ""
        fmt = MessageDefinitionFormat.IDL if schema and schema.encoding == "ros2idl" else MessageDefinitionFormat.MSG
        self.connections[channel.id] = _Connection(
            channel.id, channel.topic, schema.name if schema else "", MessageDefinition(fmt, text),
            self.digests.get(channel.topic) or channel.metadata.get("rihs01", ""))

    # -- reading as a stream (no index) --------------------------------------------------------------------

    def _stream(self):
        """(record, byte offset) of the file's data section in file order, chunks opened and checked, up to its
        DataEnd record; McapDamage at the first damage. Data-section CRC checked by mcap's StreamReader."""
        from mcap.records import Chunk, DataEnd, Footer, Schema, Channel, Message
        from mcap.stream_reader import StreamReader

        self._file.seek(0)
        reader = StreamReader(self._file, emit_chunks=True, validate_crcs=True, record_size_limit=None)
        records = reader.records
        offset = 8
        while True:
            try:
                record = next(records)
            except StopIteration:
                return
            except _PastEnd as error:
                if offset >= self._file.size:
                    raise McapDamage(self.path, offset, "the file ends there, without its summary (a recorder "
                                     "killed before it closed the bag?)") from error
                raise McapDamage(self.path, offset, f"the record there runs past the end of the file "
                                 f"({self._file.size} bytes): the file is truncated (a recorder killed mid-write?) "
                                 "or the record's length is damaged") from error
            except Exception as error:
                raise McapDamage(self.path, offset, f"{type(error).__name__}: {_one_line(error)}") from error
            if isinstance(record, Chunk):
                yield from ((inner, offset) for inner in self._open_chunk(record, offset))
            elif isinstance(record, (Schema, Channel, Message)):
                yield record, offset
            elif isinstance(record, (DataEnd, Footer)):
                return  # the summary that follows is only an index; the data section was read to its end
            offset = self._file.tell()

    def _open_chunk(self, chunk, offset: int, index=None) -> list:
        """The records of a chunk read at `offset`, checked against its CRC (or, without one, against its
        message-index records) and, when read through the index, against its index entry."""
        from mcap.stream_reader import breakup_chunk

        topics = ""
        if index is not None:
            names = sorted({c.topic for cid, c in self.connections.items() if cid in index.message_index_offsets})
            topics = f" of {', '.join(names)}" if names else ""
        where = f"chunk{topics} (messages logged {chunk.message_start_time}..{chunk.message_end_time} ns)"
        if chunk.compression and chunk.uncompressed_size > _MAX_CHUNK_BYTES:
            raise McapDamage(self.path, offset, f"{where} claims {chunk.uncompressed_size} bytes uncompressed")
        if not chunk.compression and chunk.uncompressed_size != len(chunk.data):
            raise McapDamage(self.path, offset, f"{where}: {len(chunk.data)} bytes, its header says "
                             f"{chunk.uncompressed_size}")
        if index is not None and (index.compression, index.compressed_size, index.uncompressed_size,
                                  index.message_start_time) != (chunk.compression, len(chunk.data),
                                                                chunk.uncompressed_size, chunk.message_start_time):
            raise McapDamage(self.path, offset, f"{where} does not match its index entry")
        try:
            records = breakup_chunk(chunk, validate_crc=True)
        except Exception as error:  # CRCValidationError, a decompression error, or records cut short
            raise McapDamage(self.path, offset, f"{where}: {type(error).__name__}: {_one_line(error)}") from error
        if index is not None and chunk.uncompressed_crc == 0:
            self._check_against_message_indexes(records, index, offset, where)
        return records

    def _check_against_message_indexes(self, records, index, offset: int, where: str) -> None:
        """Without a CRC, a chunk's messages (channel, log time) must be those its message-index records list.
        Damage to payload bytes alone stays undetectable in such a chunk."""
        from mcap.data_stream import ReadDataStream
        from mcap.records import Message, MessageIndex

        found = sorted((r.channel_id, r.log_time) for r in records if isinstance(r, Message))
        listed = []
        for channel_id, at in index.message_index_offsets.items():
            try:
                self._file.seek(at)
                head = self._file.read(9)
                entry = MessageIndex.read(ReadDataStream(self._file)) if head[0] == _OP_MESSAGE_INDEX else None
            except Exception as error:
                raise McapDamage(self.path, at, f"the message index of {where} is unreadable "
                                 f"({type(error).__name__}: {_one_line(error)})") from error
            if entry is None or entry.channel_id != channel_id:
                raise McapDamage(self.path, at, f"the message index of {where} is damaged")
            listed += [(channel_id, log_time) for log_time, _ in entry.records]
        if index.message_index_offsets and sorted(listed) != found:
            raise McapDamage(self.path, offset, f"{where} holds {len(found)} messages, its message indexes list "
                             f"{len(listed)} (the chunk carries no CRC)")

    def _first_pass(self) -> None:
        """Channels and message counts of a file without a summary: one streaming pass, up to its damage."""
        from mcap.records import Channel, Message, Schema

        schemas, counts, messages = {}, {}, 0
        try:
            for record, _ in self._stream():
                if isinstance(record, Schema):
                    schemas[record.id] = record
                elif isinstance(record, Channel):
                    self._add_channel(record, schemas.get(record.schema_id))
                elif isinstance(record, Message):
                    counts[record.channel_id] = counts.get(record.channel_id, 0) + 1
                    self.start_ns = min(self.start_ns or record.log_time, record.log_time)
                    self.end_ns = max(self.end_ns, record.log_time)
                    messages += 1
        except McapDamage as damage:
            if messages == 0:
                self.close()
                raise BagReadError(f"input {str(self.path)!r} damaged at byte {damage.offset} before its first "
                                   f"message: {damage.detail}") from damage
        for channel_id, count in counts.items():
            if channel_id in self.connections:
                self.connections[channel_id].msgcount = count

    # -- messages ------------------------------------------------------------------------------------------

    def messages(self, wanted: set[int], rank: int):
        """(sort key, connection, log time, payload) of the wanted channels' messages."""
        from mcap.records import Channel, Message, Schema

        if self.summary is None:
            schemas = {}
            for record, offset in self._stream():
                if isinstance(record, Schema):
                    schemas[record.id] = record
                elif isinstance(record, Channel):
                    self._add_channel(record, schemas.get(record.schema_id))
                elif isinstance(record, Message) and record.channel_id in wanted:
                    connection = self.connections.get(record.channel_id)
                    if connection is None:
                        raise McapDamage(self.path, offset, f"a message of channel {record.channel_id}, which "
                                         "was never declared")
                    yield (record.log_time, rank, offset, 0), connection, record.log_time, record.data
            if self.summary_damage is not None:  # every message was read; the index after them is damaged
                raise self.summary_damage
            return
        yield from self._indexed_messages(wanted, rank)

    def _indexed_messages(self, wanted: set[int], rank: int):
        """Log-time order through the chunk index, loading a chunk only when its first log time is due: memory
        holds the chunks that overlap in time, not the file. Ties are broken by chunk offset, then position in
        the chunk (rosbags' order)."""
        from mcap.data_stream import ReadDataStream
        from mcap.records import Chunk, Message

        indexes = sorted((i for i in self.summary.chunk_indexes
                          if not i.message_index_offsets or wanted & set(i.message_index_offsets)),
                         key=lambda i: (i.message_start_time, i.chunk_start_offset))
        pending: list = []
        yielded: dict[int, int] = {}
        next_chunk = 0
        while True:
            while next_chunk < len(indexes) and (not pending or (
                    indexes[next_chunk].message_start_time, indexes[next_chunk].chunk_start_offset)
                    <= (pending[0][0][0], pending[0][0][2])):
                index = indexes[next_chunk]
                next_chunk += 1
                offset = index.chunk_start_offset
                self._file.seek(offset)
                head = self._file.read(9) if offset + 9 <= self._file.size else b""
                if len(head) < 9 or head[0] != _OP_CHUNK or struct.unpack("<Q", head[1:])[0] != index.chunk_length - 9:
                    got = f"opcode {head[0]:#04x}, length {struct.unpack('<Q', head[1:])[0]}" if head else "nothing"
                    raise McapDamage(self.path, offset, f"the chunk record its index points to is damaged ({got}; "
                                     f"expected opcode {_OP_CHUNK:#04x}, length {index.chunk_length - 9})")
                try:
                    chunk = Chunk.read(ReadDataStream(self._file))
                except Exception as error:
                    raise McapDamage(self.path, offset, f"chunk unreadable: {type(error).__name__}: "
                                     f"{_one_line(error)}") from error
                for position, record in enumerate(self._open_chunk(chunk, offset, index)):
                    if isinstance(record, Message) and record.channel_id in wanted:
                        connection = self.connections.get(record.channel_id)
                        if connection is None:
                            raise McapDamage(self.path, offset, f"a message of channel {record.channel_id}, "
                                             "which the summary does not declare")
                        heapq.heappush(pending, ((record.log_time, rank, offset, position), connection, record))
            if not pending:
                break
            key, connection, record = heapq.heappop(pending)
            yielded[record.channel_id] = yielded.get(record.channel_id, 0) + 1
            yield key, connection, record.log_time, record.data
        for channel_id in wanted:
            expected = self.summary.statistics.channel_message_counts.get(channel_id, 0)
            if yielded.get(channel_id, 0) != expected:
                raise McapDamage(self.path, self.summary_start,
                                 f"{self.connections[channel_id].topic!r} has {yielded.get(channel_id, 0)} messages "
                                 f"in the indexed chunks, its statistics count {expected}")

    def close(self) -> None:
        self._file.close()


class _SeekableView:
    """_BoundedFile with the io interface mcap's SeekingReader uses (seek(offset, whence), seekable())."""

    def __init__(self, file: _BoundedFile):
        self._file = file

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        position = offset if whence == 0 else self._file.position + offset if whence == 1 else self._file.size + offset
        if position < 0:
            raise _PastEnd(0, -position, self._file.size)
        self._file.seek(position)
        return position

    def tell(self) -> int:
        return self._file.tell()

    def read(self, length: int = -1) -> bytes:
        return self._file.read(length)


class _McapBag:
    """The part of rosbags' AnyReader that BagReader uses, over the MCAP files of one bag."""

    def __init__(self, files: list[Path], digests: dict[str, str]):
        self.sources: list[_McapSource] = []
        self.reason = ""
        try:
            for path in files:
                self.sources.append(_McapSource(path, digests))
        except BaseException:
            self.close()
            raise

    @property
    def connections(self) -> list[_Connection]:
        return [c for source in self.sources for c in source.connections.values()]

    @property
    def duration(self) -> int:
        starts = [s.start_ns for s in self.sources if s.end_ns]
        return max(s.end_ns for s in self.sources) - min(starts) + 1 if starts else 0

    def messages(self, connections=()):
        """(connection, log time, payload) in log-time order across files (split bags follow each other)."""
        chosen = {id(c) for c in connections} if connections else None
        streams = []
        for rank, source in enumerate(self.sources):
            wanted = {cid for cid, c in source.connections.items() if chosen is None or id(c) in chosen}
            if wanted:
                streams.append(source.messages(wanted, rank))
        for _, connection, log_time, data in heapq.merge(*streams, key=lambda item: item[0]):
            yield connection, log_time, data

    def close(self) -> None:
        for source in self.sources:
            source.close()


class _McapStorage:
    """rosbags' MCAP storage-plugin interface, written through mcap's Writer: chunk and summary CRCs (rosbags'
    own MCAP writer leaves them 0, so damage to what it wrote could not be detected)."""

    def __init__(self, path: Path, compression, chunk_size: int = 1 << 20):
        from importlib.metadata import version

        from mcap.writer import CompressionType, Writer
        from rosbags.rosbag2.enums import CompressionMode

        self.path = path / f"{path.name}.mcap"
        self._file = self.path.open("xb")
        # Chunk and summary CRCs, as `ros2 bag record` writes them. No data-section CRC: it would cover the
        # rosbag2 metadata record, which names the file, so two identical bags under different names would
        # differ in more than that name (the sample bag is meant to be byte-identical but for it).
        self._writer = Writer(self._file, chunk_size=chunk_size, enable_crcs=True, enable_data_crcs=False,
                              compression=CompressionType.ZSTD if compression == CompressionMode.STORAGE
                              else CompressionType.NONE)
        self._writer.start(profile="ros2", library=f"perception_fm (mcap {version('mcap')})")
        self._schemas: dict[str, int] = {}
        self._channels: dict[int, int] = {}

    def add_msgtype(self, connection) -> None:
        from rosbags.interfaces import MessageDefinitionFormat

        encoding = "ros2msg" if connection.msgdef.format == MessageDefinitionFormat.MSG else "ros2idl"
        self._schemas[connection.msgtype] = self._writer.register_schema(
            connection.msgtype, encoding, connection.msgdef.data.encode())

    def add_connection(self, connection, offered_qos_profiles: str) -> None:
        self._channels[connection.id] = self._writer.register_channel(
            connection.topic, connection.ext.serialization_format, self._schemas[connection.msgtype],
            {"offered_qos_profiles": offered_qos_profiles})

    def write(self, connection, timestamp: int, data) -> None:
        self._writer.add_message(self._channels[connection.id], log_time=timestamp, data=bytes(data),
                                 publish_time=timestamp)

    def close(self, version: int, metadata: str) -> None:
        self._writer.add_metadata("rosbag2", {"serialized_metadata": metadata})
        self._writer.finish()
        self._file.close()

    def abort(self) -> None:
        self._file.close()


def rosbag2_writer(path: str | Path, *, chunk_size: int = 1 << 20, **options):
    """rosbags' rosbag2 Writer (MCAP storage) whose MCAP file is written with CRCs (see _McapStorage)."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    writer = Writer(Path(path), version=options.pop("version", 9), storage_plugin=StoragePlugin.MCAP, **options)
    writer.STORAGE_PLUGINS = {**Writer.STORAGE_PLUGINS, StoragePlugin.MCAP: partial(_McapStorage, chunk_size=chunk_size)}
    return writer


class BagWriter:
    """Writes rclpy messages to a new rosbag2 MCAP bag directory. `compress`: zstd-compressed chunks (MCAP's
    own chunk compression, which `ros2 bag` and Foxglove read), for bags of many images."""

    def __init__(self, path: str | Path, *, chunk_size: int = 1 << 20, compress: bool = False):
        self.path = Path(path)
        self._store = typestore()
        self._writer = rosbag2_writer(self.path, chunk_size=chunk_size)
        if compress:
            from rosbags.rosbag2.enums import CompressionFormat, CompressionMode

            self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
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
