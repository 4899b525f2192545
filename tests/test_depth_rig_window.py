"""A camera rig with a sliding window (perception_fm.pipelines.depth_rig, window_size > 1): past groups are
keyframes, every camera's pose known in known_pose_frame (odom) from TF. Geometry with the ground-truth test
model (tests/rig_truth_model.py) on the moving synthetic rig; what the real tiny DA3 network receives (random
weights); bounded memory over a long stream; clear errors; the replay of a rig bag with a window."""
import numpy as np
import pytest

from perception_fm.geometry.camera import transform_points, unproject_depth
from perception_fm.pipelines.depth_pipeline import DepthPipelineConfig
from perception_fm.pipelines.depth_rig import DepthRigPipeline, RigView
from perception_fm.replay import synthetic as syn
from rig_truth_model import MOVING, MOVING_FRAMES, RigTruthModel
from test_depth_rig import da3, extrinsics  # noqa: F401 (da3: the tiny DA3 recording what it receives)

CAMERAS = 2


def group(index, stamp_ns=None, cameras=range(CAMERAS)):
    """Group `index` of the moving rig: each camera's frame with its extrinsic in camera_link (the rig frame)."""
    return [RigView(f"cam{camera}", MOVING_FRAMES[index, camera].rgb,
                    MOVING_FRAMES[index, camera].stamp_ns if stamp_ns is None else stamp_ns,
                    MOVING_FRAMES[index, camera].K, extrinsics(MOVING, camera)) for camera in cameras]


def rig_in_odom(index):
    """TF odom <- camera_link at group `index`: the sample's ground truth (odom is its world frame)."""
    return syn.camera_link_to_world(MOVING, index)


def world_truth(index):
    """Every pixel of group `index`'s cameras on the rendered surface, in odom (camera 0's, then camera 1's)."""
    return np.concatenate([
        transform_points(MOVING_FRAMES[index, camera].camera_to_world,
                         unproject_depth(MOVING_FRAMES[index, camera].depth, MOVING_FRAMES[index, camera].K)[0]
                         .astype(np.float64)) for camera in range(CAMERAS)])


def test_keyframe_groups_join_each_call_and_the_clouds_lie_on_one_surface_in_odom():
    model = RigTruthModel()
    pipeline = DepthRigPipeline(model, DepthPipelineConfig(window_size=3, keyframe_every=2), known_world=True)
    window = []  # the keyframe groups expected in the next call
    for index in range(MOVING.frames):
        output = pipeline.process(group(index), rig_in_odom(index))
        views, known = model.calls[-1]
        called = window + [index]
        assert views == output.views_in_call == CAMERAS * len(called) and output.window_groups == len(called)
        # every view of the call posed in odom: the keyframe groups' cameras then this group's, at their stamps
        expected = [MOVING_FRAMES[g, camera].camera_to_world for g in called for camera in range(CAMERAS)]
        np.testing.assert_allclose(np.linalg.inv(known), expected, atol=1e-9)
        # this group's depth (the call's last views), each camera in its own frame and stamp
        for camera, camera_output in enumerate(output.cameras):
            np.testing.assert_array_equal(camera_output.depth, MOVING_FRAMES[index, camera].depth)
            assert camera_output.stamp_ns == MOVING_FRAMES[index, camera].stamp_ns
        # the fused cloud stays in the rig frame; through TF odom <- camera_link at its stamp every group's
        # cloud lands on the one rendered surface
        in_odom = transform_points(output.rig_to_world, output.fused_points.astype(np.float64))
        np.testing.assert_allclose(in_odom, world_truth(index), atol=1e-4)
        # a new keyframe group every keyframe_every groups; the window keeps window_size - 1 of them
        assert output.keyframe == (index % 2 == 0)
        if output.keyframe:
            window = (window + [index])[-2:]
    assert len(model.calls) == MOVING.frames and window == [2, 4]


