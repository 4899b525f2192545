"""ROS 1 bags read directly by replay and eval: the synthetic sample written as a real ROS 1 bag (rosbags' rosbag1
writer, ROS 1 Noetic message layouts: Header with seq, CameraInfo's upper-case D/K/R/P, /tf as tf/tfMessage)
reads back as the same ROS 2 messages as the MCAP sample, and replays and evaluates to the same results."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from perception_fm.cli import main
from perception_fm.eval.runner import evaluate
from perception_fm.graph import load_graph
from perception_fm.replay.bag_io import BagReader, BagReadError
from perception_fm.replay.runner import replay
from perception_fm.replay.synthetic import SampleConfig, write_sample_bag

SAMPLE = SampleConfig(width=64, height=48, frames=5)


def _ros1_store():
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS1_NOETIC)
    for name in ("tf/msg/tfMessage", "tf2_msgs/msg/TFMessage"):  # not in rosbags' Noetic store
        store.register(get_types_from_msg("geometry_msgs/TransformStamped[] transforms", name))
    return store


def _ros1_message(store, msgtype: str, message, seq: int):
    """The ROS 1 message of a ROS 2 (rclpy) one, built field by field in ROS 1's layout."""
    t = store.types

    def header(h):
        return t["std_msgs/msg/Header"](seq=seq, stamp=t["builtin_interfaces/msg/Time"](
            sec=h.stamp.sec, nanosec=h.stamp.nanosec), frame_id=h.frame_id)

    def vec(v, kind):
        return t[kind](x=v.x, y=v.y, z=v.z)

    def quat(q):
        return t["geometry_msgs/msg/Quaternion"](x=q.x, y=q.y, z=q.z, w=q.w)

    if msgtype == "sensor_msgs/msg/Image":
        return t[msgtype](header=header(message.header), height=message.height, width=message.width,
                          encoding=message.encoding, is_bigendian=message.is_bigendian, step=message.step,
                          data=np.frombuffer(bytes(message.data), np.uint8))
    if msgtype == "sensor_msgs/msg/CameraInfo":
        roi = message.roi
        return t[msgtype](header=header(message.header), height=message.height, width=message.width,
                          distortion_model=message.distortion_model, D=np.array(message.d, float),
                          K=np.array(message.k, float), R=np.array(message.r, float), P=np.array(message.p, float),
                          binning_x=message.binning_x, binning_y=message.binning_y,
                          roi=t["sensor_msgs/msg/RegionOfInterest"](x_offset=roi.x_offset, y_offset=roi.y_offset,
                                                                    height=roi.height, width=roi.width,
                                                                    do_rectify=roi.do_rectify))
    if msgtype == "geometry_msgs/msg/PoseStamped":
        pose = t["geometry_msgs/msg/Pose"](position=vec(message.pose.position, "geometry_msgs/msg/Point"),
                                           orientation=quat(message.pose.orientation))
        return t[msgtype](header=header(message.header), pose=pose)
    if msgtype in ("tf/msg/tfMessage", "tf2_msgs/msg/TFMessage"):
        return t[msgtype](transforms=[t["geometry_msgs/msg/TransformStamped"](
            header=header(x.header), child_frame_id=x.child_frame_id,
            transform=t["geometry_msgs/msg/Transform"](translation=vec(x.transform.translation,
                                                                        "geometry_msgs/msg/Vector3"),
                                                       rotation=quat(x.transform.rotation)))
            for x in message.transforms])
    if msgtype == "std_msgs/msg/String":
        return t[msgtype](data=message.data)
    raise AssertionError(f"no ROS 1 builder for {msgtype}")


def write_ros1_copy(mcap_bag, path, extra=None):
    """The bag's messages as a ROS 1 bag (/tf as tf/tfMessage, /tf_static latched as tf2_msgs/TFMessage)."""
    from rosbags.rosbag1 import Writer

    store = _ros1_store()
    with BagReader(mcap_bag) as reader, Writer(path) as writer:
        connections, seqs = {}, {}
        for item in reader.messages():
            msgtype = "tf/msg/tfMessage" if item.topic == "/tf" else item.msgtype
            if item.topic not in connections:
                connections[item.topic] = writer.add_connection(
                    item.topic, msgtype, typestore=store,
                    latching=1 if item.topic in ("/tf_static", "/gt/instance_labels") else None)
            seqs[item.topic] = seqs.get(item.topic, -1) + 1
            message = _ros1_message(store, msgtype, item.message, seqs[item.topic])
            writer.write(connections[item.topic], item.timestamp_ns, store.serialize_ros1(message, msgtype))
        if extra is not None:
            extra(writer)
    return path


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("ros1")
    mcap = root / "sample"
    write_sample_bag(mcap, SAMPLE)
    return mcap, write_ros1_copy(mcap, root / "sample.bag")


def by_topic(path):
    with BagReader(path) as reader:
        topics = reader.topics
        counts = {topic: reader.count(topic) for topic in topics}
        messages: dict[str, list] = {}
        for item in reader.messages():
            messages.setdefault(item.topic, []).append((item.timestamp_ns, item.message))
    return topics, counts, messages


