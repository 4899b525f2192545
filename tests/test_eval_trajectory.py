"""ATE / RPE against evo (the reference implementation people compare with), and known perturbations."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from evo.core import metrics as evo_metrics  # the reference (setup.py extra "eval"): missing -> the module fails
from evo.core import sync as evo_sync
from evo.core import trajectory as evo_trajectory
from scipy.spatial.transform import Rotation

from perception_fm.eval.trajectory import (
    TrajectoryEvalError,
    associate,
    error_stats,
    evaluate_trajectory,
    rotation_angles_deg,
)
from perception_fm.geometry.sim3 import Sim3
from perception_fm.replay.synthetic import SampleConfig, camera_to_world


TOL = 1e-6


def random_walk(n: int, seed: int) -> np.ndarray:
    """A smooth-ish random camera trajectory (c2w)."""
    rng = np.random.default_rng(seed)
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, :3, 3] = np.cumsum(rng.normal(scale=0.3, size=(n, 3)), axis=0)
    rotvecs = np.cumsum(rng.normal(scale=0.15, size=(n, 3)), axis=0)
    poses[:, :3, :3] = Rotation.from_rotvec(rotvecs).as_matrix()
    return poses


def perturb(poses: np.ndarray, seed: int, trans_noise=0.05, rot_noise=0.02) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = poses.copy()
    out[:, :3, 3] += rng.normal(scale=trans_noise, size=(len(poses), 3))
    out[:, :3, :3] = Rotation.from_rotvec(rng.normal(scale=rot_noise, size=(len(poses), 3))).as_matrix() \
        @ out[:, :3, :3]
    return out


def sim3_of(seed: int, scale: float) -> Sim3:
    return Sim3(scale, Rotation.random(random_state=seed).as_matrix(), np.random.default_rng(seed).normal(size=3))


def evo_reference(ref_stamps, ref_poses, est_stamps, est_poses, *, with_scale, max_diff, delta=1,
                  all_pairs=False):
    """evo's numbers: associate, align (correct_scale), APE translation, RPE translation and angle in degrees."""
    ref = evo_trajectory.PoseTrajectory3D(poses_se3=list(ref_poses), timestamps=np.asarray(ref_stamps, float))
    est = evo_trajectory.PoseTrajectory3D(poses_se3=list(est_poses), timestamps=np.asarray(est_stamps, float))
    ref, est = evo_sync.associate_trajectories(ref, est, max_diff=max_diff)
    est = copy.deepcopy(est)
    est.align(ref, correct_scale=with_scale)
    out = {}
    ape = evo_metrics.APE(evo_metrics.PoseRelation.translation_part)
    ape.process_data((ref, est))
    out["ate"] = ape.get_all_statistics()
    out["ate_errors"] = ape.error
    for key, relation in (("rpe_trans", evo_metrics.PoseRelation.translation_part),
                          ("rpe_rot", evo_metrics.PoseRelation.rotation_angle_deg)):
        rpe = evo_metrics.RPE(relation, delta=delta, delta_unit=evo_metrics.Unit.frames, all_pairs=all_pairs)
        rpe.process_data((ref, est))
        out[key] = rpe.get_all_statistics()
        out[key + "_errors"] = rpe.error
    out["positions"] = est.positions_xyz
    return out


def assert_matches_evo(ours, theirs):
    np.testing.assert_allclose(ours.ate, theirs["ate_errors"], atol=TOL, rtol=0)
    np.testing.assert_allclose(ours.est_aligned[:, :3, 3], theirs["positions"], atol=TOL, rtol=0)
    np.testing.assert_allclose(ours.rpe_trans, theirs["rpe_trans_errors"], atol=TOL, rtol=0)
    np.testing.assert_allclose(ours.rpe_rot_deg, theirs["rpe_rot_errors"], atol=TOL, rtol=0)
    for name, stats in (("ate", ours.ate_stats), ("rpe_trans", ours.rpe_trans_stats),
                        ("rpe_rot", ours.rpe_rot_stats)):
        for key in ("rmse", "mean", "median", "std", "min", "max", "sse"):
            assert abs(getattr(stats, key) - theirs[name][key]) <= TOL * max(1.0, abs(theirs[name][key])), \
                (name, key, getattr(stats, key), theirs[name][key])


