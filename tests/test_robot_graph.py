"""The nodes in a robot's graph: /tf at 200 Hz, latched /tf_static and a 30 Hz camera are already running when
a node starts (as on every robot), and the node must come up, process frames and stop cleanly, start after
start. Also: bad /tf messages (zero or NaN quaternions, a NaN translation, an out-of-order burst beyond the
old deque size) must not stop a node.

Each node runs in its own process over DDS; the stream comes from a probe in this process, published from a
thread of its own at the robot's rates (best effort on a loaded machine: the rates are not asserted)."""
from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import TransformStamped
from sensor_msgs.msg import CameraInfo, Image
from tf2_msgs.msg import TFMessage

from perception_fm.msg import DepthInfo, InstanceArray
from perception_fm.replay.synthetic import SampleConfig, render_frame
from perception_fm.ros.camera_info import make_camera_info
from perception_fm.ros.image_codec import numpy_to_image
from perception_fm.ros.tf import TF_QOS, TF_STATIC_QOS, TF_STATIC_TOPIC, TF_TOPIC, make_transform, ns_to_time
from ros_probe import Probe, diagnostics_values, start_node, stop_node
from test_concept_node import checkpoint as sam3_checkpoint  # noqa: F401  (the tiny SAM 3 fixture)

pytestmark = pytest.mark.ros

SAMPLE = SampleConfig(width=64, height=48, frames=6)
FRAMES = [render_frame(SAMPLE, i) for i in range(SAMPLE.frames)]
OPTICAL_FRAME = "camera_optical_frame"
STARTS = 5
TF_HZ, CAMERA_HZ = 200.0, 30.0


def translation_yaw(x: float, y: float, z: float, yaw: float) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    matrix[:3, 3] = (x, y, z)
    return matrix


OPTICAL_IN_CAMERA = np.array([[0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]], float)  # REP 103


class RobotGraph:
    """What a robot publishes before any perception node starts: odom -> base_link -> camera_link on /tf at
    200 Hz, camera_link -> camera_optical_frame on /tf_static (latched), and a camera at 30 Hz (image and
    camera_info with the same stamp). `inject` queues extra (e.g. bad) /tf messages, sent by the same thread."""

    def __init__(self, probe: Probe):
        self.probe = probe
        self._tf = probe.publisher(TFMessage, TF_TOPIC, TF_QOS)
        self._tf_static = probe.publisher(TFMessage, TF_STATIC_TOPIC, TF_STATIC_QOS)
        self._image = probe.publisher(Image, "/camera/image")
        self._camera_info = probe.publisher(CameraInfo, "/camera/camera_info")
        self._injected: list[TFMessage] = []
        self._lock = threading.Lock()
        self._running = True
        self.sent = {"tf": 0, "image": 0}
        self._tf_static.publish(TFMessage(transforms=[
            make_transform(OPTICAL_IN_CAMERA, "camera_link", OPTICAL_FRAME, ns_to_time(0))]))
        self._thread = threading.Thread(target=self._run, name="robot_graph", daemon=True)
        self._thread.start()

    def inject(self, *messages: TFMessage) -> None:
        with self._lock:
            self._injected.extend(messages)

    def _run(self) -> None:
        started = time.monotonic()
        next_tf = next_camera = started
        frame_index = 0
        while self._running:
            now = time.monotonic()
            if now >= next_tf:
                next_tf = max(next_tf + 1 / TF_HZ, now - 0.1)  # a stalled thread does not burst to catch up
                stamp = ns_to_time(time.time_ns())
                t = now - started
                self._tf.publish(TFMessage(transforms=[
                    make_transform(translation_yaw(0.1 * t, 0.0, 0.0, 0.05 * t), "odom", "base_link", stamp),
                    make_transform(translation_yaw(0.2, 0.0, 0.5, 0.0), "base_link", "camera_link", stamp)]))
                self.sent["tf"] += 1
                with self._lock:
                    injected, self._injected = self._injected, []
                for message in injected:
                    self._tf.publish(message)
            if now >= next_camera:
                next_camera = max(next_camera + 1 / CAMERA_HZ, now - 0.1)
                frame = FRAMES[frame_index % len(FRAMES)]
                frame_index += 1
                stamp_ns = time.time_ns() - 2_000_000  # a camera's stamp is its exposure, a little in the past
                image = numpy_to_image(frame.rgb, "rgb8")
                image.header.stamp, image.header.frame_id = ns_to_time(stamp_ns), OPTICAL_FRAME
                info = make_camera_info(frame.K, SAMPLE.width, SAMPLE.height)
                info.header = image.header
                self._camera_info.publish(info)
                self._image.publish(image)
                self.sent["image"] += 1
            time.sleep(max(0.0, min(next_tf, next_camera) - time.monotonic()))

    def close(self) -> None:
        self._running = False
        self._thread.join(timeout=5)


