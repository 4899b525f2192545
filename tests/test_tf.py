"""TfBuffer: the tf2 semantics our nodes rely on where tf2_ros is not installed."""
import numpy as np
from geometry_msgs.msg import TransformStamped
from scipy.spatial.transform import Rotation

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
    edge = tf._edges["base"]
    assert len(edge.stamps) <= 6 and edge.stamps[-1] - edge.stamps[0] <= 50_000


def test_reparenting_follows_the_newest_sample():
    tf = TfBuffer()
    tf.add([stamped(pose(0, (1, 0, 0)), "map", "base", 5)])
    tf.add([stamped(pose(0, (3, 0, 0)), "odom", "base", 6)])
    assert tf.parent("base") == "odom"
    assert tf.lookup("map", "base", 6) is None
