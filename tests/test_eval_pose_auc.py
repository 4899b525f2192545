"""The DA3 paper's metrics: relative pose AUC over view pairs (perception_fm.eval.pose_auc) and depth F-score
(perception_fm.eval.depth_fscore), each against an independent brute-force transcription of the DA3 benchmark's
definition and against closed cases."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from perception_fm.eval import depth_fscore, pose_auc
from perception_fm.geometry.sim3 import Sim3


def random_trajectory(rng, n, step=0.3):
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, :3, :3] = Rotation.from_rotvec(np.cumsum(rng.normal(0, 0.15, (n, 3)), axis=0)).as_matrix()
    poses[:, :3, 3] = np.cumsum(rng.normal(0, step, (n, 3)), axis=0)
    return poses


def perturbed(rng, poses, rot_deg, trans):
    out = poses.copy()
    noise = Rotation.from_rotvec(rng.normal(0, np.radians(rot_deg), (len(poses), 3))).as_matrix()
    out[:, :3, :3] = noise @ poses[:, :3, :3]
    out[:, :3, 3] += rng.normal(0, trans, (len(poses), 3))
    return out


def da3_reference(gt_c2w, pred_c2w, thresholds):
    """A literal, loop-by-loop reading of DA3's benchmark: world-to-camera extrinsics, made relative to the
    first camera (E @ inv(E_0)), pair transform inv(E'_i) @ E'_j for every i < j, rotation error from the
    quaternions' dot product, translation error as the angle between lines, AUC from np.histogram over integer
    bins. Written independently of perception_fm.eval.pose_auc (scipy rotations, no shared helper)."""
    ext = [np.linalg.inv(c) for c in gt_c2w], [np.linalg.inv(c) for c in pred_c2w]
    rel = [[e @ np.linalg.inv(es[0]) for e in es] for es in ext]
    rot_err, trans_err = [], []
    n = len(gt_c2w)
    for i in range(n):
        for j in range(i + 1, n):
            g = np.linalg.inv(rel[0][i]) @ rel[0][j]
            p = np.linalg.inv(rel[1][i]) @ rel[1][j]
            qg = Rotation.from_matrix(g[:3, :3]).as_quat()
            qp = Rotation.from_matrix(p[:3, :3]).as_quat()
            rot_err.append(np.degrees(np.arccos(np.clip(2 * np.dot(qg, qp) ** 2 - 1, -1, 1))))
            tg, tp = g[:3, 3], p[:3, 3]
            cos = np.dot(tg, tp) / (np.linalg.norm(tg) * np.linalg.norm(tp))
            angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
            trans_err.append(min(angle, abs(180 - angle)))
    worst = np.maximum(rot_err, trans_err)
    out = {}
    for t in thresholds:
        histogram, _ = np.histogram(worst, bins=np.arange(t + 1))
        out[t] = (float(np.mean(np.cumsum(histogram / len(worst)))), float(np.mean(np.array(rot_err) < t)),
                  float(np.mean(np.array(trans_err) < t)))
    return out


@pytest.mark.parametrize("seed,rot_deg,trans", [(0, 1.0, 0.02), (1, 4.0, 0.1), (2, 12.0, 0.4)])
def test_pose_auc_matches_a_brute_force_transcription_of_da3(seed, rot_deg, trans):
    rng = np.random.default_rng(seed)
    gt = random_trajectory(rng, 25)
    est = perturbed(rng, gt, rot_deg, trans)
    r = pose_auc.relative_pose_auc(gt, est, thresholds=(3, 5, 30))
    reference = da3_reference(gt, est, (3, 5, 30))
    assert r.pairs == 25 * 24 // 2
    for t, (auc, rra, rta) in reference.items():
        assert r.auc[t] == pytest.approx(auc, abs=1e-12)
        assert r.rra[t] == pytest.approx(rra, abs=1e-12) and r.rta[t] == pytest.approx(rta, abs=1e-12)
    assert 0 < r.auc[30] < 1  # the noise levels put errors on both sides of the thresholds


def test_pose_auc_ignores_the_estimates_world_and_scale_and_blocks_do_not_change_counts(monkeypatch):
    rng = np.random.default_rng(5)
    gt = random_trajectory(rng, 30)
    sim3 = Sim3(0.37, Rotation.from_rotvec([0.3, -1.2, 0.5]).as_matrix(), [4.0, -2.0, 1.0])
    exact = pose_auc.relative_pose_auc(gt, sim3.apply_to_camera_to_world(gt))
    assert exact.auc == {3: 1.0, 30: 1.0} and exact.rra[30] == exact.rta[30] == 1.0
    noisy = perturbed(rng, gt, 5.0, 0.2)
    whole = pose_auc.relative_pose_auc(gt, noisy)
    monkeypatch.setattr(pose_auc, "PAIRS_PER_BLOCK", 7)  # many small row blocks
    assert pose_auc.relative_pose_auc(gt, noisy).to_dict() == whole.to_dict()


def test_pose_auc_closed_case_ten_and_a_half_degrees():
    """Two views 1 m apart; the estimate turns the second 10.5° about z in place: the pair's rotation error is 10.5°
    and its translation direction error 10.5°, so accuracy is 0 for thresholds 1..10 and 1 for 11..30:
    AUC@30 = 20/30 (half a degree off the integers, so rounding cannot move a bin)."""
    gt = np.tile(np.eye(4), (2, 1, 1))
    gt[1, :3, 3] = [1.0, 0.0, 0.0]
    est = gt.copy()
    est[1, :3, :3] = Rotation.from_euler("z", 10.5, degrees=True).as_matrix()
    r = pose_auc.relative_pose_auc(gt, est)
    assert r.pairs == 1 and r.auc[3] == 0.0 and r.auc[30] == pytest.approx(20 / 30)
    assert r.rra[30] == r.rta[30] == 1.0


def test_pose_auc_pairs_stay_in_their_segment_and_zero_translation_fails():
    rng = np.random.default_rng(3)
    gt = random_trajectory(rng, 9)
    r = pose_auc.relative_pose_auc(gt, gt, segments=np.array([0] * 4 + [1] * 5))
    assert r.pairs == 4 * 3 // 2 + 5 * 4 // 2 and r.segments == 2 and r.auc[30] == 1.0
    still = np.tile(np.eye(4), (3, 1, 1))  # a camera that does not move: no direction to get right
    assert pose_auc.relative_pose_auc(still, still).rta[30] == 0.0
    assert pose_auc.line_angles_deg(np.zeros((1, 3)), np.ones((1, 3)))[0] == 90.0


def test_evaluate_pose_auc_associates_by_stamp():
    rng = np.random.default_rng(4)
    gt = random_trajectory(rng, 12)
    stamps = np.arange(12) * 100
    order = rng.permutation(12)
    r = pose_auc.evaluate_pose_auc(stamps, gt, stamps[order] + 3, gt[order], max_diff=5)
    assert r.pairs == 66 and r.auc[3] == 1.0
    assert pose_auc.evaluate_pose_auc(stamps, gt, stamps + 50, gt, max_diff=5).pairs == 0


# -- depth F-score -------------------------------------------------------------------------------------------

K = np.array([[20.0, 0.0, 7.5], [0.0, 20.0, 5.5], [0.0, 0.0, 1.0]])


def brute_force_fscore(pred, gt, k, threshold):
    """Points by the pinhole formulas pixel by pixel; every distance between the clouds; DA3's P/R/F."""
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    gt_pts, pred_pts = [], []
    for v in range(gt.shape[0]):
        for u in range(gt.shape[1]):
            if np.isfinite(gt[v, u]) and gt[v, u] > 0:
                gt_pts.append(((u - cx) / fx * gt[v, u], (v - cy) / fy * gt[v, u], gt[v, u]))
                if np.isfinite(pred[v, u]) and pred[v, u] > 0:
                    pred_pts.append(((u - cx) / fx * pred[v, u], (v - cy) / fy * pred[v, u], pred[v, u]))
    gt_pts, pred_pts = np.array(gt_pts), np.array(pred_pts)
    distances = np.linalg.norm(pred_pts[:, None, :] - gt_pts[None, :, :], axis=2)
    precision = float(np.mean(distances.min(axis=1) < threshold))
    recall = float(np.mean(distances.min(axis=0) < threshold))
    return precision, recall, 2 * precision * recall / (precision + recall) if precision + recall else 0.0


@pytest.mark.parametrize("seed,noise", [(0, 0.01), (1, 0.04), (2, 0.15)])
def test_fscore_matches_brute_force_distances(seed, noise):
    rng = np.random.default_rng(seed)
    gt = rng.uniform(1.0, 3.0, (12, 16)).astype(np.float32)
    gt[rng.random(gt.shape) < 0.15] = 0.0  # no ground truth there
    pred = (gt + rng.normal(0, noise, gt.shape)).astype(np.float32)
    pred[rng.random(gt.shape) < 0.1] = np.inf  # e.g. sky
    values = depth_fscore.frame_fscore(pred, gt, np.isfinite(gt) & (gt > 0), K, threshold=0.05)
    p, r, f = brute_force_fscore(pred, gt, K, 0.05)
    assert (values["precision"], values["recall"], values["fscore"]) == pytest.approx((p, r, f), abs=1e-12)


def test_fscore_closed_cases_on_a_plane():
    gt = np.full((12, 16), 2.0, np.float32)
    valid = np.ones(gt.shape, bool)
    assert depth_fscore.frame_fscore(gt, gt, valid, K)["fscore"] == 1.0
    assert depth_fscore.frame_fscore(gt + np.float32(0.03), gt, valid, K)["fscore"] == 1.0  # 3 cm < 5 cm
    # 0.5 m behind: no point of one plane is within 5 cm of the other (their distance is at least 0.5 m)
    far = depth_fscore.frame_fscore(gt + np.float32(0.5), gt, valid, K)
    assert far == {"precision": 0.0, "recall": 0.0, "fscore": 0.0}


def test_fscore_grid_caps_the_points_and_intrinsics_follow_the_resampling():
    assert depth_fscore.grid_stride((480, 640), 20_000) == 4 and depth_fscore.grid_stride((48, 64), 20_000) == 1
    k = np.array([[500.0, 0, 319.5], [0, 500.0, 239.5], [0, 0, 1]])
    small = depth_fscore.scaled_intrinsics(k, (480, 640), (48, 64))
    # the image centre stays the centre; focal lengths scale with the size
    assert small[0, 0] == 50.0 and small[1, 1] == 50.0 and small[0, 2] == 31.5 and small[1, 2] == 23.5
