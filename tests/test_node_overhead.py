"""The depth node's per-frame overhead: its stage times (what `perception-fm bench node` splits the overhead
by) and the Fast DDS transport setting every perception_fm process gets (large messages through an 8 MiB
shared-memory segment instead of fragments)."""
import os
import subprocess
import sys

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image, PointCloud2

from perception_fm.core.stamp_pairing import Paired
from perception_fm.pipelines.depth_pipeline import DepthOutput
from perception_fm.ros import depth_io
from perception_fm.ros.image_codec import numpy_to_image
from perception_fm.ros.tf import ns_to_time


def depth_output(timings_ms):
    depth = np.ones((2, 2), np.float32)
    return DepthOutput(stamp_ns=0, depth=depth, confidence=None, intrinsics=None, points=np.zeros((0, 3), np.float32),
                       colors=np.zeros((0, 3), np.uint8), camera_to_world=None, is_metric=False, scale_source="none",
                       scale=1.0, pose_method="none", window_size=1, view_index=0, inference_ms=0.0, keyframe=False,
                       new_sequence=False, timings_ms=timings_ms)


def test_stage_times_message_places_each_stage_on_the_right_clock():
    stamp_ns = 1_700_000_000_000_000_000
    image = numpy_to_image(np.zeros((2, 2, 3), np.uint8), "rgb8")
    image.header.stamp = ns_to_time(stamp_ns)
    image.header.frame_id = "camera"
    # live clock (monotonic): arrived at 1000 ms, released 1 ms later, taken 2 ms after that
    paired = Paired(stamp_ns=stamp_ns, frame=image, inputs={}, arrived_ns=1_000_000_000, released_ns=1_001_000_000)
    output = depth_output({"decode": 0.5, "prepare": 1.5, "predict": 300.0, "postprocess": 1.25, "encode": 0.75})
    # read at live 1100 ms = wall stamp + 103 ms: the image arrived 100 ms earlier, 3 ms after its stamp
    message = depth_io.stage_times_message(paired, output, taken_ns=1_003_000_000, encoded_ns=1_010_000_000,
                                           published_ns=1_010_400_000, now=(1_100_000_000, stamp_ns + 103_000_000))
    assert isinstance(message, DiagnosticArray)
    assert message.header.stamp == image.header.stamp and message.header.frame_id == "camera"
    values = {kv.key: float(kv.value) for kv in message.status[0].values}
    assert list(values) == list(depth_io.STAGES)
    assert values == pytest.approx({"receive": 3.0, "pairing": 1.0, "queue": 2.0, "decode": 0.5, "prepare": 1.5,
                                    "predict": 300.0, "postprocess": 1.25, "encode": 0.75, "publish": 0.4})


def test_stage_times_are_off_unless_asked_for():
    param = next(p for p in depth_io.DEPTH_PARAMS if p.name == "publish_stage_times")
    assert param.default is False


def test_the_frame_handler_times_decode_and_encode():
    from test_depth_pipeline import FRAMES, ScriptedRelativeModel

    from perception_fm.nodes.params import MODEL_PARAMS

    values = {param.name: param.default for param in MODEL_PARAMS + depth_io.DEPTH_PARAMS}
    handler = depth_io.DepthFrameHandler(ScriptedRelativeModel(), values)
    output, messages = handler.handle(numpy_to_image(FRAMES[0].rgb, "rgb8"), None)
    assert {"decode", "prepare", "predict", "postprocess", "encode"} <= set(output.timings_ms)
    assert all(value >= 0 for value in output.timings_ms.values())
    assert messages.depth.width == FRAMES[0].rgb.shape[1]


