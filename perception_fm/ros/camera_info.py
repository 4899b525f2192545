"""sensor_msgs/CameraInfo ⇄ a checked pinhole camera model."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sensor_msgs.msg import CameraInfo, RegionOfInterest

from perception_fm.errors import BadInputError
from perception_fm.geometry.camera import validate_intrinsics


@dataclass(frozen=True, eq=False)
class CameraModel:
    """Intrinsics of one camera, as the images it describes are sized. Arrays are read-only."""

    K: np.ndarray  # (3, 3) float64 pinhole matrix, pixels (OpenCV: pixel centres at integer coordinates)
    width: int
    height: int
    distortion_model: str
    D: np.ndarray  # (n,) float64 distortion coefficients; may be empty
    frame_id: str

    @property
    def is_rectified(self) -> bool:
        """True when the images carry no lens distortion (D empty or all zero), so K alone projects them."""
        return not np.any(self.D)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return self.height, self.width


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def camera_info_to_intrinsics(msg: CameraInfo) -> CameraModel:
    """A checked CameraModel from a CameraInfo; BadInputError('camera_info') naming what is wrong."""
    frame = msg.header.frame_id
    what = f"camera_info of frame {frame!r}"
    width, height = int(msg.width), int(msg.height)
    if width <= 0 or height <= 0:
        raise BadInputError("camera_info", f"{what}: image size must be positive, got {width}x{height}")
    try:  # the package's one set of rules for K: finite, fx, fy > 0, upper triangular, plausible (cx, cy)
        K = validate_intrinsics(msg.k, (height, width)).copy()
    except BadInputError as error:
        raise BadInputError("camera_info", f"{what}: {error}") from None
    D = np.array(msg.d, dtype=np.float64).reshape(-1)
    if not np.isfinite(D).all():
        raise BadInputError("camera_info", f"{what}: distortion has non-finite values: {D.tolist()}")
    return CameraModel(K=_readonly(K), width=width, height=height, distortion_model=str(msg.distortion_model),
                       D=_readonly(D), frame_id=frame)


def check_image_size(model: CameraModel, image_shape) -> None:
    """BadInputError('size_mismatch') unless an image of `image_shape` ((H, W, ...)) is the size the camera
    model describes."""
    height, width = int(image_shape[0]), int(image_shape[1])
    if (height, width) != (model.height, model.width):
        raise BadInputError(
            "size_mismatch", f"image is {width}x{height} but camera_info of frame {model.frame_id!r} describes "
                             f"{model.width}x{model.height}")


def make_camera_info(K, width: int, height: int, header=None, distortion_model: str = "plumb_bob") -> CameraInfo:
    """CameraInfo of a rectified pinhole camera: D = zeros(5), R = I, P = [K | 0], no binning, no ROI."""
    matrix = validate_intrinsics(K, (int(height), int(width)))
    msg = CameraInfo()
    if header is not None:
        msg.header = header
    msg.width, msg.height = int(width), int(height)
    msg.distortion_model = distortion_model
    msg.d = [0.0] * 5  # a list: the checked setter refuses numpy arrays for double[]
    msg.k = matrix.reshape(9)
    msg.r = np.eye(3).reshape(9)
    msg.p = np.hstack([matrix, np.zeros((3, 1))]).reshape(12)
    msg.binning_x = msg.binning_y = 0
    msg.roi = RegionOfInterest()
    return msg
