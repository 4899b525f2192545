"""The synthetic sample's camera rig: known extrinsics that agree with what each camera renders, a baseline
that scales the rig, per-camera topics and /tf_static in the bag; the single camera is unchanged."""
import numpy as np
import pytest

from perception_fm.geometry.camera import project_points, transform_points, unproject_depth
from perception_fm.replay import synthetic as syn

RIG = syn.SampleConfig(width=64, height=48, frames=4, rig_cameras=3)


def _cross_check(config, index, source, target):
    """Camera `source`'s ground-truth depth unprojected, moved by the rig's poses into camera `target` and
    compared with `target`'s own depth there: (overlap fraction, fraction of overlap agreeing to 1e-4)."""
    a, b = syn.render_frame(config, index, source), syn.render_frame(config, index, target)
    points, _ = unproject_depth(a.depth, a.K)
    in_b = transform_points(np.linalg.inv(b.camera_to_world) @ a.camera_to_world, points.astype(np.float64))
    pixels, z = project_points(in_b, b.K)
    u, v = np.round(pixels[:, 0]).astype(int), np.round(pixels[:, 1]).astype(int)
    inside = (z > 0) & (u >= 0) & (u < config.width) & (v >= 0) & (v < config.height)
    u, v, z = u[inside], v[inside], z[inside]
    # rounding to the nearest pixel moves a point by up to half a pixel: 2 % covers that on tilted surfaces
    # (not at depth edges, hence the fraction)
    agree = np.abs(b.depth[v, u] - z) / z < 0.02
    return inside.mean(), agree.mean()


def test_rig_cameras_see_one_scene_through_their_extrinsics():
    overlap, agree = _cross_check(RIG, 1, source=0, target=1)
    assert overlap > 0.5 and agree > 0.9
    overlap, agree = _cross_check(RIG, 1, source=2, target=0)
    assert overlap > 0.3 and agree > 0.9
    # a wrong extrinsic breaks the agreement: the check can fail
    wrong = syn.SampleConfig(width=64, height=48, frames=4, rig_cameras=3, rig_baseline=1.5)
    a = syn.render_frame(RIG, 1, 0)
    b = syn.render_frame(wrong, 1, 1)
    points, _ = unproject_depth(a.depth, a.K)
    in_b = transform_points(np.linalg.inv(syn.camera_to_world(RIG, 1, 1)) @ a.camera_to_world,
                            points.astype(np.float64))
    pixels, z = project_points(in_b, b.K)
    u, v = np.round(pixels[:, 0]).astype(int), np.round(pixels[:, 1]).astype(int)
    inside = (z > 0) & (u >= 0) & (u < 64) & (v >= 0) & (v < 48)
    assert (np.abs(b.depth[v[inside], u[inside]] - z[inside]) / z[inside] < 0.02).mean() < 0.7


def test_the_baseline_scales_every_mount_and_nothing_else():
    double = syn.SampleConfig(width=64, height=48, frames=4, rig_cameras=3, rig_baseline=2 * RIG.rig_baseline)
    for camera in range(3):
        m1, m2 = syn.rig_mount(RIG, camera), syn.rig_mount(double, camera)
        np.testing.assert_allclose(m2[:3, 3], 2 * m1[:3, 3])
        np.testing.assert_array_equal(m2[:3, :3], m1[:3, :3])
    left, right = syn.rig_mount(RIG, 0), syn.rig_mount(RIG, 1)
    assert np.linalg.norm(left[:3, 3] - right[:3, 3]) == pytest.approx(RIG.rig_baseline)
    np.testing.assert_array_equal(syn.rig_mount(syn.SampleConfig(), 0), np.eye(4))
    with pytest.raises(IndexError):
        syn.rig_mount(RIG, 3)
    with pytest.raises(ValueError, match="rig_cameras"):
        syn.SampleConfig(rig_cameras=4)


def test_rig_bag_has_each_camera_and_its_extrinsics_on_tf_static(tmp_path):
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    config = syn.SampleConfig(width=32, height=24, frames=2, rig_cameras=2)
    summary = syn.write_sample_bag(tmp_path / "rig", config)
    for camera in range(2):
        topics = syn.rig_topics(config, camera)
        for key in ("image", "camera_info", "depth", "instances", "camera_pose"):
            assert summary["topics"][topics[key]] == 2
    store = get_typestore(Stores.ROS2_KILTED)
    frames = {}
    with Reader(tmp_path / "rig") as reader:
        for connection, _, raw in reader.messages():
            message = store.deserialize_cdr(raw, connection.msgtype)
            if connection.topic == "/tf_static":
                for transform in message.transforms:
                    t = transform.transform.translation
                    frames[transform.child_frame_id] = (transform.header.frame_id, np.array([t.x, t.y, t.z]))
            elif connection.topic == "/cam1/color/image_raw":
                assert message.header.frame_id == syn.rig_camera_frame(config, 1)
    for camera in range(2):
        parent, translation = frames[syn.rig_camera_frame(config, camera)]
        assert parent == config.camera_link_frame
        np.testing.assert_allclose(translation, syn.rig_mount(config, camera)[:3, 3])
