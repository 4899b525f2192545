"""A camera rig through one depth model (perception_fm.pipelines.depth_rig): the fused cloud's geometry with
ground-truth depth (tests/rig_truth_model.py), the known poses' convention and the rig's scale through the
real DA3 network (random weights), the `cameras` parameter, and the rig through depth_node over DDS."""
import numpy as np
import pytest

from perception_fm.geometry.camera import project_points, transform_points, unproject_depth
from perception_fm.pipelines.depth_pipeline import DepthPipelineConfig
from perception_fm.pipelines.depth_rig import DepthRigPipeline, RigView, voxel_downsample
from perception_fm.replay import synthetic as syn
from rig_truth_model import FRAMES, RIG, RigTruthModel


def extrinsics(config, camera, scale=1.0):
    """The optical frame of `camera` in camera_link (the rig's common frame here), as TF gives it."""
    pose = syn.rig_mount(config, camera) @ syn.T_LINK_OPTICAL
    pose[:3, 3] *= scale
    return pose


def views(index=1, poses=None):
    poses = poses or {camera: extrinsics(RIG, camera) for camera in range(2)}
    return [RigView(f"cam{camera}", FRAMES[index, camera].rgb, FRAMES[index, camera].stamp_ns, FRAMES[index, camera].K,
                    poses[camera]) for camera in range(2)]


def test_fused_cloud_puts_both_cameras_on_one_surface_in_the_rig_frame():
    pipeline = DepthRigPipeline(RigTruthModel())
    output = pipeline.process(views())
    cam0, cam1 = output.cameras
    n0 = len(cam0.points)
    assert len(output.fused_points) == n0 + len(cam1.points) and output.is_metric
    # exactly in the right frame: camera 0's fused points are its ground-truth surface points in camera_link
    truth0, _ = unproject_depth(FRAMES[1, 0].depth, FRAMES[1, 0].K)
    np.testing.assert_allclose(output.fused_points[:n0], transform_points(extrinsics(RIG, 0), truth0), atol=1e-5)
    # and camera_link is where the robot's TF puts it: the same points in the world are the render's
    link_to_world = syn.camera_link_to_world(RIG, 1)
    world = transform_points(link_to_world, output.fused_points[:n0].astype(np.float64))
    np.testing.assert_allclose(world, transform_points(FRAMES[1, 0].camera_to_world, truth0.astype(np.float64)),
                               atol=1e-4)

    def overlap_gaps(fused, count0):
        """Camera 0's fused points that camera 1 sees too, against camera 1's fused surface there: distance from
        each to camera 1's fused points bilinearly interpolated at its (sub-pixel) projection in camera 1,
        in units of the pixel footprint (depth / focal length). Away from depth edges only."""
        points0 = fused[:count0].astype(np.float64)
        grid1 = fused[count0:].astype(np.float64).reshape(RIG.height, RIG.width, 3)  # every GT pixel is valid
        depth1 = FRAMES[1, 1].depth
        pixels, z = project_points(transform_points(np.linalg.inv(extrinsics(RIG, 1)), points0), FRAMES[1, 1].K)
        u0, v0 = np.floor(pixels[:, 0]).astype(int), np.floor(pixels[:, 1]).astype(int)
        inside = (z > 0) & (u0 >= 0) & (u0 < RIG.width - 1) & (v0 >= 0) & (v0 < RIG.height - 1)
        u0, v0, z, points0, pixels = u0[inside], v0[inside], z[inside], points0[inside], pixels[inside]
        corners = np.stack([depth1[v0, u0], depth1[v0, u0 + 1], depth1[v0 + 1, u0], depth1[v0 + 1, u0 + 1]])
        smooth = (corners.max(axis=0) - corners.min(axis=0)) / corners.min(axis=0) < 0.05
        visible = np.abs(corners.mean(axis=0) - z) / z < 0.05  # not hidden from camera 1 behind something
        keep = smooth & visible
        fu, fv = (pixels[:, 0] - u0)[:, None], (pixels[:, 1] - v0)[:, None]
        surface = ((1 - fu) * (1 - fv) * grid1[v0, u0] + fu * (1 - fv) * grid1[v0, u0 + 1]
                   + (1 - fu) * fv * grid1[v0 + 1, u0] + fu * fv * grid1[v0 + 1, u0 + 1])
        gaps = np.linalg.norm(surface - points0, axis=1)[keep] / (z[keep] / FRAMES[1, 1].K[0, 0])
        return keep.sum() / count0, gaps

    overlap, gaps = overlap_gaps(output.fused_points, n0)
    assert overlap > 0.4  # the pair overlaps over much of camera 0's view
    assert np.median(gaps) < 0.05 and np.percentile(gaps, 90) < 0.2  # coincident surfaces
    # the check can fail: camera 1's extrinsic off by 3 cm along its axis moves its points off the surface
    shifted = extrinsics(RIG, 1)
    shifted[:3, 3] += 0.03 * shifted[:3, 2]
    wrong = pipeline.process(views(poses={0: extrinsics(RIG, 0), 1: shifted}))
    _, wrong_gaps = overlap_gaps(wrong.fused_points, n0)
    assert np.median(wrong_gaps) > 0.3