def test_the_windows_known_poses_reach_the_network_in_its_convention(da3):  # noqa: F811
    model, received = da3
    received["plugin"].clear(), received["network"].clear()
    pipeline = DepthRigPipeline(model, DepthPipelineConfig(window_size=2, keyframe_every=1), known_world=True)
    pipeline.process(group(0), rig_in_odom(0))
    output = pipeline.process(group(1), rig_in_odom(1))
    assert output.conditioned and output.window_groups == 2 and output.views_in_call == 4
    # pipeline -> plugin: world-to-camera in odom of group 0's cameras (the keyframe group), then group 1's
    camera_to_odom = np.stack([MOVING_FRAMES[g, camera].camera_to_world for g in (0, 1) for camera in range(2)])
    np.testing.assert_allclose(received["plugin"][1], np.linalg.inv(camera_to_odom), atol=1e-9)
    # plugin -> network: relative to the call's first view (group 0's camera 0), translations over upstream's
    # unit: the lower median of the 4 views' distances from it, its own 0 included = the nearest other camera
    network_extrinsics, network_intrinsics = received["network"][1]
    distances = np.sort(np.linalg.norm(camera_to_odom[:, :3, 3] - camera_to_odom[0, :3, 3], axis=1))
    unit = max(distances[1], 0.1)
    expected = np.linalg.inv(camera_to_odom) @ camera_to_odom[0]
    expected[:, :3, 3] /= unit
    np.testing.assert_allclose(network_extrinsics[0], expected, atol=1e-5)
    assert network_intrinsics.shape[:2] == (1, 4)
    # the rig moved between the groups: the unit is no longer the lone pair's 0.1 clamp
    assert unit > 0.1
    # depth in odom's units: aligned by Sim3 (trained weights) or in the unit the poses were normalised to
    if output.scale_source == "rig_extent":
        assert output.scale == pytest.approx(unit, rel=1e-9)
    else:
        assert output.scale_source == "known_poses"


def test_memory_is_bounded_by_the_window_and_kept_views_are_never_prepared_again():
    model = RigTruthModel()
    window_size = 3
    pipeline = DepthRigPipeline(model, DepthPipelineConfig(window_size=window_size, keyframe_every=1),
                                known_world=True)
    groups = 40
    for step in range(groups):
        index = step % MOVING.frames
        cameras = (0,) if step % 7 == 3 else range(CAMERAS)  # now and then a camera misses its group
        output = pipeline.process(group(index, stamp_ns=10**9 + step * 10**8, cameras=cameras), rig_in_odom(index))
        assert pipeline.kept_views <= (window_size - 1) * CAMERAS
        assert output.views_in_call <= window_size * CAMERAS
    assert max(views for views, _ in model.calls) == window_size * CAMERAS
    assert model.prepared == sum(1 if step % 7 == 3 else CAMERAS for step in range(groups))  # once per image
    # time going back (a bag restarted): a new sequence, the window starts again
    output = pipeline.process(group(0, stamp_ns=10**9), rig_in_odom(0))
    assert output.new_sequence and output.views_in_call == CAMERAS and pipeline.kept_views == CAMERAS


def test_a_group_without_its_rig_pose_runs_alone_and_is_no_keyframe():
    model = RigTruthModel()
    pipeline = DepthRigPipeline(model, DepthPipelineConfig(window_size=3, keyframe_every=1), known_world=True)
    pipeline.process(group(0), rig_in_odom(0))
    lone = pipeline.process(group(1), None)
    assert lone.views_in_call == CAMERAS and not lone.keyframe and pipeline.kept_views == CAMERAS
    # still conditioned in the rig frame (its cameras' extrinsics), depth and fused cloud as ever
    np.testing.assert_allclose(np.linalg.inv(model.calls[-1][1]), [extrinsics(MOVING, c) for c in range(2)],
                               atol=1e-12)
    np.testing.assert_array_equal(lone.cameras[1].depth, MOVING_FRAMES[1, 1].depth)
    after = pipeline.process(group(2), rig_in_odom(2))
    assert after.window_groups == 2 and after.keyframe  # group 0 still there, group 1 never kept


