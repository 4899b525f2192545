"""Offline replay: the synthetic sample bag through depth_node's handler into an output MCAP bag."""
import json

import numpy as np
import pytest
import yaml

from perception_fm.cli import main
from perception_fm.graph import load_graph
from perception_fm.replay.bag_io import BagReader, BagWriter, message_class
from perception_fm.replay.runner import REPORT_FILE, ReplayError, replay
from perception_fm.replay.synthetic import SampleConfig, camera_to_world, write_sample_bag
from perception_fm.ros.image_codec import image_to_numpy, numpy_to_image
from perception_fm.ros.tf import stamp_to_ns, transform_to_matrix

SAMPLE = SampleConfig(width=64, height=48, frames=6)


@pytest.fixture(scope="module")
def sample_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("sample") / "bag"
    write_sample_bag(path, SAMPLE)
    return path


def graph_file(tmp_path, checkpoint, **parameters):
    document = {"nodes": {"depth_node": {
        "remappings": {"image": "/camera/color/image_raw", "camera_info": "/camera/color/camera_info"},
        "parameters": {"weights": str(checkpoint), "process_res": 56, "window_size": 3, "keyframe_every": 1,
                       "anchor_frame": "odom", **parameters}}}}
    path = tmp_path / "graph.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def read_all(path):
    with BagReader(path) as reader:
        return [(m.topic, m.timestamp_ns, m.message) for m in reader.messages()]


def test_replay_writes_every_output_stamped_like_its_input(tmp_path, sample_bag, da3_small_checkpoint):
    out = tmp_path / "out"
    report = replay(sample_bag, load_graph(graph_file(tmp_path, da3_small_checkpoint)), out, progress=False)
    node = report.nodes[0]
    assert node["frames"] == node["processed"] == 6 and node["dropped"] == {}
    assert node["weights"] == str(da3_small_checkpoint)
    for topic in ("/depth/image", "/depth/info", "/depth/camera_info", "/depth/confidence", "/points",
                  "/camera_path"):
        assert report.outputs[topic] == 6, topic
    assert report.outputs["/camera/color/image_raw"] == 6  # inputs passed through
    assert json.loads((out / REPORT_FILE).read_text())["nodes"][0]["processed"] == 6

    messages = read_all(out)
    inputs = {stamp_to_ns(m.header.stamp): t for topic, t, m in messages if topic == "/camera/color/image_raw"}
    depths = [(t, m) for topic, t, m in messages if topic == "/depth/image"]
    for log_time, depth in depths:
        assert inputs[stamp_to_ns(depth.header.stamp)] == log_time  # written at its input's log time
        assert depth.encoding == "32FC1" and (depth.height, depth.width) == (42, 56)
        assert depth.header.frame_id == SAMPLE.camera_frame
        assert np.all(image_to_numpy(depth) > 0)
    infos = [m for topic, _, m in messages if topic == "/depth/info"]
    assert [i.window_size for i in infos] == [1, 2, 3, 3, 3, 3] and all(i.weights for i in infos)
    # the sample bag logs each image just before its camera_info (same instant): frame 0 too waits for and
    # uses the bag's intrinsics, not the model's own (a flat cloud); every frame paired by stamp, no fallback
    bag_k = {stamp_to_ns(m.header.stamp): np.reshape(m.k, (3, 3)) for topic, _, m in read_all(sample_bag)
             if topic == "/camera/color/camera_info"}
    depth_infos = sorted((stamp_to_ns(m.header.stamp), np.reshape(m.k, (3, 3))) for topic, _, m in messages
                         if topic == "/depth/camera_info")
    assert len(depth_infos) == 6
    for stamp, k in depth_infos:
        np.testing.assert_allclose(k[0, 0], bag_k[stamp][0, 0] * 56 / 64, rtol=1e-6)
    assert node["events"] == {}  # no camera_info_latest_used, no no_camera_info
    # the configured parameters, not one frame's values (frame 0's DepthInfo says window_size 1)
    assert node["parameters"]["window_size"] == 3 and node["parameters"]["process_res"] == 56

    estimates = [t for topic, _, m in messages if topic == "/tf" for t in m.transforms
                 if t.child_frame_id == "da3_camera"]
    assert len(estimates) == 6 and {t.header.frame_id for t in estimates} == {"da3_world"}
    # anchor_frame: da3_world starts at the camera's first pose in odom (from the bag's own TF)
    anchors = [t for topic, _, m in messages if topic == "/tf_static" for t in m.transforms
               if t.child_frame_id == "da3_world"]
    assert len(anchors) == 1 and anchors[0].header.frame_id == "odom"
    np.testing.assert_allclose(transform_to_matrix(anchors[0].transform), camera_to_world(SAMPLE, 0), atol=1e-9)


