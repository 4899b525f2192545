"""Trajectory accuracy: absolute trajectory error (ATE) and relative pose error (RPE), with the conventions of
evo (`evo_ape/evo_rpe --align [--correct_scale]`, TUM RGB-D benchmark notation), so numbers are comparable:

- association: each pose of the trajectory with fewer poses (the estimate when both have as many) is paired
  with the nearest-in-time pose of the other, within `max_diff` (ties go to the earlier pose); a pose of the
  longer one may serve several;
- alignment: Umeyama on the associated positions, estimate → reference; SE(3) (`with_scale=False`, metric
  trajectories) or Sim(3) (`with_scale=True`, relative-scale ones: the scale is part of the estimate's
  unknowns). Orientations are rotated with the positions (perception_fm.geometry.sim3);
- ATE: |t_ref_i - t_est_i| after alignment, per pose; statistics RMSE, mean, median, std, min, max, SSE;
- RPE: E_ij = (Q_i^-1 Q_j)^-1 (P_i^-1 P_j) over pose pairs (i, i + delta) in frames; consecutive pairs
  (0, d), (d, 2d), ... by default, every i with `all_pairs`; errors |t(E)| and the angle of R(E) in degrees.
  RPE uses the aligned estimate, so a Sim(3) alignment fixes its translation scale.

Poses are (N, 4, 4) camera_to_world matrices. Stamps are any numeric type (int nanoseconds in the runner).

Ours or evo's: ours, checked against evo (the tests' reference; setup.py's `eval` extra installs it). The
tests show equality to 1e-6: tests/test_eval_trajectory.py::test_random_trajectories_match_evo (ATE with SE(3)
and Sim(3) alignment), ::test_rpe_deltas_match_evo (RPE, several deltas, consecutive and all pairs),
::test_association_matches_evo, ::test_synthetic_sample_path_matches_evo_and_recovers_the_scale. Kept rather
than delegated because the alignment is perception_fm.geometry.sim3's Umeyama, which the depth pipeline needs
anyway (one implementation, not two); the runner aligns each sequence segment on its own and keeps the fitted
Sim(3) (test_segments_are_aligned_separately); and stamps stay exact integer nanoseconds, where evo takes float
seconds (test_integer_nanosecond_stamps_associate_like_seconds).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from perception_fm.geometry.sim3 import DegenerateAlignmentError, Sim3, align_camera_poses, invert_pose, umeyama


class TrajectoryEvalError(ValueError):
    pass


@dataclass(frozen=True)
class ErrorStats:
    rmse: float
    mean: float
    median: float
    std: float
    min: float
    max: float
    sse: float
    count: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def error_stats(errors: np.ndarray) -> ErrorStats:
    e = np.asarray(errors, np.float64).reshape(-1)
    if e.size == 0:
        nan = float("nan")
        return ErrorStats(nan, nan, nan, nan, nan, nan, 0.0, 0)
    sse = float(e @ e)
    return ErrorStats(rmse=float(np.sqrt(sse / e.size)), mean=float(e.mean()), median=float(np.median(e)),
                      std=float(e.std()), min=float(e.min()), max=float(e.max()), sse=sse, count=int(e.size))


def nearest_matches(short: np.ndarray, long: np.ndarray, max_diff) -> tuple[np.ndarray, np.ndarray]:
    """Indices (i_short, i_long): for each stamp of `short`, the nearest stamp of sorted `long` within max_diff
    (ties: the earlier one). Stamps stay in their own dtype (integer nanoseconds lose nothing)."""
    short = np.asarray(short)
    long = np.asarray(long)
    if long.size == 0 or short.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if np.any(np.diff(long) < 0):
        raise TrajectoryEvalError("stamps must be sorted")
    upper = np.minimum(np.searchsorted(long, short, side="right"), long.size - 1)
    has_lower = upper > 0
    lower = np.maximum(upper - 1, 0)
    diff_up = long[upper] - short
    diff_low = short - long[lower]
    in_range = (short >= long[0] - max_diff) & (short <= long[-1] + max_diff)
    take_up = in_range & (diff_up <= max_diff) & (~has_lower | (diff_up < diff_low))
    take_low = in_range & ~take_up & has_lower & (diff_low <= max_diff) & (diff_low <= diff_up)
    index = np.where(take_up, upper, lower)
    keep = take_up | take_low
    return np.flatnonzero(keep).astype(np.int64), index[keep].astype(np.int64)


def associate(ref_stamps: np.ndarray, est_stamps: np.ndarray, max_diff) -> tuple[np.ndarray, np.ndarray]:
    """(ref indices, est indices) of associated poses, in the order of the shorter trajectory (the estimate
    when both are as long). Both stamp arrays must be sorted."""
    ref_stamps, est_stamps = np.asarray(ref_stamps), np.asarray(est_stamps)
    if est_stamps.size > ref_stamps.size:
        i_ref, i_est = nearest_matches(ref_stamps, est_stamps, max_diff)
    else:
        i_est, i_ref = nearest_matches(est_stamps, ref_stamps, max_diff)
    return i_ref, i_est


def align_trajectory(est_poses: np.ndarray, ref_poses: np.ndarray, with_scale: bool) -> Sim3:
    """Umeyama estimate → reference on positions (SE(3) or Sim(3)). Collinear positions still align (the
    rotation about their line does not change any error); coincident positions fall back to orientations."""
    est_poses = np.asarray(est_poses, np.float64)
    ref_poses = np.asarray(ref_poses, np.float64)
    if est_poses.shape[0] < 3:
        raise TrajectoryEvalError(f"need at least 3 associated poses to align, got {est_poses.shape[0]}")
    try:
        # rank_tol -1: exactly collinear positions (a straight-line trajectory, e.g. the eval's baseline) align
        # by Umeyama too; with rank_tol 0 they fell back to orientations, which is no least-squares fit of ATE
        return umeyama(est_poses[:, :3, 3], ref_poses[:, :3, 3], with_scale=with_scale, rank_tol=-1.0)
    except DegenerateAlignmentError:
        sim3, _ = align_camera_poses(est_poses, ref_poses, with_scale=with_scale)
        return sim3


def rotation_angles_deg(rotations: np.ndarray) -> np.ndarray:
    """Angle of (N, 3, 3) rotations in degrees: atan2(|axis term|, (trace - 1) / 2), accurate at 0 and 180."""
    r = np.asarray(rotations, np.float64)
    axis = np.stack([r[:, 2, 1] - r[:, 1, 2], r[:, 0, 2] - r[:, 2, 0], r[:, 1, 0] - r[:, 0, 1]], axis=1)
    cos = (np.trace(r, axis1=1, axis2=2) - 1.0) / 2.0
    return np.degrees(np.arctan2(0.5 * np.linalg.norm(axis, axis=1), cos))


def rpe_pairs(n: int, delta: int = 1, all_pairs: bool = False) -> tuple[np.ndarray, np.ndarray]:
    if delta < 1:
        raise TrajectoryEvalError(f"RPE delta must be >= 1 frame, got {delta}")
    if all_pairs:
        first = np.arange(max(n - delta, 0))
        return first, first + delta
    ids = np.arange(0, n, delta)
    return ids[:-1], ids[1:]


def rpe_errors(ref_poses: np.ndarray, est_poses: np.ndarray, delta: int = 1,
               all_pairs: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index of the pair's second pose, translation errors, rotation errors in degrees)."""
    ref = np.asarray(ref_poses, np.float64)
    est = np.asarray(est_poses, np.float64)
    i, j = rpe_pairs(len(ref), delta, all_pairs)
    if i.size == 0:
        return j, np.zeros(0), np.zeros(0)
    ref_rel = invert_pose(ref[i]) @ ref[j]
    est_rel = invert_pose(est[i]) @ est[j]
    error = invert_pose(ref_rel) @ est_rel
    return j, np.linalg.norm(error[:, :3, 3], axis=1), rotation_angles_deg(error[:, :3, :3])


