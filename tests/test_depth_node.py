"""depth_node as a robot runs it: its own process, talking DDS with a probe node in this process.

The model is the real DA3-Small architecture with random weights loaded from a checkpoint directory
through the real loading path (the `weights` parameter)."""
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Path
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from tf2_msgs.msg import TFMessage

from perception_fm.msg import DepthInfo
from perception_fm.replay.synthetic import SampleConfig, render_frame
from perception_fm.ros.camera_info import make_camera_info
from perception_fm.ros.cloud_codec import pointcloud2_to_xyzrgb
from perception_fm.ros.image_codec import image_to_numpy, numpy_to_image, rgb8_to_compressed
from perception_fm.ros.tf import ns_to_time
from ros_probe import LATCHED, Probe, diagnostics_values, start_node, stop_node

pytestmark = pytest.mark.ros

SAMPLE = SampleConfig(width=64, height=48, frames=6)
FRAMES = [render_frame(SAMPLE, i) for i in range(SAMPLE.frames)]
IMAGE_FRAME = "test_camera_optical_frame"


def header_for(message, stamp_ns):
    message.header.stamp = ns_to_time(stamp_ns)
    message.header.frame_id = IMAGE_FRAME
    return message


def image_message(frame, stamp_ns):
    return numpy_to_image(frame.rgb, "rgb8", header_for(Image(), stamp_ns).header)


def camera_info_message(frame, stamp_ns, width=64, height=48):
    info = make_camera_info(frame.K, width, height)
    return header_for(info, stamp_ns)


@pytest.fixture
def probe():
    probe = Probe()
    for msg_type, topic in ((Image, "/depth/image"), (Image, "/depth/confidence"), (DepthInfo, "/depth/info"),
                            (CameraInfo, "/depth/camera_info"), (PointCloud2, "/points"), (Path, "/camera_path"),
                            (TFMessage, "/tf"), (DiagnosticArray, "/diagnostics")):
        probe.record(msg_type, topic)
    probe.record(TFMessage, "/tf_static", LATCHED)
    yield probe
    probe.close()


def node_args(checkpoint, *extra):
    return ("-p", f"weights:={checkpoint}", "-p", "process_res:=56", "-p", "input_qos:=reliable",
            "-r", "image:=/test/image", "-r", "camera_info:=/test/camera_info", "-r", "image/compressed:=/test/image/compressed",
            *extra)


def wait_ready(probe, node, timeout=120):
    def ready():
        assert node.poll() is None, "the node process died:\n" + stop_node(node)
        return (diagnostics_values(probe, "depth_node") or {}).get("_message") == "ok"
    probe.wait_until(ready, timeout, "depth_node reporting a loaded model")


def publishers(probe):
    """camera_info's publisher is created before the image's: DDS announces a participant's writers in order
    on a reliable channel, so by the time the node receives an image it knows camera_info has a publisher
    and waits for it (no race on discovery)."""
    info_pub = probe.publisher(CameraInfo, "/test/camera_info")
    image_pub = probe.publisher(Image, "/test/image")
    return image_pub, info_pub


def test_image_in_depth_cloud_and_tf_out(probe, da3_small_checkpoint):
    # camera_info_wait long: each image waits for the camera_info of its stamp whatever the order and load
    node = start_node("perception_fm.nodes.depth_node", *node_args(
        da3_small_checkpoint, "-p", "window_size:=2", "-p", "keyframe_every:=1", "-p", "attach_image_frame:=true",
        "-p", "camera_info_wait:=60.0"))
    try:
        image_pub, info_pub = publishers(probe)
        wait_ready(probe, node)
        probe.wait_until(lambda: image_pub.get_subscription_count() > 0 and info_pub.get_subscription_count() > 0,
                         30, "subscriptions matched")
        stamps = [1_700_000_000_123_456_789 + i * 100_000_000 for i in range(2)]
        focal = []  # a different focal length per frame: the output shows which camera_info was used
        for i, (frame, stamp) in enumerate(zip(FRAMES, stamps)):
            info = camera_info_message(frame, stamp)
            info.k[0] = info.k[4] = frame.K[0, 0] * (1.0 + 0.25 * i)
            focal.append(info.k[0])
            if i == 0:  # the image first, its camera_info after it
                image_pub.publish(image_message(frame, stamp))
                info_pub.publish(info)
            else:
                info_pub.publish(info)
                image_pub.publish(image_message(frame, stamp))
            probe.wait_for("/depth/image", lambda m, s=stamp: m.header.stamp == ns_to_time(s))

        for stamp, fx in zip(stamps, focal):
            def same(m, s=stamp):
                return m.header.stamp == ns_to_time(s)
            depth = probe.wait_for("/depth/image", same)
            assert depth.encoding == "32FC1" and (depth.height, depth.width) == (42, 56)
            assert depth.header.frame_id == IMAGE_FRAME
            values = image_to_numpy(depth)
            assert np.all(np.isfinite(values)) and np.all(values > 0)
            info = probe.wait_for("/depth/info", same)
            assert info.weights == str(da3_small_checkpoint) and info.model == "da3-small"
            assert not info.is_metric and info.scale_source == "window_chain"
            camera_info = probe.wait_for("/depth/camera_info", same)
            assert (camera_info.height, camera_info.width) == (42, 56)
            assert camera_info.k[0] == pytest.approx(fx * 56 / 64)  # the camera_info of its own stamp
            cloud = probe.wait_for("/points", same)
            points, colors = pointcloud2_to_xyzrgb(cloud)
            assert cloud.header.frame_id == IMAGE_FRAME and len(points) == 42 * 56 and colors is not None
            np.testing.assert_allclose(np.sort(points[:, 2]), np.sort(values.ravel()), rtol=1e-6)
            probe.wait_for("/depth/confidence", same)
        second = probe.wait_for("/depth/info", lambda m: m.header.stamp == ns_to_time(stamps[1]))
        assert second.window_size == 2 and second.view_index == 1

        estimates = [t for m in probe.received("/tf") for t in m.transforms if t.child_frame_id == "da3_camera"]
        assert {(t.header.frame_id, t.header.stamp.sec, t.header.stamp.nanosec) for t in estimates} == {
            ("da3_world", ns_to_time(s).sec, ns_to_time(s).nanosec) for s in stamps}
        attached = probe.wait_for("/tf_static", lambda m: any(t.child_frame_id == IMAGE_FRAME for t in m.transforms))
        assert attached.transforms[0].header.frame_id == "da3_camera"
        path = probe.wait_for("/camera_path", lambda m: len(m.poses) == 2)
        assert path.header.frame_id == "da3_world"
        probe.wait_until(lambda: (diagnostics_values(probe, "depth_node") or {}).get("processed") == "2", 30,
                         "both frames on /diagnostics")
        values = diagnostics_values(probe, "depth_node")
        assert not {k for k in values if k.startswith("count_")}, values  # no camera_info fallback
        assert node.poll() is None
    finally:
        log = stop_node(node)
    assert "Traceback" not in log, log


