"""Similarity transforms (Sim(3)), point-set and camera-pose alignment, and sliding-window pose chaining.

numpy, float64. A Sim3 maps x -> s R x + t. Poses are 4x4 camera_to_world (c2w) matrices unless a name says
world_to_camera (w2c); OpenCV camera axes (x right, y down, z forward), camera centre C = c2w[:3, 3].
Applying a Sim3 to a trajectory changes its units by the factor `scale`: depth maps that go with the
trajectory must be multiplied by the same scale.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DegenerateAlignmentError(ValueError):
    """The points do not determine a similarity (fewer than 3, or (near) collinear)."""


def _project_to_so3(M: np.ndarray) -> np.ndarray:
    """Closest proper rotation (Frobenius norm) to a 3x3 matrix."""
    U, _, Vt = np.linalg.svd(M)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt)) or 1.0])
    return U @ D @ Vt


@dataclass(frozen=True)
class Sim3:
    """x -> scale * rotation @ x + translation. Arrays are stored as read-only float64 copies."""

    scale: float
    rotation: np.ndarray  # (3, 3) proper rotation
    translation: np.ndarray  # (3,)

    def __post_init__(self):
        rotation = np.array(self.rotation, dtype=np.float64)
        translation = np.array(self.translation, dtype=np.float64).reshape(-1)
        if rotation.shape != (3, 3) or translation.shape != (3,):
            raise ValueError(f"Sim3 needs a (3, 3) rotation and (3,) translation, got {rotation.shape}, "
                             f"{translation.shape}")
        rotation.flags.writeable = False
        translation.flags.writeable = False
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "rotation", rotation)
        object.__setattr__(self, "translation", translation)

    @classmethod
    def identity(cls) -> "Sim3":
        return cls(1.0, np.eye(3), np.zeros(3))

    @classmethod
    def from_matrix(cls, M: np.ndarray) -> "Sim3":
        """From a 4x4 [[s R, t], [0, 1]] (inverse of `matrix`)."""
        M = np.asarray(M, dtype=np.float64)
        scale = float(np.cbrt(np.linalg.det(M[:3, :3])))
        return cls(scale, M[:3, :3] / scale, M[:3, 3])

    def matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix [[s R, t], [0, 1]]."""
        M = np.eye(4)
        M[:3, :3] = self.scale * self.rotation
        M[:3, 3] = self.translation
        return M

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Transform (..., 3) points."""
        return self.scale * (np.asarray(points, dtype=np.float64) @ self.rotation.T) + self.translation

    def apply_to_camera_to_world(self, c2w: np.ndarray) -> np.ndarray:
        """Move (..., 4, 4) camera_to_world poses: orientation R @ R_c, centre s R C + t. Stays rigid."""
        c2w = np.asarray(c2w, dtype=np.float64)
        out = np.array(c2w, dtype=np.float64, copy=True)
        out[..., :3, :3] = self.rotation @ c2w[..., :3, :3]
        out[..., :3, 3] = self.apply(c2w[..., :3, 3])
        out[..., 3, :] = (0.0, 0.0, 0.0, 1.0)
        return out

    def apply_to_world_to_camera(self, w2c: np.ndarray) -> np.ndarray:
        """Same move for (..., 4, 4) world_to_camera poses."""
        return invert_pose(self.apply_to_camera_to_world(invert_pose(w2c)))

    def inverse(self) -> "Sim3":
        """y -> R^T (y - t) / s."""
        rotation_t = self.rotation.T
        return Sim3(1.0 / self.scale, rotation_t, -(rotation_t @ self.translation) / self.scale)

    def compose(self, other: "Sim3") -> "Sim3":
        """self o other: x -> self.apply(other.apply(x))."""
        return Sim3(
            self.scale * other.scale,
            self.rotation @ other.rotation,
            self.scale * (self.rotation @ other.translation) + self.translation,
        )


def invert_pose(T: np.ndarray) -> np.ndarray:
    """Inverse of rigid (..., 4, 4) poses: [R^T, -R^T t]. Float64."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape[-2:] != (4, 4):
        raise ValueError(f"poses must be (..., 4, 4), got {T.shape}")
    rotation_t = np.swapaxes(T[..., :3, :3], -1, -2)
    out = np.zeros_like(T)
    out[..., :3, :3] = rotation_t
    out[..., :3, 3] = -(rotation_t @ T[..., :3, 3, None])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def _normalised_weights(weights, n: int) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    if weights.shape != (n,):
        raise ValueError(f"need {n} weights, got {weights.shape[0]}")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError("weights must be finite, non-negative and not all zero")
    return weights / weights.sum()