@pytest.mark.parametrize("with_scale", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_trajectories_match_evo(seed, with_scale):
    n = 60
    ref = random_walk(n, seed)
    truth = sim3_of(seed + 10, 0.37 if with_scale else 1.0)  # estimate lives in another frame (and scale)
    est = truth.inverse().apply_to_camera_to_world(perturb(ref, seed + 20))
    stamps = 100.0 + np.arange(n) * 0.1
    ours = evaluate_trajectory(stamps, ref, stamps, est, with_scale=with_scale, max_diff=0.01)
    assert_matches_evo(ours, evo_reference(stamps, ref, stamps, est, with_scale=with_scale, max_diff=0.01))


@pytest.mark.parametrize("delta,all_pairs", [(1, False), (3, False), (4, True)])
def test_rpe_deltas_match_evo(delta, all_pairs):
    ref = random_walk(41, 5)
    est = perturb(ref, 6, trans_noise=0.1, rot_noise=0.05)
    stamps = np.arange(41) * 0.05
    ours = evaluate_trajectory(stamps, ref, stamps, est, with_scale=True, max_diff=0.01, delta=delta,
                               all_pairs=all_pairs)
    assert_matches_evo(ours, evo_reference(stamps, ref, stamps, est, with_scale=True, max_diff=0.01, delta=delta,
                                           all_pairs=all_pairs))


@pytest.mark.parametrize("case", ["est_sparser", "est_denser", "jitter_and_gaps"])
def test_association_matches_evo(case):
    rng = np.random.default_rng(7)
    ref_stamps = 50.0 + np.arange(90) / 30.0  # 30 Hz reference
    ref = random_walk(90, 8)
    if case == "est_sparser":  # 10 Hz estimate, slightly late
        est_stamps = ref_stamps[::3] + 0.004
    elif case == "est_denser":  # estimate at 60 Hz
        est_stamps = 50.0 + np.arange(170) / 60.0
    else:  # jittered stamps, a gap, some beyond the tolerance
        est_stamps = np.sort(ref_stamps[rng.choice(90, 50, replace=False)] + rng.uniform(-0.02, 0.02, 50))
    # the estimate's pose at its stamp: reference interpolated by nearest index plus noise
    nearest = np.clip(np.round((est_stamps - 50.0) * 30.0).astype(int), 0, 89)
    est = sim3_of(3, 2.0).apply_to_camera_to_world(perturb(ref[nearest], 9))
    i_ref, i_est = associate(ref_stamps, est_stamps, 0.01)
    ref_sync, est_sync = evo_sync.associate_trajectories(
        evo_trajectory.PoseTrajectory3D(poses_se3=list(ref), timestamps=ref_stamps),
        evo_trajectory.PoseTrajectory3D(poses_se3=list(est), timestamps=est_stamps), max_diff=0.01)
    np.testing.assert_array_equal(ref_stamps[i_ref], ref_sync.timestamps)
    np.testing.assert_array_equal(est_stamps[i_est], est_sync.timestamps)
    ours = evaluate_trajectory(ref_stamps, ref, est_stamps, est, with_scale=True, max_diff=0.01)
    assert_matches_evo(ours, evo_reference(ref_stamps, ref, est_stamps, est, with_scale=True, max_diff=0.01))


def test_integer_nanosecond_stamps_associate_like_seconds():
    ref_s = 1_700_000_000.0 + np.arange(20) * 0.1
    est_s = ref_s[::2] + 0.003
    ref_ns = (1_700_000_000 * 10**9 + np.arange(20) * 100_000_000).astype(np.int64)
    est_ns = ref_ns[::2] + 3_000_000
    a = associate(ref_ns, est_ns, 10_000_000)
    b = associate(ref_s - 1_700_000_000, est_s - 1_700_000_000, 0.01)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_synthetic_sample_path_matches_evo_and_recovers_the_scale():
    config = SampleConfig(frames=40)
    ref = np.stack([camera_to_world(config, i) for i in range(config.frames)])
    stamps = np.arange(config.frames) / config.rate_hz
    # a relative-scale estimate: the path in another frame at 1/4.2 scale, with a little noise
    est = sim3_of(11, 1 / 4.2).apply_to_camera_to_world(perturb(ref, 12, trans_noise=0.01, rot_noise=0.005))
    for with_scale in (False, True):
        ours = evaluate_trajectory(stamps, ref, stamps, est, with_scale=with_scale, max_diff=0.01)
        assert_matches_evo(ours, evo_reference(stamps, ref, stamps, est, with_scale=with_scale, max_diff=0.01))
    exact = sim3_of(11, 1 / 4.2).apply_to_camera_to_world(ref)
    result = evaluate_trajectory(stamps, ref, stamps, exact, with_scale=True, max_diff=0.01)
    assert result.scale == pytest.approx(4.2, rel=1e-9)
    assert result.ate_stats.max < 1e-9 and result.rpe_trans_stats.max < 1e-9 and result.rpe_rot_stats.max < 1e-6


def test_known_offsets_give_known_errors():
    # every estimated position 0.3 m off along +z of the world, orientation exact: after SE(3) alignment the
    # constant offset is absorbed; a constant offset is not an error
    ref = random_walk(30, 4)
    est = ref.copy()
    est[:, :3, 3] += [0, 0, 0.3]
    stamps = np.arange(30.0)
    r = evaluate_trajectory(stamps, ref, stamps, est, with_scale=False, max_diff=0.01)
    assert r.ate_stats.rmse < 1e-9
    # alternating +-d along x after a fixed frame: ATE rmse = d exactly (mean offset is zero)
    d = 0.05
    est = ref.copy()
    est[:, 0, 3] += d * np.where(np.arange(30) % 2, 1.0, -1.0)
    r = evaluate_trajectory(stamps, ref, stamps, est, with_scale=False, max_diff=0.01)
    assert r.ate_stats.rmse == pytest.approx(d, abs=2e-3)  # the alignment may absorb a little of it
    # a pure rotation error of 2 degrees about z at one frame: RPE rotation sees it twice (into and out of it)
    est = ref.copy()
    est[10, :3, :3] = Rotation.from_euler("z", 2, degrees=True).as_matrix() @ est[10, :3, :3]
    r = evaluate_trajectory(stamps, ref, stamps, est, with_scale=False, max_diff=0.01)
    big = np.sort(r.rpe_rot_deg)[-2:]
    np.testing.assert_allclose(big, [2.0, 2.0], atol=1e-9)
    assert np.sort(r.rpe_rot_deg)[-3] < 1e-6


def test_segments_are_aligned_separately():
    ref = random_walk(40, 13)
    stamps = np.arange(40.0)
    est = np.concatenate([sim3_of(1, 0.5).apply_to_camera_to_world(ref[:20]),
                          sim3_of(2, 3.0).apply_to_camera_to_world(ref[20:])])
    segments = np.repeat([0, 1], 20)
    r = evaluate_trajectory(stamps, ref, stamps, est, with_scale=True, max_diff=0.01, est_segments=segments)
    assert r.segments_used == 2 and r.ate_stats.max < 1e-9
    assert sorted(s.scale for s in r.alignments) == pytest.approx([1 / 3.0, 2.0])
    assert r.rpe_trans.size == 38  # no pair across the boundary
    one = evaluate_trajectory(stamps, ref, stamps, est, with_scale=True, max_diff=0.01)
    assert one.ate_stats.rmse > 0.1


def test_collinear_and_degenerate_trajectories():
    n = 10
    ref = np.tile(np.eye(4), (n, 1, 1))
    ref[:, 0, 3] = np.arange(n) * 0.2  # straight line: the rotation about it is free, the errors are not
    stamps = np.arange(n, dtype=float)
    est = sim3_of(4, 2.0).apply_to_camera_to_world(ref)
    r = evaluate_trajectory(stamps, ref, stamps, est, with_scale=True, max_diff=0.01)
    assert r.ate_stats.max < 1e-9 and r.scale == pytest.approx(0.5)
    with pytest.raises(TrajectoryEvalError):
        evaluate_trajectory(stamps, ref, stamps + 0.5, est, with_scale=True, max_diff=0.01)  # nothing associates
    with pytest.raises(TrajectoryEvalError):
        evaluate_trajectory(stamps[:2], ref[:2], stamps[:2], est[:2], with_scale=True, max_diff=0.01)


def test_rotation_angles_and_stats():
    angles = np.array([0.0, 1e-7, 0.5, 90.0, 179.999, 180.0])
    axes = Rotation.random(len(angles), random_state=1).as_rotvec()
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    r = Rotation.from_rotvec(axes * np.radians(angles)[:, None]).as_matrix()
    np.testing.assert_allclose(rotation_angles_deg(r), angles, atol=1e-9)
    s = error_stats(np.array([3.0, 4.0]))
    assert s.rmse == pytest.approx(np.sqrt(12.5)) and s.sse == 25.0 and s.median == 3.5 and s.count == 2
    assert error_stats(np.zeros(0)).count == 0
