"""TfBuffer: the tf2 semantics our nodes rely on where tf2_ros is not installed."""
import math

import numpy as np
import pytest
from geometry_msgs.msg import TransformStamped
from scipy.spatial.transform import Rotation, Slerp

from perception_fm.ros.tf import (TfBuffer, make_transform, matrix_to_pose, matrix_to_transform, ns_to_time,
                                  pose_to_matrix, transform_to_matrix)


def pose(yaw_deg=0.0, xyz=(0, 0, 0), axis="z"):
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_euler(axis, yaw_deg, degrees=True).as_matrix()
    matrix[:3, 3] = xyz
    return matrix


def stamped(matrix, parent, child, stamp_ns) -> TransformStamped:
    return make_transform(matrix, parent, child, ns_to_time(stamp_ns))


def test_conversions_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(10):
        matrix = np.eye(4)
        matrix[:3, :3] = Rotation.random(random_state=rng).as_matrix()
        matrix[:3, 3] = rng.normal(size=3)
        np.testing.assert_allclose(transform_to_matrix(matrix_to_transform(matrix)), matrix, atol=1e-12)
        np.testing.assert_allclose(pose_to_matrix(matrix_to_pose(matrix)), matrix, atol=1e-12)


def test_lookup_composes_a_chain_and_its_inverse():
    tf = TfBuffer()
    odom_base = pose(30, (1, 2, 0))
    base_cam = pose(-90, (0.2, 0, 0.5), axis="x")
    cam_opt = pose(90, (0, 0, 0), axis="y")
    tf.add([stamped(odom_base, "odom", "base_link", 10)])
    tf.add([stamped(base_cam, "base_link", "camera_link", 0), stamped(cam_opt, "camera_link", "optical", 0)],
           static=True)
    expected = odom_base @ base_cam @ cam_opt
    np.testing.assert_allclose(tf.lookup("odom", "optical", 10), expected, atol=1e-12)
    np.testing.assert_allclose(tf.lookup("optical", "odom", 10), np.linalg.inv(expected), atol=1e-12)
    # between two leaves of the tree through their common ancestor
    np.testing.assert_allclose(tf.lookup("camera_link", "base_link", 10), np.linalg.inv(base_cam), atol=1e-12)
    assert tf.lookup("odom", "nowhere", 10) is None
    assert tf.parent("optical") == "camera_link"