def test_a_camera_without_pose_stays_out_of_the_fused_cloud_but_keeps_its_outputs():
    output = DepthRigPipeline(RigTruthModel()).process(views(poses={0: extrinsics(RIG, 0), 1: None}))
    assert [c.pose_known for c in output.cameras] == [True, False]
    assert len(output.fused_points) == len(output.cameras[0].points) and len(output.cameras[1].points) > 0
    assert output.cameras[1].stamp_ns == FRAMES[1, 1].stamp_ns


def test_voxel_downsampling_keeps_one_mean_point_per_voxel():
    points = np.array([[0.01, 0.01, 0.01], [0.03, 0.03, 0.03], [0.51, 0.0, 0.0], [-0.01, 0.0, 0.0]], np.float32)
    colors = np.array([[0, 0, 0], [100, 50, 10], [7, 7, 7], [255, 255, 255]], np.uint8)
    fused, fused_colors = voxel_downsample(points, colors, 0.1)
    order = np.lexsort(fused.T[::-1])
    fused, fused_colors = fused[order], fused_colors[order]
    np.testing.assert_allclose(fused, [[-0.01, 0, 0], [0.02, 0.02, 0.02], [0.51, 0, 0]], atol=1e-7)
    np.testing.assert_array_equal(fused_colors, [[255, 255, 255], [50, 25, 5], [7, 7, 7]])
    assert voxel_downsample(points, colors, 0.0)[0] is points
    output = DepthRigPipeline(RigTruthModel(), voxel_size=0.05).process(views())
    full = sum(len(c.points) for c in output.cameras)
    cells = np.floor(output.fused_points / 0.05).astype(np.int64)
    assert len(output.fused_points) < full and len(np.unique(cells, axis=0)) == len(cells)


def test_single_view_models_and_windows_are_refused():
    class Single(RigTruthModel):
        from perception_fm.tasks.depth import DepthCapabilities
        capabilities = DepthCapabilities(metric=True, multi_view=False)

    with pytest.raises(ValueError, match="multi-view"):
        DepthRigPipeline(Single())
    with pytest.raises(ValueError, match="window_size"):
        DepthRigPipeline(RigTruthModel(), DepthPipelineConfig(window_size=2))


# -- the real DA3 network (random weights): the plumbing, exactly --------------------------------------------

@pytest.fixture(scope="module")
def da3(da3_small_checkpoint):
    from perception_fm.hookspecs import ModelOptions, Task
    from perception_fm.plugin_manager import PluginManager

    model = PluginManager(entry_points=False).create(
        Task.DEPTH, "da3-small", ModelOptions(weights=str(da3_small_checkpoint), device="cpu",
                                              extra={"process_res": 56}))
    received = {"plugin": [], "network": []}
    predict, forward = model.predict, model.net.forward

    def recording_predict(*args, **kwargs):
        received["plugin"].append(kwargs.get("known_world_to_camera"))
        return predict(*args, **kwargs)

    def recording_forward(x, extrinsics=None, intrinsics=None, *args, **kwargs):
        received["network"].append((None if extrinsics is None else extrinsics.detach().double().numpy().copy(),
                                    None if intrinsics is None else intrinsics.detach().double().numpy().copy()))
        return forward(x, extrinsics, intrinsics, *args, **kwargs)

    model.predict, model.net.forward = recording_predict, recording_forward
    return model, received