def test_replay_is_deterministic(tmp_path, sample_bag, da3_small_checkpoint):
    graph = load_graph(graph_file(tmp_path, da3_small_checkpoint, pose_method="ray"))
    runs = []
    for name in ("a", "b"):
        replay(sample_bag, graph, tmp_path / name, progress=False)
        # Messages with equal log times may come back from the reader in either order. Compare messages, not
        # CDR bytes: serialisers leave alignment padding uninitialised.
        runs.append(sorted(read_all(tmp_path / name), key=lambda item: (item[0], item[1], repr(item[2]))))
    assert len(runs[0]) > 40 and runs[0] == runs[1]


def test_bad_frames_in_a_bag_are_counted_and_the_rest_processed(tmp_path, sample_bag, da3_small_checkpoint):
    bag = tmp_path / "mixed"
    with BagReader(sample_bag) as reader, BagWriter(bag) as writer:
        for item in reader.messages():
            if item.topic == "/camera/color/image_raw" and stamp_to_ns(item.message.header.stamp) == \
                    SAMPLE.start_ns + 200_000_000:
                bad = numpy_to_image(np.zeros((48, 64), np.float32), "32FC1", item.message.header)
                writer.write(item.topic, bad, item.timestamp_ns)
            elif item.topic == "/camera/color/camera_info" and stamp_to_ns(item.message.header.stamp) == \
                    SAMPLE.start_ns + 300_000_000:
                item.message.width = 640
                writer.write(item.topic, item.message, item.timestamp_ns)
            else:
                writer.write(item.topic, item.message, item.timestamp_ns)
    report = replay(bag, load_graph(graph_file(tmp_path, da3_small_checkpoint)), tmp_path / "out", progress=False)
    node = report.nodes[0]
    assert node["dropped"] == {"encoding": 1, "size_mismatch": 1} and node["processed"] == 4
    assert any("encoding" in error for error in node["errors"]) and any("640" in e for e in node["errors"])


def test_missing_image_topic_is_a_clear_error(tmp_path, sample_bag, da3_small_checkpoint):
    path = graph_file(tmp_path, da3_small_checkpoint)
    document = yaml.safe_load(path.read_text())
    document["nodes"]["depth_node"]["remappings"]["image"] = "/front/image_raw"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ReplayError, match="'/front/image_raw'.*not in the bag.*/camera/color/image_raw"):
        replay(sample_bag, load_graph(path), tmp_path / "out", progress=False)


