"""Depth F-score: precision and recall of 3-D points within a distance threshold, as the Depth Anything 3 benchmark
scores reconstructions (depth_anything_3/bench/utils.py: evaluate_3d_reconstruction; our implementation, checked
against a brute-force all-pairs computation in tests/test_eval_pose_auc.py).

DA3 fuses every view's depth into one TSDF mesh and compares it with the dataset's mesh. A bag has ground-truth
depth per frame, not a mesh, so we score per frame and average, with DA3's point-set definition:

- Points: every valid pixel back-projected through the camera's intrinsics (the colour camera_info, rescaled to
  the prediction's size, pixel centres aligned). Ground-truth cloud: pixels where the ground truth is valid (as
  for the depth metrics: finite, > min_depth, <= max_depth); predicted cloud: pixels where the ground truth AND
  the aligned prediction are valid (DA3 masks predictions where the ground truth has no depth). Both clouds use
  the same intrinsics, so the score measures depth, not calibration.
- Alignment: none for metric depth; otherwise the frame's median scale (median(gt) / median(pred) over the valid
  pixels), as the depth metrics' scale/frame mode.
- Precision: the fraction of predicted points whose nearest ground-truth point is closer than the threshold
  (strictly); recall: the fraction of ground-truth points whose nearest predicted point is; F = 2PR / (P + R), 0
  when both are 0. Threshold 0.05 m by default (DA3's 7-Scenes, ScanNet++ and HiRoom setting), in ground-truth
  units.
- Large frames: both clouds are taken on one pixel grid of stride s, the smallest with at most `max_points`
  pixels (DA3 voxel-downsamples instead; a fixed grid keeps every run identical).
- Bag value: the mean over frames of the per-frame P, R and F.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

DEFAULT_THRESHOLD_M = 0.05
DEFAULT_MAX_POINTS = 20_000


def scaled_intrinsics(k: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """3x3 K of an image (h, w) = from_size resampled to to_size, pixel centres aligned (as resample_nearest)."""
    sy, sx = to_size[0] / from_size[0], to_size[1] / from_size[1]
    out = np.array(k, np.float64, copy=True)
    out[0, 0] *= sx
    out[0, 1] *= sx
    out[1, 1] *= sy
    out[0, 2] = (k[0][2] + 0.5) * sx - 0.5
    out[1, 2] = (k[1][2] + 0.5) * sy - 0.5
    return out


def backproject(depth: np.ndarray, mask: np.ndarray, k: np.ndarray) -> np.ndarray:
    """(M, 3) camera-frame points of the masked pixels (pinhole, z = depth)."""
    rows, cols = np.nonzero(mask)
    z = depth[rows, cols].astype(np.float64)
    k_inv = np.linalg.inv(np.asarray(k, np.float64))
    rays = k_inv @ np.stack([cols, rows, np.ones_like(cols)]).astype(np.float64)
    return (rays * z).T


def precision_recall(pred_points: np.ndarray, gt_points: np.ndarray, threshold: float) -> tuple[float, float]:
    from scipy.spatial import cKDTree

    if len(pred_points) == 0 or len(gt_points) == 0:
        return 0.0, 0.0
    to_gt, _ = cKDTree(gt_points).query(pred_points)
    to_pred, _ = cKDTree(pred_points).query(gt_points)
    return float(np.mean(to_gt < threshold)), float(np.mean(to_pred < threshold))


def f_score(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def grid_stride(shape: tuple[int, int], max_points: int) -> int:
    return max(1, math.ceil(math.sqrt(shape[0] * shape[1] / max(1, max_points))))


def frame_fscore(aligned_pred: np.ndarray, gt: np.ndarray, gt_valid: np.ndarray, k: np.ndarray, *,
                 threshold: float = DEFAULT_THRESHOLD_M, max_points: int = DEFAULT_MAX_POINTS) -> dict[str, float]:
    """P, R, F of one frame: `aligned_pred` and `gt` at one size, `gt_valid` the ground truth's valid pixels, `k`
    the intrinsics at that size."""
    s = grid_stride(gt.shape, max_points)
    grid = np.zeros(gt.shape, bool)
    grid[::s, ::s] = True
    gt_mask = gt_valid & grid
    with np.errstate(invalid="ignore"):
        pred_mask = gt_mask & np.isfinite(aligned_pred) & (aligned_pred > 0)
    p, r = precision_recall(backproject(aligned_pred, pred_mask, k), backproject(gt, gt_mask, k), threshold)
    return {"precision": p, "recall": r, "fscore": f_score(p, r)}


@dataclass
class FscoreEvaluator:
    threshold: float = DEFAULT_THRESHOLD_M
    max_points: int = DEFAULT_MAX_POINTS
    frames: dict[int, dict[str, float]] = field(default_factory=dict)  # stamp -> P, R, F
    alignment: str = ""

    def add(self, stamp_ns: int, aligned_pred: np.ndarray, gt: np.ndarray, gt_valid: np.ndarray, k: np.ndarray):
        values = frame_fscore(aligned_pred, gt, gt_valid, k, threshold=self.threshold, max_points=self.max_points)
        self.frames[int(stamp_ns)] = values
        return values

    def summary(self) -> dict[str, float]:
        if not self.frames:
            return {}
        return {name: float(np.mean([v[name] for v in self.frames.values()]))
                for name in ("precision", "recall", "fscore")}
