"""Several nodes in one process (perception_fm.runtime.container) over DDS: depth_node and concept_node (tiny
real architectures) each publish outputs for their inputs, while a third node whose model load never ends
(a test plugin, defined here, never shipped) keeps its callbacks running and stalls neither; SIGINT stops the
whole process with exit 0."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import CameraInfo, Image

from perception_fm.hookspecs import ModelSpec, Task, hookimpl
from perception_fm.msg import InstanceArray
from perception_fm.replay.synthetic import SampleConfig, render_frame
from perception_fm.ros.camera_info import make_camera_info
from perception_fm.ros.image_codec import numpy_to_image
from perception_fm.ros.tf import ns_to_time
from ros_probe import Probe, diagnostics_values, node_log, stop_node

TESTS = Path(__file__).parent
SAMPLE = SampleConfig(width=64, height=48, frames=4)
FRAMES = [render_frame(SAMPLE, i) for i in range(SAMPLE.frames)]


class StalledLoadPlugin:
    """A depth model whose load never ends (a checkpoint on a dead network share, a hung driver)."""

    @staticmethod
    @hookimpl
    def register_models():
        def create(options):
            while True:  # sleeps, as a load waiting on I/O does: the GIL is free for everyone else
                time.sleep(0.05)

        return [ModelSpec(name="stalled-load", task=Task.DEPTH, summary="test: a load that never ends",
                          create=create)]


def run_container_with_test_plugin(argv):
    """The container process of these tests: perception_fm_container with StalledLoadPlugin registered."""
    from perception_fm.nodes.launcher import install_quiet_stop

    install_quiet_stop()
    from perception_fm.plugin_manager import default_manager
    from perception_fm.runtime.container import main

    default_manager().register(StalledLoadPlugin, name="stalled_load_test_plugin")
    return main(argv)


def start_container(config: Path) -> subprocess.Popen:
    log = open(config.with_suffix(".log"), "w+")
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_container; "
            "raise SystemExit(test_container.run_container_with_test_plugin(sys.argv[1:]))")
    process = subprocess.Popen([sys.executable, "-c", code, str(config)], stdout=log, stderr=subprocess.STDOUT,
                               env=dict(os.environ))
    process.log = log
    return process


@pytest.fixture(scope="module")
def sam3_checkpoint(tmp_path_factory):
    from sam3_tiny import save_tiny_sam3

    return save_tiny_sam3(tmp_path_factory.mktemp("sam3"))


def graph_config(path: Path, da3: Path, sam3: Path) -> Path:
    path.write_text(f"""
nodes:
  depth_node:
    remappings: {{image: /cam/image, camera_info: /cam/camera_info}}
    parameters: {{weights: "{da3}", device: cpu, process_res: 56, input_qos: reliable, camera_info_wait: 60.0}}
  concept_node:
    remappings: {{image: /cam/image}}
    parameters: {{weights: "{sam3}", device: cpu, input_qos: reliable, concepts: "red ball"}}
  stalled_node:
    executable: depth_node
    namespace: stalled
    remappings: {{image: /cam/image, camera_info: /cam/camera_info}}
    parameters: {{model: stalled-load, device: cpu, input_qos: reliable}}
""")
    return path


def statuses(probe, name):
    return [status for message in probe.received("/diagnostics") for status in message.status if name in status.name]


@pytest.mark.ros
def test_nodes_share_one_process_and_a_stalled_model_stalls_no_one(tmp_path, da3_small_checkpoint, sam3_checkpoint):
    config = graph_config(tmp_path / "graph.yaml", da3_small_checkpoint, sam3_checkpoint)
    probe = Probe()
    for msg_type, topic in ((Image, "/depth/image"), (InstanceArray, "/instances"),
                            (DiagnosticArray, "/diagnostics")):
        probe.record(msg_type, topic)
    container = start_container(config)
    try:
        def ready(name):
            def check():
                assert container.poll() is None, "the container died:\n" + stop_node(container)
                return (diagnostics_values(probe, name) or {}).get("_message") == "ok"
            return check

        probe.wait_until(ready("/depth_node"), 120, "depth_node ready")
        probe.wait_until(ready("/concept_node"), 120, "concept_node ready")
        # one process: the three nodes are the container's (the ROS graph lists them; no other process runs)
        names = {(name, namespace) for name, namespace in probe.node.get_node_names_and_namespaces()}
        assert {("depth_node", "/"), ("concept_node", "/"), ("stalled_node", "/stalled")} <= names

        info_pub = probe.publisher(CameraInfo, "/cam/camera_info")
        image_pub = probe.publisher(Image, "/cam/image")
        probe.wait_until(lambda: image_pub.get_subscription_count() >= 2 and info_pub.get_subscription_count() >= 1,
                         30, "subscriptions matched")
        stamp = 1_700_000_000_000_000_000
        for k, frame in enumerate(FRAMES):
            info = make_camera_info(frame.K, SAMPLE.width, SAMPLE.height)
            info.header.stamp, info.header.frame_id = ns_to_time(stamp + k), "camera"
            image = numpy_to_image(frame.rgb, "rgb8")
            image.header.stamp, image.header.frame_id = ns_to_time(stamp + k), "camera"
            info_pub.publish(info)
            image_pub.publish(image)
            # both nodes answer this frame (latest-frame policy: wait for each before the next)
            probe.wait_for("/depth/image", lambda m, s=stamp + k: m.header.stamp == ns_to_time(s))
            probe.wait_for("/instances", lambda m, s=stamp + k: m.header.stamp == ns_to_time(s))

        # the stalled node's model is still loading, yet its own timer callbacks go on: fresh diagnostics keep
        # coming from it while the others worked
        assert container.poll() is None
        stalled = statuses(probe, "/stalled/stalled_node")
        assert stalled and all(status.message != "ok" for status in stalled)
        seen = len(stalled)
        probe.wait_until(lambda: len(statuses(probe, "/stalled/stalled_node")) >= seen + 2, 60,
                         "the stalled node's diagnostics going on")

        # the loaded models' memory estimates are on /diagnostics
        probe.wait_until(lambda: "memory_total_mib" in (diagnostics_values(probe, "/depth_node") or {}), 60,
                         "depth_node's memory estimate")
        values = diagnostics_values(probe, "/depth_node")
        assert float(values["memory_parameters_mib"]) > 0 and values["memory_weights_dtype"] == "float32"
    finally:
        container.send_signal(signal.SIGINT)
        try:
            code = container.wait(timeout=60)
        except subprocess.TimeoutExpired:
            container.kill()
            code = container.wait()
        log = node_log(container)
        probe.close()
    assert code == 0, log
    assert "Traceback" not in log, log
    assert "3 nodes in one process" in log