@pytest.fixture
def graph():
    probe = Probe("robot_graph_probe")
    probe.record(DiagnosticArray, "/diagnostics")
    probe.record(DepthInfo, "/depth/info")
    probe.record(InstanceArray, "/instances")
    graph = RobotGraph(probe)
    # the robot is up before any perception node: some /tf and camera frames have gone out already
    probe.wait_until(lambda: graph.sent["tf"] >= 20 and graph.sent["image"] >= 3, 30, "robot graph publishing")
    yield graph
    graph.close()
    probe.close()


def depth_node_args(weights) -> tuple[str, ...]:
    # known poses from TF: every frame looks up odom -> camera_optical_frame at its stamp (interpolated)
    return ("-p", f"weights:={weights}", "-p", "process_res:=56", "-p", "known_pose_frame:=odom",
            "-p", "world_frame:=odom", "-p", "known_pose_timeout:=0.5",
            "-r", "image:=/camera/image", "-r", "camera_info:=/camera/camera_info")


def concept_node_args(weights) -> tuple[str, ...]:
    return ("-p", f"weights:={weights}", "-p", "concepts:=red ball", "-r", "image:=/camera/image")


def count_since(probe: Probe, topic: str, start: int) -> int:
    return len(probe.received(topic)) - start


def run_until_processing(graph: RobotGraph, node, node_name: str, output_topic: str, frames: int = 3) -> None:
    """Wait until the node reports its model loaded and has published `frames` outputs; fail early (with the
    node's log) if its process dies."""
    probe = graph.probe
    outputs_before = len(probe.received(output_topic))
    diagnostics_before = len(probe.received("/diagnostics"))

    def alive():
        assert node.poll() is None, f"{node_name} died (exit {node.returncode}):\n" + stop_node(node)

    def ready():
        alive()
        if len(probe.received("/diagnostics")) <= diagnostics_before:
            return False  # an earlier start's status does not count
        return (diagnostics_values(probe, node_name) or {}).get("_message") == "ok"

    probe.wait_until(ready, 180, f"{node_name} reporting ok")
    probe.wait_until(lambda: alive() or count_since(probe, output_topic, outputs_before) >= frames, 120,
                     f"{node_name} publishing {frames} outputs on {output_topic}")


@pytest.mark.parametrize("node_name", ["depth_node", "concept_node"])
def test_nodes_start_under_a_running_robot_graph_and_stop_cleanly(graph, node_name, da3_small_checkpoint,
                                                                   sam3_checkpoint):  # noqa: F811
    if node_name == "depth_node":
        args, output = depth_node_args(da3_small_checkpoint), "/depth/info"
    else:
        args, output = concept_node_args(sam3_checkpoint), "/instances"
    for start in range(STARTS):
        node = start_node(f"perception_fm.nodes.{node_name}", *args)
        try:
            run_until_processing(graph, node, node_name, output)
        except BaseException:
            print(f"start {start + 1} of {STARTS} failed")
            raise
        finally:
            log = stop_node(node)
        assert node.returncode == 0, f"start {start + 1}: {node_name} exit code {node.returncode}:\n{log}"
        assert "Traceback" not in log, f"start {start + 1}:\n{log}"


