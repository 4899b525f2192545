"""Rotation matrix <-> quaternion (x, y, z, w), the order of ROS geometry_msgs/Quaternion. numpy, vectorised."""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation


def matrix_to_quaternion_xyzw(R: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions (x, y, z, w) with w >= 0 (canonical sign).

    Slightly non-orthogonal input (accumulated rounding) is projected to the nearest rotation.
    """
    R = np.asarray(R, dtype=np.float64)
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"rotation matrices must be (..., 3, 3), got {R.shape}")
    q = Rotation.from_matrix(R.reshape(-1, 3, 3)).as_quat()  # scalar-last
    q = np.where(q[:, 3:4] < 0, -q, q)  # q and -q are the same rotation; pick w >= 0 for stable messages
    return q.reshape(*R.shape[:-2], 4)


def quaternion_xyzw_to_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions (x, y, z, w), normalised here, -> (..., 3, 3) rotation matrices."""
    q = np.asarray(q, dtype=np.float64)
    if q.shape[-1] != 4:
        raise ValueError(f"quaternions must be (..., 4), got {q.shape}")
    return Rotation.from_quat(q.reshape(-1, 4)).as_matrix().reshape(*q.shape[:-1], 3, 3)