def test_known_poses_reach_the_network_in_its_convention(da3):
    model, received = da3
    received["plugin"].clear(), received["network"].clear()
    output = DepthRigPipeline(model).process(views())
    assert output.conditioned
    # pipeline -> plugin: world-to-camera (OpenCV) of each camera in the rig frame, i.e. the inverse of TF's pose
    [known] = received["plugin"]
    for camera in range(2):
        np.testing.assert_allclose(known[camera], np.linalg.inv(extrinsics(RIG, camera)), atol=1e-12)
    # plugin -> network: relative to the first view, translations over upstream's unit (the lower median of
    # the views' distances from it, view 0's own 0 included, at least 0.1: 0.1 for a pair), with the
    # intrinsics at the processed size
    [(network_extrinsics, network_intrinsics)] = received["network"]
    relative = np.linalg.inv(extrinsics(RIG, 1)) @ extrinsics(RIG, 0)  # camera 0 -> camera 1
    np.testing.assert_allclose(network_extrinsics[0, 0], np.eye(4), atol=1e-6)
    expected = relative.copy()
    expected[:3, 3] /= 0.1  # lower median of (0, baseline), clamped as upstream's api clamps it
    np.testing.assert_allclose(network_extrinsics[0, 1], expected, atol=1e-6)
    # the convention, in words: camera 1 sits one baseline to the right of camera 0 (+x of its optical frame)
    centre1_in_0 = (np.linalg.inv(extrinsics(RIG, 0)) @ extrinsics(RIG, 1))[:3, 3]
    assert centre1_in_0[0] == pytest.approx(RIG.rig_baseline, rel=0.01)
    height, width = output.cameras[0].depth.shape
    sx = width / RIG.width
    np.testing.assert_allclose(network_intrinsics[0, 0, 0, 0], FRAMES[1, 0].K[0, 0] * sx, rtol=1e-6)


RIG3 = syn.SampleConfig(width=64, height=48, frames=2, rig_cameras=3)


def rig3_views(scale):
    """A 3-camera rig: upstream's unit is then the nearer camera's distance, which scales with the rig (with
    two cameras it is the 0.1 clamp: the baseline itself reaches the network)."""
    frames = [syn.render_frame(RIG3, 1, camera) for camera in range(3)]
    return [RigView(f"cam{camera}", frame.rgb, frame.stamp_ns, frame.K, extrinsics(RIG3, camera, scale=scale))
            for camera, frame in enumerate(frames)]


def test_depth_scale_follows_the_rigs_baseline(da3):
    model, received = da3
    received["network"].clear()
    single = DepthRigPipeline(model).process(rig3_views(1.0))
    double = DepthRigPipeline(model).process(rig3_views(2.0))
    # random weights: the predicted centres do not give a positive scale, so the units the poses were
    # normalised to for the network set it (rig_extent); trained weights align by Sim3 (known_poses)
    assert single.scale_source == double.scale_source and single.scale_source in ("known_poses", "rig_extent")
    # the network sees the same normalised poses, so the same depth; the rig's scale is what doubles
    np.testing.assert_array_equal(received["network"][0][0], received["network"][1][0])
    assert double.scale == pytest.approx(2 * single.scale, rel=1e-9)
    for a, b in zip(single.cameras, double.cameras):
        np.testing.assert_allclose(b.depth, 2 * a.depth, rtol=1e-6)
        np.testing.assert_allclose(b.points, 2 * a.points, rtol=1e-5, atol=1e-6)


# -- the `cameras` parameter ----------------------------------------------------------------------------------

def test_cameras_entries_are_namespaces_or_topic_pairs_and_clearly_checked():
    from perception_fm.nodes.params import resolve
    from perception_fm.ros.depth_rig_io import RIG_PARAMS, parse_cameras

    left, right = parse_cameras(["cam0", "/rig/right/color/image_raw, /rig/right/color/camera_info"])
    assert (left.name, left.image_topic, left.camera_info_topic, left.output("points")) == (
        "cam0", "cam0/image", "cam0/camera_info", "cam0/points")
    assert (right.name, right.image_topic, right.output("depth/image")) == (
        "rig/right/color", "/rig/right/color/image_raw", "/rig/right/color/depth/image")
    assert resolve(RIG_PARAMS, {})["cameras"] == ()  # the default: the single camera on image/camera_info
    assert resolve(RIG_PARAMS, {"cameras": ["a", "b"]})["cameras"] == ("a", "b")
    for bad, message in ((["a", "a"], "share"), (["image,camera_info", "b"], "namespace"), ([""], "empty"),
                         (["a,b,c"], "namespace or"), ("cam0", "list of strings"), ([1], "list of strings")):
        with pytest.raises(ValueError, match=message):
            resolve(RIG_PARAMS, {"cameras": bad})


# -- over DDS: a 2-camera synthetic rig through depth_node ----------------------------------------------------