def test_a_ros1_bag_reads_as_the_same_ros2_messages(bags):
    mcap, ros1 = bags
    with open(ros1, "rb") as stream:
        assert stream.read(13) == b"#ROSBAG V2.0\n"  # a real ROS 1 bag, not rosbag2 in disguise
    topics, counts, messages = by_topic(ros1)
    assert topics["/tf"] == "tf2_msgs/msg/TFMessage"  # ROS 1's tf/tfMessage converted
    assert topics["/camera/color/camera_info"] == "sensor_msgs/msg/CameraInfo"
    assert (topics, counts) == by_topic(mcap)[:2]
    # the same ROS 2 messages, field for field, at the same log times (header seq dropped, D/K/R/P -> d/k/r/p)
    assert messages == by_topic(mcap)[2]


def graph_file(tmp_path, checkpoint):
    document = {"nodes": {"depth_node": {
        "remappings": {"image": "/camera/color/image_raw", "camera_info": "/camera/color/camera_info"},
        "parameters": {"weights": str(checkpoint), "process_res": 56, "window_size": 3, "keyframe_every": 1,
                       "anchor_frame": "odom"}}}}
    path = tmp_path / "graph.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_replay_and_eval_of_a_ros1_bag_equal_those_of_the_mcap_bag(tmp_path, bags, da3_small_checkpoint):
    mcap, ros1 = bags
    graph = load_graph(graph_file(tmp_path, da3_small_checkpoint))
    from_mcap = replay(mcap, graph, tmp_path / "out_mcap", progress=False)
    from_ros1 = replay(ros1, graph, tmp_path / "out_ros1", progress=False)
    assert from_ros1.nodes[0]["processed"] == SAMPLE.frames and from_ros1.bag_error is None
    assert from_ros1.outputs == from_mcap.outputs and from_ros1.unknown_types == {}
    assert ({k: v for k, v in from_ros1.nodes[0].items() if k != "inference_ms"}
            == {k: v for k, v in from_mcap.nodes[0].items() if k != "inference_ms"})
    _, _, out_mcap = by_topic(tmp_path / "out_mcap")
    _, _, out_ros1 = by_topic(tmp_path / "out_ros1")
    assert out_ros1["/depth/image"] == out_mcap["/depth/image"] and len(out_ros1["/depth/image"]) == SAMPLE.frames
    assert out_ros1["/tf"] == out_mcap["/tf"]
    rows_mcap = {(r.group, r.name, r.variant): r.value for r in evaluate(tmp_path / "out_mcap").rows}
    rows_ros1 = {(r.group, r.name, r.variant): r.value for r in evaluate(tmp_path / "out_ros1").rows}
    assert rows_ros1 == rows_mcap and any(group == "depth" for group, _, _ in rows_ros1)
    # eval takes the ROS 1 bag itself as the ground truth too
    rows_gt = {(r.group, r.name, r.variant): r.value for r in evaluate(tmp_path / "out_mcap", ros1).rows}
    assert rows_gt == rows_mcap


def test_a_ros1_type_without_ros2_definition_passes_through_counted(tmp_path, bags):
    mcap, _ = bags
    from rosbags.typesys import get_types_from_msg

    def extra(writer):
        store = _ros1_store()
        store.register(get_types_from_msg("int32 level\nstring note", "my_robot/msg/Battery"))
        connection = writer.add_connection("/battery", "my_robot/msg/Battery", typestore=store)
        message = store.types["my_robot/msg/Battery"](level=7, note="ok")
        writer.write(connection, 1_700_000_000 * 10**9, store.serialize_ros1(message, "my_robot/msg/Battery"))

    path = write_ros1_copy(mcap, tmp_path / "extra.bag", extra)
    unknown = {}
    with BagReader(path) as reader:
        items = [item for item in reader.messages(unknown=unknown) if item.topic == "/battery"]
    assert unknown == {"/battery": ("my_robot/msg/Battery", 1)}
    assert items[0].message is None and "int32 level" in items[0].definition[0]
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    store.register(get_types_from_msg("int32 level\nstring note", "my_robot/msg/Battery"))
    decoded = store.deserialize_cdr(items[0].raw, "my_robot/msg/Battery")  # ROS 2 CDR of the ROS 1 message
    assert (decoded.level, decoded.note) == (7, "ok")


def test_a_truncated_ros1_bag_is_a_one_line_error(tmp_path, bags, capsys):
    _, ros1 = bags
    data = ros1.read_bytes()
    cut = tmp_path / "cut.bag"
    cut.write_bytes(data[: len(data) // 2])  # a recorder killed mid-write: no index at the end
    with pytest.raises(BagReadError) as error:
        with BagReader(cut) as reader:
            list(reader.messages())
    assert "cut.bag" in str(error.value) and "\n" not in str(error.value)
    config = tmp_path / "graph.yaml"
    config.write_text(yaml.safe_dump({"nodes": {"depth_node": {"parameters": {"model": "da3-small"}}}}))
    assert main(["replay", str(cut), "--config", str(config), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "o").exists()
