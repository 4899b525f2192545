"""ROS 1 bags (.bag, format 2.0) read as if they were rosbag2: every message converted to its ROS 2 type's CDR.

rosbags reads the file (rosbags.rosbag1.Reader) and names types the ROS 2 way ("sensor_msgs/Image" becomes
"sensor_msgs/msg/Image"). Types are then mapped to their ROS 2 counterparts: tf/tfMessage (ROS 1's old TF
message) becomes tf2_msgs/msg/TFMessage, everything else keeps its name. Where the ROS 1 layout is the ROS 2
one on the wire (Image, CameraInfo, TF, poses, strings: std_msgs/Header's `seq` is the one difference and
rosbags' ROS 1 codec handles it) the payload is re-encoded directly (ros1_to_cdr); where the layouts differ
(a ROS 2 type that gained fields) the message is migrated field by field with rosbags' own converter (fields
matched by name and type, new fields at their defaults). A type without a ROS 2 definition here keeps its
ROS 1 definition and is passed through (BagReader counts it as unknown)."""
from __future__ import annotations

from functools import partial
from pathlib import Path

ROS1_MAGIC = b"#ROSBAG V2.0\n"
RENAMES = {"tf/msg/tfMessage": "tf2_msgs/msg/TFMessage"}  # ROS 1's own TF type; same layout


class Ros1Bag:
    """The part of rosbags' AnyReader that BagReader uses, over one ROS 1 bag; payloads come out as ROS 2 CDR
    of the ROS 2 type named by each connection's `msgtype`."""

    def __init__(self, path: Path):
        from rosbags.rosbag1 import Reader
        from rosbags.typesys import Stores, get_types_from_msg, get_typestore

        from perception_fm.replay.bag_io import _Connection, typestore

        self.path = path
        self.reason = ""
        self._reader = Reader(path)
        self._reader.open()
        try:
            source = get_typestore(Stores.EMPTY)  # the bag's own ROS 1 definitions
            for connection in self._reader.connections:
                source.register(get_types_from_msg(connection.msgdef.data, connection.msgtype))
            target = typestore()  # ROS 2 (+ this package's messages)
            unknown = {name: fields for name, fields in source.fielddefs.items()
                       if RENAMES.get(name, name) not in target.fielddefs}
            target.register(unknown)  # passed through in their ROS 1 layout (their definitions go with them)
            counts: dict[int, int] = {}
            for chunk in self._reader.chunk_infos:
                for connection_id, count in chunk.connection_counts.items():
                    counts[connection_id] = counts.get(connection_id, 0) + count
            self.connections: list[_Connection] = []
            self._convert: dict[int, object] = {}
            self._ros1 = {}
            for ros1 in self._reader.connections:
                msgtype = RENAMES.get(ros1.msgtype, ros1.msgtype)
                if ros1.msgtype in unknown:
                    msgdef = _Definition(target.generate_msgdef(msgtype, ros_version=2)[0])
                    digest = target.hash_rihs01(msgtype)
                else:
                    msgdef, digest = _Definition(""), ""  # an installed type: rclpy knows it
                connection = _Connection(ros1.id, ros1.topic, msgtype, msgdef, digest, counts.get(ros1.id, 0))
                self.connections.append(connection)
                self._ros1[id(connection)] = ros1
                self._convert[id(connection)] = _converter(source, target, ros1.msgtype, msgtype)
        except BaseException:
            self._reader.close()
            raise

    @property
    def duration(self) -> int:
        return self._reader.duration

    def messages(self, connections=()):
        """(connection, log time, ROS 2 CDR payload) in log-time order."""
        chosen = list(connections) or self.connections
        by_ros1 = {id(self._ros1[id(c)]): c for c in chosen}
        for ros1, timestamp, raw in self._reader.messages(connections=[self._ros1[id(c)] for c in chosen]):
            connection = by_ros1[id(ros1)]
            yield connection, timestamp, self._convert[id(connection)](raw)

    def close(self) -> None:
        self._reader.close()


class _Definition:
    """What BagReader reads of a connection's message definition (its text)."""

    def __init__(self, data: str):
        self.data = data


def _converter(source, target, ros1_type: str, ros2_type: str):
    """ROS 1 payload -> ROS 2 CDR payload of `ros2_type`."""
    from rosbags.convert.converter import is_same_wireformat, migrate_message

    if is_same_wireformat(source, target, ros1_type, ros2_type):
        return partial(target.ros1_to_cdr, typename=ros2_type)
    cache: dict = {}

    def migrate(raw) -> memoryview:
        message = migrate_message(source, target, ros1_type, ros2_type, cache, source.deserialize_ros1(raw, ros1_type))
        return target.serialize_cdr(message, ros2_type)

    return migrate
