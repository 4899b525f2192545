"""Relative pose accuracy over view pairs, as the Depth Anything 3 and VGGT benchmarks report it (AUC@3°, AUC@30°),
computed the same way so the numbers compare with the papers' tables. Our implementation; the definition was read
from DA3's benchmark (depth_anything_3/bench/utils.py: compute_pose, se3_to_relative_pose_error,
calculate_auc_np) and is checked against a brute-force transcription of it in tests/test_eval_pose_auc.py.

- Views: the estimated poses associated with ground-truth poses (nearest stamp within max_diff, as for ATE),
  within one sequence segment (a pipeline reset starts a new world: pairs never cross it).
- Both trajectories are expressed relative to their first view: P_k = C_0^-1 C_k (C: camera-to-world). No other
  alignment: the errors below do not change under a rigid motion or a scale of either trajectory.
- Every pair i < j: the pair transform M_ij = P_i P_j^-1 (DA3 composes world-to-camera extrinsics E' = E E_0^-1
  as inv(E'_i) E'_j, which is this matrix), for the ground truth (G) and the estimate (M).
  - rotation error: the angle of R(G_ij)^T R(M_ij), in degrees;
  - translation error: the angle between the LINES of t(G_ij) and t(M_ij), in degrees, 0..90 (DA3 takes
    min(angle, 180 - angle): a reversed direction counts as right; the translation's length is ignored,
    so the metric is scale-free). A zero-length translation has no direction: its error is 90°, as DA3's
    normalisation gives. A non-finite error counts as a failure at every threshold.
- Pair error e = max(rotation error, translation error). Accuracy at threshold k: the fraction of pairs with
  e < k. AUC@τ = the mean of the accuracies at k = 1, 2, ..., τ degrees (DA3's histogram over integer bins, whose
  last bin is closed: at k = τ, e = τ also counts). RRA@τ / RTA@τ: the fraction of pairs whose rotation /
  translation error alone is below τ.

The pair loop runs in row blocks, accumulating only integer-bin counts, so memory stays bounded for long bags
(time is quadratic: 10 000 views are 50 M pairs)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from perception_fm.eval.trajectory import associate, rotation_angles_deg
from perception_fm.geometry.sim3 import invert_pose

THRESHOLDS = (3, 30)
PAIRS_PER_BLOCK = 200_000


@dataclass
class PoseAucResult:
    pairs: int
    views: int
    auc: dict[int, float] = field(default_factory=dict)  # threshold -> AUC
    rra: dict[int, float] = field(default_factory=dict)  # threshold -> fraction of pairs, rotation alone
    rta: dict[int, float] = field(default_factory=dict)
    segments: int = 0

    def to_dict(self) -> dict:
        return {"pairs": self.pairs, "views": self.views, "segments": self.segments,
                "auc": {str(k): v for k, v in self.auc.items()}, "rra": {str(k): v for k, v in self.rra.items()},
                "rta": {str(k): v for k, v in self.rta.items()}}


def line_angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle in degrees between the lines of (N, 3) vectors a and b, 0..90; 90 where either has zero length."""
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.abs(np.einsum("ij,ij->i", a, b)) / (na * nb)
    cos = np.where((na > 0) & (nb > 0), cos, 0.0)
    return np.degrees(np.arccos(np.clip(cos, 0.0, 1.0)))


