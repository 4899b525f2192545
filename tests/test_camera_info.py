"""CameraInfo ⇄ CameraModel."""
import dataclasses

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import Header

from perception_fm.errors import BadInputError
from perception_fm.ros.camera_info import camera_info_to_intrinsics, check_image_size, make_camera_info

K = np.array([[525.0, 0.0, 319.5], [0.0, 520.0, 239.5], [0.0, 0.0, 1.0]])


def test_make_camera_info():
    msg = make_camera_info(K, 640, 480, Header(frame_id="cam_optical"))
    assert (msg.width, msg.height, msg.header.frame_id) == (640, 480, "cam_optical")
    assert msg.distortion_model == "plumb_bob"
    assert list(msg.d) == [0.0] * 5
    np.testing.assert_array_equal(np.asarray(msg.k).reshape(3, 3), K)
    np.testing.assert_array_equal(np.asarray(msg.r).reshape(3, 3), np.eye(3))
    np.testing.assert_array_equal(np.asarray(msg.p).reshape(3, 4), [[525.0, 0.0, 319.5, 0.0],
                                                                    [0.0, 520.0, 239.5, 0.0],
                                                                    [0.0, 0.0, 1.0, 0.0]])
    assert (msg.binning_x, msg.binning_y) == (0, 0)
    roi = msg.roi
    assert (roi.x_offset, roi.y_offset, roi.width, roi.height, roi.do_rectify) == (0, 0, 0, 0, False)


def test_round_trip_through_the_wire():
    msg = make_camera_info(K.astype(np.float32), 640, 480, Header(frame_id="cam"), distortion_model="equidistant")
    model = camera_info_to_intrinsics(deserialize_message(serialize_message(msg), CameraInfo))
    assert model.K.dtype == np.float64 and model.K.shape == (3, 3)
    np.testing.assert_array_equal(model.K, K)
    assert (model.width, model.height, model.size) == (640, 480, (480, 640))
    assert (model.distortion_model, model.frame_id) == ("equidistant", "cam")
    np.testing.assert_array_equal(model.D, np.zeros(5))
    assert model.is_rectified


def test_model_is_immutable():
    model = camera_info_to_intrinsics(make_camera_info(K, 640, 480))
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.width = 10
    with pytest.raises(ValueError):
        model.K[0, 0] = 1.0


@pytest.mark.parametrize("d, rectified", [([], True), ([0.0] * 5, True), ([0.1, -0.02, 0.0, 0.0, 0.0], False),
                                          ([0.0] * 7 + [1e-3], False)])
def test_is_rectified(d, rectified):
    msg = make_camera_info(K, 640, 480)
    msg.d = d
    model = camera_info_to_intrinsics(msg)
    assert model.is_rectified is rectified
    assert model.D.shape == (len(d),)


def info_with_k(k) -> CameraInfo:
    msg = CameraInfo(width=640, height=480)
    msg.header.frame_id = "cam"
    msg.k = np.asarray(k, dtype=np.float64).reshape(9)
    return msg


@pytest.mark.parametrize("k, words", [
    (np.zeros((3, 3)), "not calibrated"),  # an uncalibrated driver publishes zeros
    ([[np.nan, 0, 320], [0, 500, 240], [0, 0, 1]], "non-finite"),
    ([[500, 0, np.inf], [0, 500, 240], [0, 0, 1]], "non-finite"),
    ([[500, 0, 320], [0, -500, 240], [0, 0, 1]], "fy=-500"),
    ([[0, 0, 320], [0, 500, 240], [0, 0, 1]], "fx=0"),
    ([[500, 0, 320], [0, 500, 240], [0, 0, 0]], "[0.0, 0.0, 0.0]"),
    ([[500, 0, 3200], [0, 500, 240], [0, 0, 1]], "cx=3200"),  # K for another resolution
])
def test_bad_intrinsics(k, words):
    with pytest.raises(BadInputError) as excinfo:
        camera_info_to_intrinsics(info_with_k(k))
    assert excinfo.value.reason == "camera_info"
    assert words in str(excinfo.value) and "'cam'" in str(excinfo.value)


@pytest.mark.parametrize("width, height", [(0, 480), (640, 0)])
def test_bad_size(width, height):
    msg = make_camera_info(K, 640, 480)
    msg.width, msg.height = width, height
    with pytest.raises(BadInputError) as excinfo:
        camera_info_to_intrinsics(msg)
    assert excinfo.value.reason == "camera_info" and f"{width}x{height}" in str(excinfo.value)


def test_bad_distortion():
    msg = make_camera_info(K, 640, 480)
    msg.d = [0.1, float("nan"), 0.0, 0.0, 0.0]
    with pytest.raises(BadInputError) as excinfo:
        camera_info_to_intrinsics(msg)
    assert excinfo.value.reason == "camera_info"


def test_make_camera_info_rejects_bad_input():
    with pytest.raises(BadInputError) as excinfo:
        make_camera_info(np.zeros((3, 3)), 640, 480)
    assert excinfo.value.reason == "camera_info"
    with pytest.raises(BadInputError) as excinfo:
        make_camera_info(K, 0, 480)
    assert excinfo.value.reason == "camera_info"
    with pytest.raises(BadInputError):
        make_camera_info(np.eye(2), 640, 480)


def test_check_image_size():
    model = camera_info_to_intrinsics(make_camera_info(K, 640, 480, Header(frame_id="cam")))
    check_image_size(model, (480, 640))
    check_image_size(model, (480, 640, 3))
    with pytest.raises(BadInputError) as excinfo:
        check_image_size(model, (640, 480, 3))
    assert excinfo.value.reason == "size_mismatch"
    assert "480x640" in str(excinfo.value) and "640x480" in str(excinfo.value)