def test_bad_inputs_are_dropped_counted_and_the_node_goes_on(probe, da3_small_checkpoint):
    node = start_node("perception_fm.nodes.depth_node", *node_args(da3_small_checkpoint, "-p",
                                                                     "camera_info_wait:=60.0"))
    try:
        image_pub, info_pub = publishers(probe)
        wait_ready(probe, node)
        probe.wait_until(lambda: image_pub.get_subscription_count() > 0 and info_pub.get_subscription_count() > 0,
                         30, "subscriptions matched")
        frame = FRAMES[0]
        stamp = 1_700_000_100_000_000_000

        def handled():
            values = diagnostics_values(probe, "depth_node") or {}
            return int(values.get("processed", 0)) + int(values.get("dropped", 0))

        def send(image, info, stamp):
            before = handled()
            image_pub.publish(image)  # paired with its camera_info in either order
            info_pub.publish(info)
            probe.wait_until(lambda: handled() == before + 1, 60, "the frame handled")  # nothing stale

        float_image = numpy_to_image(np.ones((48, 64), np.float32), "32FC1", header_for(Image(), stamp).header)
        send(float_image, camera_info_message(frame, stamp), stamp)  # no colour: encoding
        empty = header_for(Image(), stamp + 1)
        empty.encoding = "rgb8"
        send(empty, camera_info_message(frame, stamp + 1), stamp + 1)  # zero-size image
        send(image_message(frame, stamp + 2), camera_info_message(frame, stamp + 2, 640, 480), stamp + 2)  # size
        nan_info = camera_info_message(frame, stamp + 3)
        nan_info.k[0] = float("nan")  # a driver publishing an uncalibrated or corrupt camera
        send(image_message(frame, stamp + 3), nan_info, stamp + 3)
        send(image_message(frame, stamp + 4), camera_info_message(frame, stamp + 4), stamp + 4)  # good again

        probe.wait_for("/depth/image", lambda m: m.header.stamp == ns_to_time(stamp + 4))
        assert all(m.header.stamp == ns_to_time(stamp + 4) for m in probe.received("/depth/image"))

        def counted():
            values = diagnostics_values(probe, "depth_node") or {}
            return values.get("processed") == "1" and values.get("dropped") == "4"
        probe.wait_until(counted, 10, "drops on /diagnostics")
        values = diagnostics_values(probe, "depth_node")
        assert {k: values.get(k) for k in ("dropped_encoding", "dropped_empty", "dropped_size_mismatch",
                                           "dropped_camera_info")} == {
            "dropped_encoding": "1", "dropped_empty": "1", "dropped_size_mismatch": "1", "dropped_camera_info": "1"}
        assert node.poll() is None
    finally:
        log = stop_node(node)
    assert "dropped a frame (size_mismatch)" in log and "640" in log
    assert "dropped a frame (camera_info)" in log and "Traceback" not in log