@dataclass
class TrajectoryResult:
    with_scale: bool
    stamps: np.ndarray  # (M,) stamps of the associated poses (reference's), sorted
    ref_poses: np.ndarray  # (M, 4, 4)
    est_aligned: np.ndarray  # (M, 4, 4) estimate after alignment
    ate: np.ndarray  # (M,) translation errors
    ate_stats: ErrorStats
    rpe_stamps: np.ndarray
    rpe_trans: np.ndarray
    rpe_rot_deg: np.ndarray
    rpe_trans_stats: ErrorStats
    rpe_rot_stats: ErrorStats
    alignments: list[Sim3] = field(default_factory=list)  # one per segment
    segments_used: int = 1
    segments_skipped: int = 0

    @property
    def scale(self) -> float:
        """The alignment's scale (the first segment's when there are several)."""
        return self.alignments[0].scale if self.alignments else float("nan")

    @property
    def label(self) -> str:
        return "Sim(3)" if self.with_scale else "SE(3)"


def evaluate_trajectory(ref_stamps, ref_poses, est_stamps, est_poses, *, with_scale: bool, max_diff,
                        delta: int = 1, all_pairs: bool = False, est_segments=None) -> TrajectoryResult:
    """ATE and RPE of an estimated trajectory against a reference.

    Stamps need not be sorted (they are sorted here, with their poses). `est_segments` (one int per estimated
    pose) splits the estimate into independently aligned pieces, e.g. trajectories that restarted after a
    reset; the errors are pooled, RPE pairs never cross a boundary. Segments with fewer than 3 associated
    poses are skipped (counted in segments_skipped). Raises TrajectoryEvalError when nothing can be aligned.
    """
    ref_stamps, ref_poses = _sorted(ref_stamps, ref_poses)
    order = np.argsort(np.asarray(est_stamps), kind="stable")
    est_stamps = np.asarray(est_stamps)[order]
    est_poses = np.asarray(est_poses, np.float64)[order]
    segments = np.zeros(len(est_stamps), np.int64) if est_segments is None else np.asarray(est_segments)[order]
    pieces, skipped = [], 0
    for segment in np.unique(segments):
        sel = np.flatnonzero(segments == segment)
        i_ref, i_est = associate(ref_stamps, est_stamps[sel], max_diff)
        if i_ref.size < 3:
            skipped += 1
            continue
        ref = ref_poses[i_ref]
        est = est_poses[sel][i_est]
        try:
            sim3 = align_trajectory(est, ref, with_scale)
        except (TrajectoryEvalError, DegenerateAlignmentError):
            skipped += 1
            continue
        aligned = sim3.apply_to_camera_to_world(est)
        j, trans, rot = rpe_errors(ref, aligned, delta, all_pairs)
        pieces.append((ref_stamps[i_ref], ref, aligned, sim3, ref_stamps[i_ref][j], trans, rot))
    if not pieces:
        raise TrajectoryEvalError(
            f"no trajectory piece with at least 3 poses associated within {max_diff} of the reference "
            f"({len(est_stamps)} estimated, {len(ref_stamps)} reference poses)")
    stamps = np.concatenate([p[0] for p in pieces])
    ref_all = np.concatenate([p[1] for p in pieces])
    est_all = np.concatenate([p[2] for p in pieces])
    ate = np.linalg.norm(ref_all[:, :3, 3] - est_all[:, :3, 3], axis=1)
    rpe_stamps = np.concatenate([p[4] for p in pieces])
    rpe_trans = np.concatenate([p[5] for p in pieces])
    rpe_rot = np.concatenate([p[6] for p in pieces])
    return TrajectoryResult(
        with_scale=with_scale, stamps=stamps, ref_poses=ref_all, est_aligned=est_all, ate=ate,
        ate_stats=error_stats(ate), rpe_stamps=rpe_stamps, rpe_trans=rpe_trans, rpe_rot_deg=rpe_rot,
        rpe_trans_stats=error_stats(rpe_trans), rpe_rot_stats=error_stats(rpe_rot),
        alignments=[p[3] for p in pieces], segments_used=len(pieces), segments_skipped=skipped,
    )


def _sorted(stamps, poses):
    stamps = np.asarray(stamps)
    poses = np.asarray(poses, np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (4, 4) or len(poses) != len(stamps):
        raise TrajectoryEvalError(f"poses must be (N, 4, 4) with one stamp each, got {poses.shape} and "
                                  f"{stamps.shape}")
    order = np.argsort(stamps, kind="stable")
    return stamps[order], poses[order]