def umeyama(
    src: np.ndarray, dst: np.ndarray, with_scale: bool = True, weights: np.ndarray | None = None,
    *, rank_tol: float = 1e-6,
) -> Sim3:
    """Least-squares similarity dst ~ s R src + t (Umeyama 1991), optionally weighted; R is proper.

    with_scale=False fixes s = 1. Raises DegenerateAlignmentError when fewer than 3 points have positive
    weight or the centred src points are (near) collinear: second singular value <= rank_tol x the first
    (the rotation about that line is then undetermined). Coplanar points are fine.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 3 or src.shape != dst.shape:
        raise ValueError(f"src and dst must both be (N, 3), got {src.shape} and {dst.shape}")
    n = src.shape[0]
    if n < 3:
        raise DegenerateAlignmentError(f"need at least 3 points for a similarity, got {n}")
    w = _normalised_weights(weights, n)
    if np.count_nonzero(w) < 3:
        raise DegenerateAlignmentError(f"need at least 3 points with positive weight, got {np.count_nonzero(w)}")
    mean_src = w @ src
    mean_dst = w @ dst
    src_c = src - mean_src
    dst_c = dst - mean_dst
    spread = np.linalg.svd(np.sqrt(w)[:, None] * src_c, compute_uv=False)
    if spread[0] == 0 or spread[1] <= rank_tol * spread[0]:
        raise DegenerateAlignmentError(
            f"source points are collinear or coincident (singular values {spread.tolist()})"
        )
    covariance = (w[:, None] * dst_c).T @ src_c  # sum_i w_i dst_i src_i^T
    U, S, Vt = np.linalg.svd(covariance)
    d = np.sign(np.linalg.det(U) * np.linalg.det(Vt)) or 1.0
    D = np.array([1.0, 1.0, d])
    rotation = (U * D) @ Vt
    scale = float((S * D).sum() / (spread**2).sum()) if with_scale else 1.0
    return Sim3(scale, rotation, mean_dst - scale * rotation @ mean_src)


def align_camera_poses(
    src_c2w: np.ndarray, dst_c2w: np.ndarray, *, with_scale: bool = True, weights: np.ndarray | None = None,
    min_baseline: float = 1e-6, fallback_scale: float = 1.0,
) -> tuple[Sim3, bool]:
    """Sim3 taking cameras from the src frame to the dst frame, from N >= 1 corresponding camera_to_world poses.

    Unlike `umeyama` on camera centres this uses orientations, so it works for any N >= 1, collinear or
    static cameras included:
    - rotation: weighted chordal mean of dst_R_i src_R_i^T, projected to SO(3) by SVD;
    - scale (if with_scale): least squares given that rotation on the centred centres,
      s = sum_i w_i <dC_dst_i, R dC_src_i> / sum_i w_i |dC_src_i|^2;
    - translation: mean_dst - s R mean_src (weighted means of the centres).
    Returns (sim3, scale_determined). The scale is not determined (False, and `fallback_scale` is used, 1.0 by
    default) when with_scale is False, when the src baseline (weighted RMS distance of the centres from their
    mean, src units) is below min_baseline, or when the least-squares scale is <= 0 (inconsistent input).
    A caller tracking a trajectory scale should then keep its previous scale (pass it as fallback_scale).
    """
    src = np.asarray(src_c2w, dtype=np.float64)
    dst = np.asarray(dst_c2w, dtype=np.float64)
    if src.ndim != 3 or src.shape[1:] != (4, 4) or src.shape != dst.shape:
        raise ValueError(f"src_c2w and dst_c2w must both be (N, 4, 4), got {src.shape} and {dst.shape}")
    n = src.shape[0]
    if n < 1:
        raise ValueError("need at least one camera pose")
    w = _normalised_weights(weights, n)
    rotation = _project_to_so3(np.einsum("n,nij,nkj->ik", w, dst[:, :3, :3], src[:, :3, :3]))
    centres_src, centres_dst = src[:, :3, 3], dst[:, :3, 3]
    mean_src, mean_dst = w @ centres_src, w @ centres_dst
    rotated_src = (centres_src - mean_src) @ rotation.T
    spread = float(w @ np.einsum("ni,ni->n", rotated_src, rotated_src))  # weighted mean |dC_src|^2
    scale, determined = float(fallback_scale), False
    if with_scale and np.sqrt(spread) >= min_baseline and spread > 0:
        estimate = float(w @ np.einsum("ni,ni->n", centres_dst - mean_dst, rotated_src)) / spread
        if estimate > 0 and np.isfinite(estimate):
            scale, determined = estimate, True
    return Sim3(scale, rotation, mean_dst - scale * rotation @ mean_src), determined


def chain_window(
    window_c2w: np.ndarray, anchors: dict[int, np.ndarray], *, scale: float | None = None,
    fallback_scale: float = 1.0,
) -> tuple[np.ndarray, Sim3, bool]:
    """Bring one model call's camera poses into the global trajectory (sliding-window pose chaining).

    window_c2w: (N, 4, 4) camera_to_world of the call's N views in the call's own frame and scale.
    anchors: {view index in the window: (4, 4) global camera_to_world} for views already in the trajectory.
    scale: the window -> global scale when the caller knows it (1 for metric models; a depth ratio on shared
        views for relative ones); None estimates it from the anchors' camera centres, falling back to
        `fallback_scale` (the caller's previous scale) when they do not determine it (one anchor, or anchors
        that did not move).
    The rotation and translation come from `align_camera_poses` on the anchors (equal weights).
    Returns (all N views' global camera_to_world (anchors included, as aligned rather than copied), the Sim3
    window -> global, scale_determined). scale_determined is True only when the scale was estimated from the
    anchors here; callers update their running scale from sim3.scale only then.
    Raises ValueError without anchors or with an anchor index outside the window.
    """
    window = np.asarray(window_c2w, dtype=np.float64)
    if window.ndim != 3 or window.shape[1:] != (4, 4):
        raise ValueError(f"window_c2w must be (N, 4, 4), got {window.shape}")
    if not anchors:
        raise ValueError("chain_window needs at least one anchor (a view with a known global pose)")
    indices = sorted(anchors)
    if indices[0] < 0 or indices[-1] >= window.shape[0]:
        raise ValueError(f"anchor indices {indices} outside the window of {window.shape[0]} views")
    dst = np.stack([np.asarray(anchors[i], dtype=np.float64) for i in indices])
    sim3, determined = align_camera_poses(
        window[indices], dst, with_scale=scale is None, fallback_scale=fallback_scale if scale is None else scale
    )
    return sim3.apply_to_camera_to_world(window), sim3, determined