def bad_tf_messages() -> list[TFMessage]:
    """One message per kind of bad transform a misbehaving driver sends, then 1,100 in-order samples of a
    fresh edge followed by one older sample (overflowed a 1,000-sample deque before)."""
    stamp = ns_to_time(time.time_ns())

    def bad(parent="odom", child="bad_frame", quaternion=(0.0, 0.0, 0.0, 1.0), translation=(0.0, 0.0, 0.0),
            at=stamp) -> TransformStamped:
        message = TransformStamped()
        message.header.stamp, message.header.frame_id, message.child_frame_id = at, parent, child
        message.transform.translation.x, message.transform.translation.y, message.transform.translation.z = \
            translation
        (message.transform.rotation.x, message.transform.rotation.y, message.transform.rotation.z,
         message.transform.rotation.w) = quaternion
        return message

    messages = [TFMessage(transforms=[bad(quaternion=(0.0, 0.0, 0.0, 0.0))]),
                TFMessage(transforms=[bad(quaternion=(math.nan, 0.0, 0.0, 1.0))]),
                TFMessage(transforms=[bad(translation=(math.nan, 0.0, 0.0))]),
                TFMessage(transforms=[bad(parent="", child="")]),
                TFMessage(transforms=[bad(parent="self_loop", child="self_loop")])]
    base_ns = time.time_ns() - 30_000_000_000
    burst = [bad(parent="odom", child="burst_frame", at=ns_to_time(base_ns + i * 1_000_000)) for i in range(1_100)]
    burst.append(bad(parent="odom", child="burst_frame", at=ns_to_time(base_ns + 500_500_000)))
    messages += [TFMessage(transforms=burst[i:i + 100]) for i in range(0, len(burst), 100)]
    return messages


def node_log_so_far(node) -> str:
    with open(node.log.name) as log:
        return log.read()


def test_bad_tf_messages_do_not_stop_depth_node(graph, da3_small_checkpoint):
    node = start_node("perception_fm.nodes.depth_node", *depth_node_args(da3_small_checkpoint))
    try:
        run_until_processing(graph, node, "depth_node", "/depth/info")
        reasons = ("bad_quaternion", "bad_translation", "empty_frame_id", "self_transform")
        # /tf is KEEP_LAST: on a loaded machine a busy node's reader can drop old samples before its callback
        # runs, as it would on a robot, so the bad messages are sent again (every 10 s) until each was seen
        injected = {"times": 0, "at": -math.inf}

        def all_reported():
            assert node.poll() is None, f"depth_node died (exit {node.returncode}):\n" + stop_node(node)
            log = node_log_so_far(node)
            if all(f"TF rejected ({reason}" in log for reason in reasons):
                return True
            if time.monotonic() - injected["at"] >= 10.0:
                graph.inject(*bad_tf_messages())
                injected["times"] += 1
                injected["at"] = time.monotonic()
            return False
        graph.probe.wait_until(all_reported, 90, "the bad transforms reported in the log")
        # /diagnostics counts them by reason (exactly, when nothing was lost: at most what was sent), and says
        # WARN while they come (like bad frames)
        per_injection = {"tf_rejected_bad_quaternion": 2, "tf_rejected_bad_translation": 1,
                         "tf_rejected_empty_frame_id": 1, "tf_rejected_self_transform": 1}

        def counted():
            values = diagnostics_values(graph.probe, "depth_node") or {}
            return all(1 <= int(values.get(key, 0)) <= count * injected["times"]
                       for key, count in per_injection.items())

        def warned():
            return any(status.level == DiagnosticStatus.WARN and "TF rejected" in status.message
                       for message in graph.probe.received("/diagnostics") for status in message.status
                       if "depth_node" in status.name)
        graph.probe.wait_until(counted, 60, f"/diagnostics counting {per_injection} per injection")
        expected = {key: (diagnostics_values(graph.probe, "depth_node") or {}).get(key) for key in per_injection}
        assert warned(), "no WARN status naming the TF rejects"
        # and it still processes frames, with TF (the good chain keeps coming)
        run_until_processing(graph, node, "depth_node", "/depth/info", frames=5)  # back to 'ok': no new rejects
        values = diagnostics_values(graph.probe, "depth_node")
        assert all(int(expected[key]) <= int(values.get(key, 0)) <= per_injection[key] * injected["times"]
                   for key in per_injection), values  # counters stay (nothing reset them), status is ok
        assert not any(key.endswith(("old_data", "cache_full")) for key in values), values
    finally:
        log = stop_node(node)
    assert node.returncode == 0, log
    assert "Traceback" not in log, log
    assert "old_data" not in log and "cache_full" not in log, log  # the late burst sample is inserted, not lost