def test_a_window_without_the_rigs_pose_over_time_is_refused_clearly():
    from perception_fm.nodes.params import resolve
    from perception_fm.ros.depth_rig_io import DEPTH_NODE_PARAMS, RigFrameHandler, parse_cameras

    with pytest.raises(ValueError, match="known_pose_frame"):
        DepthRigPipeline(RigTruthModel(), DepthPipelineConfig(window_size=2))
    streams = parse_cameras(["cam0", "cam1"])
    for missing in ({"known_pose_frame": "odom"}, {"rig_frame": "camera_link"}):
        values = resolve(DEPTH_NODE_PARAMS, {"cameras": ["cam0", "cam1"], "window_size": 3, **missing})
        with pytest.raises(ValueError, match="set known_pose_frame .* and rig_frame"):
            RigFrameHandler(RigTruthModel(), values, streams)
    values = resolve(DEPTH_NODE_PARAMS, {"cameras": ["cam0", "cam1"], "window_size": 3, "rig_frame": "camera_link",
                                         "known_pose_frame": "odom"})
    assert RigFrameHandler(RigTruthModel(), values, streams).pipeline.config.window_size == 3


def test_replay_of_a_rig_bag_with_a_window_over_past_groups(tmp_path):
    """The replay drives the same handler: TF odom <- camera_link from the bag's /tf at each group's stamp."""
    from perception_fm.graph import load_graph
    from perception_fm.replay.bag_io import BagReader
    from perception_fm.replay.runner import replay
    from perception_fm.ros.cloud_codec import pointcloud2_to_xyzrgb
    from perception_fm.ros.image_codec import image_to_numpy
    from perception_fm.ros.tf import stamp_to_ns
    from rig_truth_model import use_in_default_manager

    use_in_default_manager()
    assert syn.main([str(tmp_path / "in"), "--rig", "2", "--frames", str(MOVING.frames), "--width",
                     str(MOVING.width), "--height", str(MOVING.height)]) in (0, None)
    cameras = '["/cam0/color/image_raw,/cam0/color/camera_info", "/cam1/color/image_raw,/cam1/color/camera_info"]'
    (tmp_path / "rig.yaml").write_text(f"""
nodes:
  depth_node:
    executable: depth_node
    parameters: {{model: rig-truth, cameras: {cameras}, rig_frame: camera_link, known_pose_frame: odom,
                 window_size: 3, keyframe_every: 2, rig_tolerance: 0.005}}
""")
    replay(tmp_path / "in", load_graph(tmp_path / "rig.yaml"), tmp_path / "out", progress=False)

    def messages(topic):
        with BagReader(tmp_path / "out") as reader:
            return [item.message for item in reader.messages({topic})]

    infos = messages("/cam1/color/depth/info")
    # groups 0..5 with keyframes 0, 2, 4 (window 3: two kept): calls of 1, 2, 2, 3, 3, 3 groups
    assert [info.window_size for info in infos] == [2, 4, 4, 6, 6, 6]
    assert [info.view_index for info in infos] == [1, 3, 3, 5, 5, 5]  # camera 1: the call's last view
    for index, depth in enumerate(messages("/cam0/color/depth/image")):
        np.testing.assert_array_equal(image_to_numpy(depth), MOVING_FRAMES[index, 0].depth)
    fused = messages("/points_fused")
    assert len(fused) == MOVING.frames
    for index, cloud in enumerate(fused):
        assert cloud.header.frame_id == "camera_link" and stamp_to_ns(cloud.header.stamp) == \
            MOVING_FRAMES[index, 0].stamp_ns
        points, _ = pointcloud2_to_xyzrgb(cloud)
        np.testing.assert_allclose(transform_points(rig_in_odom(index), points.astype(np.float64)),
                                   world_truth(index), atol=1e-4)