def pair_errors(ref_rel: np.ndarray, est_rel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rotation, translation) errors in degrees of (N, 4, 4) pair transforms."""
    rot = rotation_angles_deg(np.swapaxes(ref_rel[:, :3, :3], 1, 2) @ est_rel[:, :3, :3])
    return rot, line_angles_deg(ref_rel[:, :3, 3], est_rel[:, :3, 3])


class _Counts:
    """Integer-bin counts of pair errors; enough for AUC@τ and RRA/RTA@τ."""

    def __init__(self, thresholds):
        self.thresholds = tuple(int(t) for t in thresholds)
        self.n = 0
        self.hist = {t: np.zeros(t, np.int64) for t in self.thresholds}  # bins [k-1, k), last one closed
        self.rot_below = {t: 0 for t in self.thresholds}
        self.trans_below = {t: 0 for t in self.thresholds}

    def add(self, rot: np.ndarray, trans: np.ndarray) -> None:
        worst = np.maximum(rot, trans)
        worst = np.where(np.isfinite(worst), worst, np.inf)
        self.n += worst.size
        for t in self.thresholds:
            self.hist[t] += np.histogram(worst, bins=np.arange(t + 1))[0]
            self.rot_below[t] += int(np.count_nonzero(rot < t))
            self.trans_below[t] += int(np.count_nonzero(trans < t))

    def auc(self, t: int) -> float:
        return float(np.mean(np.cumsum(self.hist[t]) / self.n)) if self.n else float("nan")


def relative_pose_auc(ref_poses: np.ndarray, est_poses: np.ndarray, thresholds=THRESHOLDS,
                      segments: np.ndarray | None = None) -> PoseAucResult:
    """AUC@τ, RRA@τ and RTA@τ over all pairs of (N, 4, 4) camera-to-world poses, view k of one matching view k of
    the other; pairs only within a segment (one int per view) when given."""
    ref = np.asarray(ref_poses, np.float64)
    est = np.asarray(est_poses, np.float64)
    if ref.shape != est.shape or ref.ndim != 3 or ref.shape[1:] != (4, 4):
        raise ValueError(f"poses must be two (N, 4, 4) arrays of one shape, got {ref.shape} and {est.shape}")
    segments = np.zeros(len(ref), np.int64) if segments is None else np.asarray(segments)
    counts = _Counts(thresholds)
    used = 0
    for segment in np.unique(segments):
        sel = np.flatnonzero(segments == segment)
        if sel.size < 2:
            continue
        used += 1
        rel = []
        for poses in (ref[sel], est[sel]):
            p = invert_pose(poses[:1]) @ poses  # relative to the segment's first view
            rel.append((p, invert_pose(p)))
        (gp, gp_inv), (ep, ep_inv) = rel
        n = sel.size
        rows_per_block = max(1, PAIRS_PER_BLOCK // n)
        for start in range(0, n - 1, rows_per_block):
            rows = np.arange(start, min(start + rows_per_block, n - 1))
            i = np.repeat(rows, n - 1 - rows)  # each row i with every j > i
            j = np.concatenate([np.arange(r + 1, n) for r in rows])
            counts.add(*pair_errors(gp[i] @ gp_inv[j], ep[i] @ ep_inv[j]))
    result = PoseAucResult(pairs=counts.n, views=len(ref), segments=used)
    for t in counts.thresholds:
        result.auc[t] = counts.auc(t)
        result.rra[t] = counts.rot_below[t] / counts.n if counts.n else float("nan")
        result.rta[t] = counts.trans_below[t] / counts.n if counts.n else float("nan")
    return result


def evaluate_pose_auc(ref_stamps, ref_poses, est_stamps, est_poses, *, max_diff, est_segments=None,
                      thresholds=THRESHOLDS) -> PoseAucResult:
    """relative_pose_auc over the estimate's poses associated with the reference's (stamps need not be sorted)."""
    ref_order = np.argsort(np.asarray(ref_stamps), kind="stable")
    est_order = np.argsort(np.asarray(est_stamps), kind="stable")
    ref_stamps, ref_poses = np.asarray(ref_stamps)[ref_order], np.asarray(ref_poses, np.float64)[ref_order]
    est_stamps, est_poses = np.asarray(est_stamps)[est_order], np.asarray(est_poses, np.float64)[est_order]
    segments = (np.zeros(len(est_stamps), np.int64) if est_segments is None
                else np.asarray(est_segments)[est_order])
    refs, ests, segs = [], [], []
    for segment in np.unique(segments):
        sel = np.flatnonzero(segments == segment)
        i_ref, i_est = associate(ref_stamps, est_stamps[sel], max_diff)
        refs.append(ref_poses[i_ref])
        ests.append(est_poses[sel][i_est])
        segs.append(np.full(i_ref.size, segment))
    return relative_pose_auc(np.concatenate(refs), np.concatenate(ests), thresholds, np.concatenate(segs))