def test_interpolates_between_samples_and_refuses_extrapolation():
    tf = TfBuffer()
    tf.add([stamped(pose(0, (0, 0, 0)), "odom", "base", 1_000)])
    tf.add([stamped(pose(90, (2, 0, 0)), "odom", "base", 2_000)])
    middle = tf.lookup("odom", "base", 1_500)
    np.testing.assert_allclose(middle[:3, 3], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(Rotation.from_matrix(middle[:3, :3]).as_euler("zyx", degrees=True)[0], 45, atol=1e-9)
    assert tf.lookup("odom", "base", 2_500) is None
    assert tf.lookup("odom", "base", 2_500, tolerance_ns=600) is not None
    np.testing.assert_allclose(tf.lookup("odom", "base", 0)[:3, 3], [2, 0, 0])  # 0 = latest


def test_out_of_order_samples_are_sorted_and_history_is_bounded():
    tf = TfBuffer(cache_s=1e-6 * 50, max_samples=1000)  # 50 us of history
    for stamp in (0, 30_000, 10_000, 20_000):
        tf.add([stamped(pose(0, (stamp / 10_000, 0, 0)), "odom", "base", stamp)])
    np.testing.assert_allclose(tf.lookup("odom", "base", 15_000)[:3, 3], [1.5, 0, 0], atol=1e-12)
    for stamp in range(40_000, 1_000_000, 10_000):
        tf.add([stamped(pose(0, (0, 0, 0)), "odom", "base", stamp)])
    assert tf.sample_count("base") == 6  # 940 us .. 990 us: cache_s of history
    assert tf.lookup("odom", "base", 930_000) is None and tf.lookup("odom", "base", 940_000) is not None


def test_reparenting_follows_the_newest_sample():
    tf = TfBuffer()
    tf.add([stamped(pose(0, (1, 0, 0)), "map", "base", 5)])
    tf.add([stamped(pose(0, (3, 0, 0)), "odom", "base", 6)])
    assert tf.parent("base") == "odom"
    assert tf.lookup("map", "base", 6) is None


# -- bad input: rejected with a counter (as tf2's buffer does), never fatal ------------------------------------

def raw(parent, child, stamp_ns, quaternion=(0.0, 0.0, 0.0, 1.0), translation=(0.0, 0.0, 0.0)) -> TransformStamped:
    message = TransformStamped()
    message.header.stamp, message.header.frame_id, message.child_frame_id = ns_to_time(stamp_ns), parent, child
    t, q = message.transform.translation, message.transform.rotation
    t.x, t.y, t.z = translation
    q.x, q.y, q.z, q.w = quaternion
    return message


@pytest.mark.parametrize("quaternion", [(0.0, 0.0, 0.0, 0.0), (math.nan, 0.0, 0.0, 1.0), (0.0, math.inf, 0.0, 1.0),
                                        (1e-300, 0.0, 0.0, 0.0)])
def test_zero_and_non_finite_quaternions_are_rejected_and_counted(quaternion):
    tf = TfBuffer()
    tf.add([raw("odom", "base", 1_000, translation=(1.0, 0.0, 0.0))])
    # the bad transform and a good one in the same message: the good one still counts
    tf.add([raw("odom", "base", 2_000, quaternion=quaternion), raw("odom", "other", 2_000)])
    assert tf.rejected == {"bad_quaternion": 1}
    np.testing.assert_allclose(tf.lookup("odom", "base", 0)[:3, 3], [1, 0, 0])  # the last good sample stands
    assert tf.lookup("odom", "base", 2_000) is None  # no sample was made up at the bad one's stamp
    assert tf.lookup("odom", "other", 2_000) is not None


@pytest.mark.parametrize("translation", [(math.nan, 0.0, 0.0), (0.0, -math.inf, 0.0), (0.0, 0.0, math.inf)])
def test_non_finite_translations_are_rejected_and_counted(translation):
    tf = TfBuffer()
    tf.add([raw("odom", "base", 1_000, translation=translation)])
    assert tf.rejected == {"bad_translation": 1}
    assert tf.lookup("odom", "base", 0) is None and tf.frames() == []


def test_empty_frame_ids_and_self_transforms_are_rejected():
    tf = TfBuffer()
    tf.add([raw("", "base", 1), raw("odom", "", 1), raw("/", "base", 1), raw("odom", "/odom", 1)])
    assert tf.rejected == {"empty_frame_id": 3, "self_transform": 1}
    assert tf.frames() == []


def test_rejections_are_logged_rate_limited_but_counted_exactly():
    lines = []
    tf = TfBuffer(warn=lines.append)
    for stamp in range(1, 1_001):
        tf.add([raw("odom", "base", stamp, quaternion=(0.0, 0.0, 0.0, 0.0))])
    assert tf.rejected["bad_quaternion"] == 1_000
    assert len(lines) == 1 and "rejected" in lines[0] and "base" in lines[0] and "quaternion" in lines[0]
    tf.add([raw("odom", "base", 1, translation=(math.nan, 0, 0))])  # another reason is not hidden by the first
    assert len(lines) == 2 and "translation" in lines[1]


def test_non_normalised_quaternions_are_normalised():
    tf = TfBuffer()
    half = math.sqrt(0.5)
    tf.add([raw("odom", "base", 1_000, quaternion=(0.0, 0.0, 3 * half, 3 * half))])  # 90 deg about z, norm 3
    np.testing.assert_allclose(tf.lookup("odom", "base", 1_000), pose(90), atol=1e-12)
    assert not tf.rejected


def test_an_old_sample_after_a_long_in_order_run_is_inserted_in_order():
    tf = TfBuffer(cache_s=10.0)
    for i in range(1_100):  # 1 ms apart: 1.1 s of history, beyond the old 1,000-sample deque
        tf.add([raw("odom", "base", 1_000_000_000 + i * 1_000_000, translation=(float(i), 0.0, 0.0))])
    tf.add([raw("odom", "base", 1_000_000_000 + 500_500_000, translation=(1_000.0, 0.0, 0.0))])  # late sample
    assert not tf.rejected
    np.testing.assert_allclose(tf.lookup("odom", "base", 1_000_000_000 + 500_500_000)[:3, 3], [1_000, 0, 0])
    np.testing.assert_allclose(tf.lookup("odom", "base", 1_000_000_000 + 500_250_000)[:3, 3], [750, 0, 0])
    # the whole run is still there: the cache is bounded by time, not by a sample count
    np.testing.assert_allclose(tf.lookup("odom", "base", 1_000_000_000)[:3, 3], [0, 0, 0])
    np.testing.assert_allclose(tf.lookup("odom", "base", 0)[:3, 3], [1_099, 0, 0])


def test_the_cache_is_bounded_by_time_and_older_samples_are_dropped_and_counted():
    tf = TfBuffer(cache_s=2.0)
    for i in range(5_000):  # 1 kHz for 5 s
        tf.add([raw("odom", "base", i * 1_000_000, translation=(i / 1_000, 0.0, 0.0))])
    newest = 4_999 * 1_000_000
    assert tf.lookup("odom", "base", newest - 2_000_000_000) is not None  # cache_s of history kept
    assert tf.lookup("odom", "base", newest - 2_100_000_000) is None  # older history dropped
    tf.add([raw("odom", "base", newest - 3_000_000_000)])  # older than the cache window: dropped, counted
    assert tf.rejected == {"old_data": 1}
    assert tf.lookup("odom", "base", newest - 3_000_000_000) is None
    assert tf.sample_count("base") <= 2_001


def test_a_hard_sample_cap_drops_the_oldest_and_never_raises():
    tf = TfBuffer(cache_s=3600.0, max_samples=100)
    for i in range(1_000):
        tf.add([raw("odom", "base", (i + 1) * 1_000, translation=(float(i), 0.0, 0.0))])
    tf.add([raw("odom", "base", 500)])  # older than all kept samples, inside the time window
    assert tf.sample_count("base") == 100
    assert tf.lookup("odom", "base", 0)[0, 3] == 999
    assert tf.rejected["cache_full"] >= 900


def test_equal_stamps_replace_and_lookups_stay_finite():
    tf = TfBuffer()
    tf.add([raw("odom", "base", 1_000, translation=(1.0, 0.0, 0.0))])
    tf.add([raw("odom", "base", 1_000, translation=(2.0, 0.0, 0.0))])
    tf.add([raw("odom", "base", 2_000, translation=(4.0, 0.0, 0.0))])
    np.testing.assert_allclose(tf.lookup("odom", "base", 1_000)[:3, 3], [2, 0, 0])
    np.testing.assert_allclose(tf.lookup("odom", "base", 1_500)[:3, 3], [3, 0, 0])
    assert tf.sample_count("base") == 2


def test_slerp_takes_the_short_way_and_matches_scipy():
    rng = np.random.default_rng(1)
    tf = TfBuffer()
    for k in range(20):
        a, b = Rotation.random(2, random_state=rng)
        q_b = b.as_quat() * (-1 if k % 2 else 1)  # either sign of the same rotation
        tf.add([raw("odom", f"f{k}", 0, quaternion=tuple(a.as_quat())),
                raw("odom", f"f{k}", 1_000, quaternion=tuple(q_b))])
        expected = Slerp([0, 1], Rotation.concatenate([a, b]))([0.3]).as_matrix()[0]
        np.testing.assert_allclose(tf.lookup("odom", f"f{k}", 300)[:3, :3], expected, atol=1e-9)


def test_tf_conversions_do_not_use_scipy():
    # TF callbacks run while the worker thread imports torch; scipy's array-API layer inspects a half-imported
    # torch there and raised (issue 9). The conversions and the buffer must not go through scipy.
    import perception_fm.ros.tf as tf_module

    assert "scipy" not in tf_module.__dict__ and "Rotation" not in tf_module.__dict__


@pytest.mark.ros
def test_listener_counts_bad_transforms_from_the_wire_and_keeps_the_good_ones():
    from tf2_msgs.msg import TFMessage

    from perception_fm.ros.tf import TF_QOS, TF_TOPIC, TfListener
    from ros_probe import Probe

    probe = Probe("tf_listener_probe")
    try:
        listener = TfListener(probe.node)
        if listener.buffer is None:
            pytest.skip("tf2_ros is installed: it does its own checking")
        publisher = probe.publisher(TFMessage, TF_TOPIC, TF_QOS)
        probe.wait_until(lambda: publisher.get_subscription_count() > 0, 30, "subscription matched")
        publisher.publish(TFMessage(transforms=[raw("odom", "base", 5, quaternion=(0.0, 0.0, 0.0, 0.0)),
                                                raw("odom", "base", 6, translation=(math.nan, 0.0, 0.0)),
                                                raw("odom", "base", 7, translation=(1.0, 2.0, 3.0))]))
        probe.wait_until(lambda: listener.lookup("odom", "base", 7) is not None, 30, "the good transform")
        assert listener.rejected == {"bad_quaternion": 1, "bad_translation": 1}
        np.testing.assert_allclose(listener.lookup("odom", "base", 7)[:3, 3], [1, 2, 3])
    finally:
        probe.close()