def test_cli_replay_with_random_weights_labels_its_outputs(tmp_path, sample_bag, capsys):
    config = tmp_path / "graph.yaml"
    config.write_text(yaml.safe_dump({"nodes": {"depth_node": {
        "remappings": {"image": "/camera/color/image_raw"},  # no camera_info: predicted intrinsics
        "parameters": {"process_res": 28}}}}))
    assert main(["replay", str(sample_bag), "--config", str(config), "--out", str(tmp_path / "out"),
                 "--random-weights", "--quiet"]) == 0
    printed = capsys.readouterr()
    assert "RANDOM WEIGHTS" in printed.out and "6/6 frames" in printed.out
    assert "no '/camera_info'" in printed.err
    infos = [m for topic, _, m in read_all(tmp_path / "out") if topic == "/depth/info"]
    assert len(infos) == 6 and {i.weights for i in infos} == {"random-init"}
    assert main(["replay", str(sample_bag), "--config", str(config), "--out", str(tmp_path / "out"),
                 "--random-weights", "--quiet"]) == 2  # never overwrites unless asked to
    assert "--overwrite" in capsys.readouterr().err
    (tmp_path / "out" / "stale_marker").write_text("from the first run")
    assert main(["replay", str(sample_bag), "--config", str(config), "--out", str(tmp_path / "out"),
                 "--random-weights", "--quiet", "--overwrite"]) == 0
    assert not (tmp_path / "out" / "stale_marker").exists() and (tmp_path / "out" / REPORT_FILE).is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_an_interrupted_replay_leaves_no_output_and_does_not_block_the_next(tmp_path, sample_bag,
                                                                           da3_small_checkpoint, monkeypatch):
    from perception_fm.replay import runner

    graph = load_graph(graph_file(tmp_path, da3_small_checkpoint))
    out = tmp_path / "out"
    written = []
    real_write = BagWriter.write

    def interrupted(self, *args, **kwargs):  # Ctrl-C in the middle of the run
        written.append(args[0])
        if len(written) == 20:
            raise KeyboardInterrupt
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(BagWriter, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        replay(sample_bag, graph, out, progress=False)
    monkeypatch.undo()
    assert not out.exists() and list(tmp_path.glob(".out*")) == []
    (tmp_path / ".out.partial").mkdir()  # what a killed (SIGKILL) run leaves: removed by the next run
    (tmp_path / ".out.partial" / "junk.mcap").write_bytes(b"half a bag")
    report = replay(sample_bag, graph, out, progress=False)
    assert report.nodes[0]["processed"] == 6 and report.output_bag == str(out)
    assert list(tmp_path.glob(".out*")) == [] and (out / REPORT_FILE).is_file()
    assert runner.REPORT_FILE == REPORT_FILE


def test_progress_prints_plain_lines_when_not_a_terminal(monkeypatch):
    import io

    from perception_fm.replay.runner import _Progress

    stream = io.StringIO()  # not a tty: a CI log or a pipe
    monkeypatch.setattr(_Progress, "PLAIN_PERIOD_S", 0.0)
    progress = _Progress(3, True, stream)
    for _ in range(3):
        progress.step()
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("replay: frame 3/3") and "\r" not in stream.getvalue()
    quiet = io.StringIO()
    silent = _Progress(3, False, quiet)
    silent.step()
    assert quiet.getvalue() == ""


def test_bag_io_round_trips_our_own_message_types(tmp_path):
    from perception_fm.msg import DepthInfo

    info = DepthInfo(model="m", weights="w", is_metric=True, scale=2.5, window_size=3)
    info.header.frame_id = "cam"
    with BagWriter(tmp_path / "bag") as writer:
        writer.write("/depth/info", info, 5)
    [(topic, t, message)] = read_all(tmp_path / "bag")
    assert (topic, t) == ("/depth/info", 5) and message == info
    assert message_class("perception_fm/msg/DepthInfo") is DepthInfo and message_class("nope_msgs/msg/X") is None


def test_depth_and_concept_nodes_chain_offline(tmp_path, da3_small_checkpoint):
    """depth_node then concept_node in one graph: the concept node gets the depth of the same frame from the
    node before it, concepts from its parameter and from the bag's /concepts topic."""
    from std_msgs.msg import String

    from scripted_segmentation import SAMPLE as SCRIPTED_SAMPLE, use_in_default_manager

    use_in_default_manager()
    sample = SampleConfig(width=SCRIPTED_SAMPLE.width, height=SCRIPTED_SAMPLE.height, frames=6)
    bag = tmp_path / "bag"
    write_sample_bag(bag, sample)
    with_commands = tmp_path / "with_commands"
    with BagReader(bag) as reader, BagWriter(with_commands) as writer:
        for item in reader.messages():
            writer.write(item.topic, item.message, item.timestamp_ns)
            if item.topic == "/camera/color/camera_info" and item.timestamp_ns == sample.start_ns + 200_000_000:
                writer.write("/concepts", String(data="blue box"), item.timestamp_ns)
    config = tmp_path / "graph.yaml"
    config.write_text(yaml.safe_dump({"nodes": {
        "depth_node": {"remappings": {"image": "/camera/color/image_raw", "camera_info": "/camera/color/camera_info"},
                       "parameters": {"weights": str(da3_small_checkpoint), "process_res": 56}},
        "concept_node": {"remappings": {"image": "/camera/color/image_raw"},
                         "parameters": {"model": "scripted-segmentation", "concepts": "red ball", "use_depth": True,
                                        "confirmation_frames": 1}}}}))
    report = replay(with_commands, load_graph(config), tmp_path / "out", progress=False)
    concept_report = report.nodes[1]
    assert concept_report["processed"] == 6 and concept_report["events"].get("no_depth", 0) == 0
    arrays = [m for topic, _, m in read_all(tmp_path / "out") if topic == "/instances"]
    assert len(arrays) == 6
    assert list(arrays[0].concepts) == ["red ball"] and list(arrays[-1].concepts) == ["red ball", "blue box"]
    assert {i.concept for i in arrays[-1].instances} == {"red ball", "blue box"}
    assert all(i.has_position and i.position.z > 0 for i in arrays[-1].instances)
    assert report.outputs["/instances/overlay"] == 6 and report.outputs["/instances/labels"] == 6


def test_truncated_bag_processes_what_precedes_the_damage(tmp_path, sample_bag, da3_small_checkpoint):
    damaged = tmp_path / "damaged"
    with BagReader(sample_bag) as reader, BagWriter(damaged, chunk_size=16 * 1024) as writer:  # several chunks
        for item in reader.messages():
            writer.write(item.topic, item.message, item.timestamp_ns, latched=item.topic == "/tf_static")
    [mcap] = damaged.glob("*.mcap")
    data = mcap.read_bytes()
    mcap.write_bytes(data[: int(len(data) * 0.6)])  # a recorder killed mid-write: no footer, cut record
    out = tmp_path / "out"
    report = replay(damaged, load_graph(graph_file(tmp_path, da3_small_checkpoint)), out, progress=False)
    assert report.bag_error and "damaged at byte" in report.bag_error and "last good message" in report.bag_error
    assert any("no index" in warning for warning in report.warnings)
    processed = report.nodes[0]["processed"]
    assert 1 <= processed < 6
    depth = [m for topic, _, m in read_all(out) if topic == "/depth/image"]
    assert len(depth) == processed  # the output bag is complete and readable
    code = main(["replay", str(damaged), "--config", str(graph_file(tmp_path, da3_small_checkpoint)), "--out",
                 str(tmp_path / "out2"), "--quiet"])
    assert code == 2  # a damaged input fails the run, after the output was written


def test_unknown_types_pass_through_and_sqlite3_bags_are_read(tmp_path, sample_bag, da3_small_checkpoint):
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    store.register(get_types_from_msg("int32 size\nstring name\n", "acme_msgs/msg/Widget"))
    widget_type = store.types["acme_msgs/msg/Widget"]
    bag = tmp_path / "sqlite"
    with BagReader(sample_bag) as reader, Writer(bag, version=9, storage_plugin=StoragePlugin.SQLITE3) as writer:
        connections = {}
        for item in reader.messages():
            if item.topic not in connections:
                connections[item.topic] = writer.add_connection(item.topic, item.msgtype, typestore=store)
            from rclpy.serialization import serialize_message
            writer.write(connections[item.topic], item.timestamp_ns, serialize_message(item.message))
        widget = writer.add_connection("/widget", "acme_msgs/msg/Widget", typestore=store)
        payload = store.serialize_cdr(widget_type(size=7, name="gear"), "acme_msgs/msg/Widget")
        writer.write(widget, SAMPLE.start_ns, payload)
    assert list(bag.glob("*.db3"))
    out = tmp_path / "out"
    report = replay(bag, load_graph(graph_file(tmp_path, da3_small_checkpoint)), out, progress=False)
    assert report.nodes[0]["processed"] == 6 and report.unknown_types == {"/widget": ["acme_msgs/msg/Widget", 1]}
    with BagReader(out) as reader:
        [item] = [m for m in reader.messages(topics={"/widget"})]
    assert item.message is None and item.raw == bytes(payload)
    assert "int32 size" in item.definition[0]


def test_stamps_going_backwards_restart_the_sequence(tmp_path, sample_bag, da3_small_checkpoint):
    looped = tmp_path / "looped"  # the sample played twice in one bag, as `ros2 bag play --loop` records
    with BagReader(sample_bag) as reader, BagWriter(looped) as writer:
        items = list(reader.messages())
        for item in items:
            writer.write(item.topic, item.message, item.timestamp_ns)
        for item in items:
            if item.topic in ("/camera/color/image_raw", "/camera/color/camera_info"):
                writer.write(item.topic, item.message, item.timestamp_ns + 10**9)
    report = replay(looped, load_graph(graph_file(tmp_path, da3_small_checkpoint)), tmp_path / "out", progress=False)
    node = report.nodes[0]
    assert node["processed"] == 12 and node["events"]["sequence_reset"] == 1 and node["dropped"] == {}
    infos = [m for topic, _, m in read_all(tmp_path / "out") if topic == "/depth/info"]
    assert [i.window_size for i in infos][5:8] == [3, 1, 2]  # the window starts again after the jump
