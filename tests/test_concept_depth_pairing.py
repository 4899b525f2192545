"""concept_node with use_depth in its own process over DDS: each image is paired with the depth of its own stamp
in either arrival order (the shared stamp pairer), with the scripted segmentation model loaded as a third-party
plugin (random weights find nothing, so there would be no instance to place)."""
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import CameraInfo, Image

from perception_fm.msg import InstanceArray
from perception_fm.ros.camera_info import make_camera_info
from perception_fm.ros.image_codec import numpy_to_image
from perception_fm.ros.tf import ns_to_time
from ros_probe import Probe, diagnostics_values, start_node, stop_node
from scripted_segmentation import FRAMES, SAMPLE

pytestmark = pytest.mark.ros

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def plugin_env(tmp_path, monkeypatch):
    dist = tmp_path / "plugins" / "scripted_segmentation_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: scripted-segmentation-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""
        [perception_fm]
        scripted_segmentation = scripted_segmentation
    """))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "plugins"), str(TESTS),
                                                      os.environ.get("PYTHONPATH", "")]))


@pytest.fixture
def probe():
    probe = Probe()
    probe.record(DiagnosticArray, "/diagnostics")
    probe.record(InstanceArray, "/instances")
    yield probe
    probe.close()


def stamped(message, stamp_ns):
    message.header.stamp = ns_to_time(stamp_ns)
    message.header.frame_id = SAMPLE.camera_frame
    return message


def test_images_wait_for_the_depth_of_their_stamp_in_any_order(plugin_env, probe):
    # depth_wait long: an image waits for its depth however late it comes on a loaded machine
    node = start_node("perception_fm.nodes.concept_node", "-p", "model:=scripted-segmentation", "-p",
                      "concepts:=red ball", "-p", "confirmation_frames:=0", "-p", "use_depth:=true", "-p",
                      "depth_wait:=60.0", "-p", "input_qos:=reliable")
    try:
        # depth publishers first: DDS announces a participant's writers in order, so when the node gets an
        # image it already knows the depth topics have publishers and waits for them
        depth_pub = probe.publisher(Image, "/depth/image")
        info_pub = probe.publisher(CameraInfo, "/depth/camera_info")
        image_pub = probe.publisher(Image, "/image")

        def ready():
            assert node.poll() is None, "node died:\n" + stop_node(node)
            return (diagnostics_values(probe, "concept_node") or {}).get("_message") == "ok"
        probe.wait_until(ready, 60, "concept_node ready")
        probe.wait_until(lambda: all(p.get_subscription_count() for p in (depth_pub, info_pub, image_pub)), 30,
                         "subscriptions matched")
        stamps = [SAMPLE.start_ns + i * 10**8 for i in range(3)]
        scales = [1.0, 2.0, 3.0]  # depth scaled per frame: the positions show which depth was used
        for index, (stamp, scale) in enumerate(zip(stamps, scales)):
            frame = FRAMES[index]
            image = stamped(numpy_to_image(frame.rgb, "rgb8"), stamp)
            depth = stamped(numpy_to_image((frame.depth * scale).astype(np.float32), "32FC1"), stamp)
            info = stamped(make_camera_info(frame.K, SAMPLE.width, SAMPLE.height), stamp)
            if index % 2 == 0:  # the image before its depth
                image_pub.publish(image)
                depth_pub.publish(depth)
                info_pub.publish(info)
            else:
                info_pub.publish(info)
                depth_pub.publish(depth)
                image_pub.publish(image)
            probe.wait_for("/instances", lambda m, s=stamp: m.header.stamp == ns_to_time(s))
        arrays = {m.header.stamp.sec * 10**9 + m.header.stamp.nanosec: m for m in probe.received("/instances")}
        for index, (stamp, scale) in enumerate(zip(stamps, scales)):
            [ball] = [i for i in arrays[stamp].instances if i.concept == "red ball"]
            assert ball.has_position, index
            mask = FRAMES[index].instances == ball.id
            expected_z = np.median(FRAMES[index].depth[mask]) * scale  # z of the ball in its own stamp's depth
            assert ball.position.z == pytest.approx(expected_z, rel=0.1), index
        probe.wait_until(lambda: (diagnostics_values(probe, "concept_node") or {}).get("processed") == "3", 30,
                         "three frames on /diagnostics")
        values = diagnostics_values(probe, "concept_node")
        assert "count_no_depth" not in values and "count_no_depth_camera_info" not in values, values
    finally:
        log = stop_node(node)
    assert "Traceback" not in log, log