def test_latest_frame_policy_drops_stale_frames_and_keeps_the_newest(probe, da3_small_checkpoint):
    node = start_node("perception_fm.nodes.depth_node", *node_args(
        da3_small_checkpoint, "-p", "image_transport:=compressed"))
    try:
        image_pub = probe.publisher(CompressedImage, "/test/image/compressed")
        wait_ready(probe, node)
        probe.wait_until(lambda: image_pub.get_subscription_count() > 0, 30, "subscription matched")
        stamps = [1_700_000_200_000_000_000 + i * 1_000_000 for i in range(30)]
        for i, stamp in enumerate(stamps):  # far faster than a CPU model runs
            message = rgb8_to_compressed(FRAMES[i % len(FRAMES)].rgb, header=header_for(Image(), stamp).header)
            image_pub.publish(message)
        probe.wait_for("/depth/image", lambda m: m.header.stamp == ns_to_time(stamps[-1]))

        def settled():  # every frame the node received was processed or counted stale
            values = diagnostics_values(probe, "depth_node") or {}
            return int(values.get("processed", 0)) + int(values.get("dropped_stale", 0)) == int(
                values.get("received", -1))
        probe.wait_until(settled, 20, "every received frame processed or counted stale")
        values = diagnostics_values(probe, "depth_node")
        # The subscription's keep-last queue and the latest-frame slot both shed load: far fewer frames were
        # processed than sent, and those processed are the newest ones, in order.
        assert int(values["processed"]) < 15, values
        published = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in probe.received("/depth/image")]
        assert published == sorted(published) and published[-1] == stamps[-1]
    finally:
        stop_node(node)


def test_unknown_model_leaves_the_node_up_until_parameters_fix_it(probe, da3_small_checkpoint):
    node = start_node("perception_fm.nodes.depth_node", "-p", "model:=da4-huge", "-p", "process_res:=56",
                      "-p", "input_qos:=reliable", "-r", "image:=/test/image")
    try:
        probe.wait_until(lambda: (diagnostics_values(probe, "depth_node") or {}).get("_level") == 2, 60,
                         "an ERROR diagnostic")
        message = diagnostics_values(probe, "depth_node")["_message"]
        assert "da4-huge" in message and "da3-small" in message
        # a managed node whose configure failed stays up, unconfigured: it subscribes to nothing until it has a model
        assert diagnostics_values(probe, "depth_node")["lifecycle_state"] == "unconfigured"
        image_pub = probe.publisher(Image, "/test/image")
        assert image_pub.get_subscription_count() == 0
        assert node.poll() is None

        client = probe.node.create_client(SetParameters, "/depth_node/set_parameters")
        assert client.wait_for_service(timeout_sec=30)
        request = SetParameters.Request(parameters=[
            Parameter(name="model", value=ParameterValue(type=ParameterType.PARAMETER_STRING, string_value="da3-small")),
            Parameter(name="weights", value=ParameterValue(type=ParameterType.PARAMETER_STRING,
                                                           string_value=str(da3_small_checkpoint))),
        ])
        future = client.call_async(request)
        probe.wait_until(future.done, 30, "set_parameters answered")
        assert all(result.successful for result in future.result().results)
        wait_ready(probe, node)
        probe.wait_until(lambda: image_pub.get_subscription_count() > 0, 30, "subscription matched")
        image_pub.publish(image_message(FRAMES[1], 2))
        probe.wait_for("/depth/image", lambda m: m.header.stamp == ns_to_time(2))

        bad = SetParameters.Request(parameters=[Parameter(
            name="window_size", value=ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=0))])
        future = client.call_async(bad)
        probe.wait_until(future.done, 30, "set_parameters answered")
        assert not future.result().results[0].successful
    finally:
        stop_node(node)


def test_sim_time_from_clock_is_honoured(probe, da3_small_checkpoint):
    """ros2 bag play --clock: with use_sim_time the node's clock (diagnostics stamps) follows /clock, and
    outputs keep the bag's image stamps."""
    from builtin_interfaces.msg import Time
    from rosgraph_msgs.msg import Clock

    node = start_node("perception_fm.nodes.depth_node", *node_args(da3_small_checkpoint, "-p", "use_sim_time:=true"))
    try:
        clock = probe.publisher(Clock, "/clock")
        image_pub = probe.publisher(Image, "/test/image")
        sim_time = Time(sec=12345, nanosec=0)
        probe.wait_until(lambda: clock.get_subscription_count() > 0, 30, "/clock subscribed")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            clock.publish(Clock(clock=sim_time))
            diagnostics = [m for m in probe.received("/diagnostics") if m.status and "depth_node" in m.status[0].name]
            if diagnostics and diagnostics[-1].header.stamp.sec >= 12345 and \
                    diagnostics[-1].status[0].message == "ok":
                break
            time.sleep(0.1)
        stamps = [m.header.stamp.sec for m in probe.received("/diagnostics") if m.status
                  and "depth_node" in m.status[0].name]
        assert stamps and 12345 <= stamps[-1] < 12350  # sim time, not wall time (~1.8e9 s)
        probe.wait_until(lambda: image_pub.get_subscription_count() > 0, 30, "subscription matched")
        image_pub.publish(image_message(FRAMES[0], 12_345_500_000_000))
        depth = probe.wait_for("/depth/image")
        assert depth.header.stamp == ns_to_time(12_345_500_000_000)
    finally:
        stop_node(node)