@pytest.mark.ros
def test_two_camera_rig_through_depth_node_over_dds():
    import threading

    import rclpy
    from rclpy.context import Context
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from tf2_msgs.msg import TFMessage

    from perception_fm.nodes.depth_node import DepthNode
    from perception_fm.ros.camera_info import make_camera_info
    from perception_fm.ros.cloud_codec import pointcloud2_to_xyzrgb
    from perception_fm.ros.image_codec import image_to_numpy, numpy_to_image
    from perception_fm.ros.tf import make_transform, ns_to_time
    from rig_truth_model import use_in_default_manager
    from ros_probe import LATCHED, Probe

    use_in_default_manager()
    probe = Probe("rig_probe")
    for camera in range(2):
        probe.record(Image, f"/cam{camera}/depth/image")
    probe.record(PointCloud2, "/points_fused")
    context = Context()
    rclpy.init(context=context)
    node = DepthNode(context=context, parameter_overrides=[
        Parameter("model", value="rig-truth"), Parameter("cameras", value=["/cam0", "/cam1"]),
        Parameter("rig_frame", value="camera_link"), Parameter("input_qos", value="reliable"),
        Parameter("camera_info_wait", value=60.0), Parameter("rig_wait", value=60.0),
        Parameter("known_pose_timeout", value=5.0)])
    executor = MultiThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        probe.publisher(TFMessage, "/tf_static", LATCHED).publish(TFMessage(transforms=[
            make_transform(extrinsics(RIG, camera), "camera_link", syn.rig_camera_frame(RIG, camera),
                           ns_to_time(FRAMES[0, 0].stamp_ns)) for camera in range(2)]))
        infos = [probe.publisher(CameraInfo, f"/cam{camera}/camera_info") for camera in range(2)]
        images = [probe.publisher(Image, f"/cam{camera}/image") for camera in range(2)]
        probe.wait_until(lambda: all(p.get_subscription_count() > 0 for p in infos + images), 60,
                         "the node's rig subscriptions (active)")

        def send(index, camera):
            frame = FRAMES[index, camera]
            info = make_camera_info(frame.K, RIG.width, RIG.height)
            info.header.stamp = ns_to_time(frame.stamp_ns)
            info.header.frame_id = syn.rig_camera_frame(RIG, camera)
            infos[camera].publish(info)
            images[camera].publish(numpy_to_image(frame.rgb, "rgb8", info.header))

        def at(index):
            return lambda message: message.header.stamp == ns_to_time(FRAMES[index, 0].stamp_ns)

        send(0, 1)  # any arrival order within a group
        send(0, 0)
        for camera in range(2):
            depth = probe.wait_for(f"/cam{camera}/depth/image", at(0))
            assert depth.header.frame_id == syn.rig_camera_frame(RIG, camera)  # each camera's own frame
            np.testing.assert_array_equal(image_to_numpy(depth), FRAMES[0, camera].depth)
        fused = probe.wait_for("/points_fused", at(0))
        points, colors = pointcloud2_to_xyzrgb(fused)
        assert fused.header.frame_id == "camera_link" and len(points) == 2 * RIG.width * RIG.height
        truth0, _ = unproject_depth(FRAMES[0, 0].depth, FRAMES[0, 0].K)
        np.testing.assert_allclose(points[:len(truth0)], transform_points(extrinsics(RIG, 0), truth0), atol=1e-5)
        truth1, _ = unproject_depth(FRAMES[0, 1].depth, FRAMES[0, 1].K)
        np.testing.assert_allclose(points[len(truth0):], transform_points(extrinsics(RIG, 1), truth1), atol=1e-5)

        # camera 1 stops: the group goes on without it after rig_wait, counted
        node.set_parameters([Parameter("rig_wait", value=0.2)])
        # applied by the worker's reconfiguration: a call queued behind it sees the new wait
        probe.wait_until(lambda: node.run_in_worker(lambda: node._rig.grouper.wait_s, timeout=60) == 0.2, 60,
                         "rig_wait applied")
        send(1, 0)
        probe.wait_for("/cam0/depth/image", at(1))
        fused = probe.wait_for("/points_fused", at(1))
        assert len(pointcloud2_to_xyzrgb(fused)[0]) == RIG.width * RIG.height
        assert node.stats.snapshot()["count_camera_missing_cam1"] == 1  # on /diagnostics as count_<event>
        assert not any(m.header.stamp == ns_to_time(FRAMES[1, 0].stamp_ns)
                       for m in probe.received("/cam1/depth/image"))
    finally:
        executor.shutdown(timeout_sec=0)
        node.destroy_node()
        rclpy.shutdown(context=context)
        spinner.join(timeout=60)
        probe.close()