def test_without_cloud_the_handler_skips_only_the_cloud():
    """What the node does while nobody subscribes to /points: no cloud computed or built, every other output
    bit for bit what it is with the cloud."""
    from test_depth_pipeline import FRAMES, ScriptedRelativeModel

    from perception_fm.nodes.params import MODEL_PARAMS
    from perception_fm.ros.camera_info import make_camera_info

    values = {param.name: param.default for param in MODEL_PARAMS + depth_io.DEPTH_PARAMS}
    image = numpy_to_image(FRAMES[0].rgb, "rgb8")
    info = make_camera_info(FRAMES[0].K, FRAMES[0].rgb.shape[1], FRAMES[0].rgb.shape[0])
    with_cloud = depth_io.DepthFrameHandler(ScriptedRelativeModel(), values).handle(image, info)
    without = depth_io.DepthFrameHandler(ScriptedRelativeModel(), values).handle(image, info, cloud=False)
    assert with_cloud[1].points is not None and with_cloud[1].points.width == FRAMES[0].rgb.shape[0] * FRAMES[0].rgb.shape[1]
    assert without[1].points is None and without[0].points.shape == (0, 3)
    without[1].info.inference_ms = with_cloud[1].info.inference_ms  # a time, not an output
    for name in ("depth", "confidence", "camera_info", "info"):
        assert getattr(without[1], name) == getattr(with_cloud[1], name), name
    assert without[0].depth.tobytes() == with_cloud[0].depth.tobytes()


def _transport_setting(**environ) -> str:
    env = {key: value for key, value in os.environ.items()
           if key not in ("FASTDDS_BUILTIN_TRANSPORTS", "FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")}
    env.update(environ)
    code = "import os, perception_fm; print(os.environ.get('FASTDDS_BUILTIN_TRANSPORTS', '<unset>'))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_large_shared_memory_segment_is_the_default_but_a_users_fast_dds_setting_wins(tmp_path):
    assert _transport_setting() == "DEFAULT?sockets_size=8MB"
    assert _transport_setting(FASTDDS_BUILTIN_TRANSPORTS="UDPv4") == "UDPv4"
    profile = tmp_path / "profile.xml"
    profile.write_text("<dds/>")
    assert _transport_setting(FASTDDS_DEFAULT_PROFILES_FILE=str(profile)) == "<unset>"
    assert _transport_setting(FASTRTPS_DEFAULT_PROFILES_FILE=str(profile)) == "<unset>"


@pytest.mark.ros
def test_depth_node_publishes_each_frames_stage_times(da3_small_checkpoint):
    """Over DDS, as `perception-fm bench node` reads them: one message per processed frame, stamped with the
    image's stamp, every stage present, and the model's own stage is what depth/info reports."""
    from ros_probe import Probe, diagnostics_values, start_node, stop_node

    from perception_fm.msg import DepthInfo
    from perception_fm.replay.synthetic import SampleConfig, render_frame

    probe = Probe()
    probe.record(DiagnosticArray, "/depth_node/stage_times")
    probe.record(DepthInfo, "/depth/info")
    probe.record(PointCloud2, "/points")  # subscribed before the node starts: the node builds clouds
    probe.record(DiagnosticArray, "/diagnostics")
    node = start_node("perception_fm.nodes.depth_node", "-p", f"weights:={da3_small_checkpoint}",
                      "-p", "process_res:=56", "-p", "input_qos:=reliable", "-p", "publish_stage_times:=true",
                      "-r", "image:=/overhead_test/image")
    try:
        image_pub = probe.publisher(Image, "/overhead_test/image")

        def ready():
            assert node.poll() is None, "the node process died:\n" + stop_node(node)
            return (diagnostics_values(probe, "depth_node") or {}).get("_message") == "ok"
        probe.wait_until(ready, 120, "depth_node reporting a loaded model")
        probe.wait_until(lambda: image_pub.get_subscription_count() > 0, 30, "image subscription matched")
        frame = render_frame(SampleConfig(width=64, height=48, frames=2), 0)
        stamp = 1_700_000_000_000_000_000
        image = numpy_to_image(frame.rgb, "rgb8")
        image.header.stamp = ns_to_time(stamp)
        image_pub.publish(image)
        same = lambda m: m.header.stamp == ns_to_time(stamp)  # noqa: E731
        times = probe.wait_for("/depth_node/stage_times", same)
        info = probe.wait_for("/depth/info", same)
        values = {kv.key: float(kv.value) for kv in times.status[0].values}
        assert list(values) == list(depth_io.STAGES)
        assert all(values[name] >= 0 for name in depth_io.STAGES if name != "receive")  # receive: stamp is old
        assert values["prepare"] + values["predict"] == pytest.approx(info.inference_ms, rel=1e-3, abs=0.01)
        assert probe.wait_for("/points", same).width == 42 * 56
    finally:
        stop_node(node)
        probe.close()
