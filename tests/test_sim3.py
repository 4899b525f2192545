"""Sim(3) algebra, Umeyama, orientation-aware camera alignment, and sliding-window pose chaining."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from perception_fm.geometry.sim3 import (
    DegenerateAlignmentError,
    Sim3,
    align_camera_poses,
    chain_window,
    invert_pose,
    umeyama,
)


def random_sim3(seed: int, scale: float = 2.7) -> Sim3:
    rng = np.random.default_rng(seed)
    return Sim3(scale, Rotation.random(random_state=seed).as_matrix(), rng.normal(size=3) * 5)


def random_c2w(n: int, seed: int, centres=None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, :3] = Rotation.random(n, random_state=seed).as_matrix()
    c2w[:, :3, 3] = rng.normal(size=(n, 3)) * 3 if centres is None else centres
    return c2w


def assert_sim3_close(a: Sim3, b: Sim3, atol=1e-9):
    assert abs(a.scale - b.scale) < atol, (a.scale, b.scale)
    np.testing.assert_allclose(a.rotation, b.rotation, atol=atol)
    np.testing.assert_allclose(a.translation, b.translation, atol=atol)


# -- Sim3 algebra ---------------------------------------------------------------------------------------------


def test_sim3_matrix_apply_inverse_compose_are_consistent():
    a, b = random_sim3(1, 2.7), random_sim3(2, 0.4)
    points = np.random.default_rng(3).normal(size=(6, 3))
    homogeneous = np.c_[points, np.ones(6)]
    np.testing.assert_allclose(a.apply(points), (homogeneous @ a.matrix().T)[:, :3], atol=1e-12)
    np.testing.assert_allclose(a.inverse().apply(a.apply(points)), points, atol=1e-12)
    np.testing.assert_allclose(a.inverse().matrix(), np.linalg.inv(a.matrix()), atol=1e-12)
    np.testing.assert_allclose(a.compose(b).matrix(), a.matrix() @ b.matrix(), atol=1e-12)
    np.testing.assert_allclose(a.compose(b).apply(points), a.apply(b.apply(points)), atol=1e-12)
    assert_sim3_close(a.compose(a.inverse()), Sim3.identity(), atol=1e-12)
    assert_sim3_close(Sim3.from_matrix(a.matrix()), a, atol=1e-12)
    np.testing.assert_array_equal(Sim3.identity().matrix(), np.eye(4))
    with pytest.raises(ValueError):
        a.rotation[0, 0] = 1.0  # read-only: a frozen Sim3 cannot be changed through its arrays


def test_sim3_moves_cameras_rigidly_and_scales_their_depth():
    sim = random_sim3(4, 2.5)
    c2w = random_c2w(3, 5).reshape(1, 3, 4, 4)  # any leading shape
    moved = sim.apply_to_camera_to_world(c2w)
    assert moved.shape == c2w.shape
    R = moved[..., :3, :3]
    np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_array_equal(moved[..., 3, :], np.broadcast_to([0, 0, 0, 1.0], (1, 3, 4)))
    # A point seen at camera-frame position x lands, after the move, at depth-scaled position s x.
    x = np.array([0.3, -0.2, 2.0, 1.0])
    for before, after in zip(c2w[0], moved[0]):
        np.testing.assert_allclose(after @ np.r_[sim.scale * x[:3], 1.0], np.r_[sim.apply((before @ x)[:3]), 1.0],
                                   atol=1e-12)
    w2c = invert_pose(c2w)
    np.testing.assert_allclose(sim.apply_to_world_to_camera(w2c), invert_pose(moved), atol=1e-12)


def test_invert_pose_batched():
    c2w = random_c2w(5, 6).reshape(5, 1, 4, 4)
    inverse = invert_pose(c2w)
    np.testing.assert_allclose(inverse @ c2w, np.broadcast_to(np.eye(4), c2w.shape), atol=1e-12)
    np.testing.assert_allclose(inverse, np.linalg.inv(c2w), atol=1e-12)


# -- Umeyama --------------------------------------------------------------------------------------------------


def test_umeyama_recovers_a_similarity_exactly():
    truth = random_sim3(7, 3.3)
    src = np.random.default_rng(8).normal(size=(10, 3))
    assert_sim3_close(umeyama(src, truth.apply(src)), truth)
    rigid = Sim3(1.0, truth.rotation, truth.translation)
    estimate = umeyama(src, rigid.apply(src), with_scale=False)
    assert estimate.scale == 1.0
    assert_sim3_close(estimate, rigid)
    # Coplanar points still determine it (the reflection ambiguity is resolved to a proper rotation).
    planar = src * np.array([1.0, 1.0, 0.0])
    estimate = umeyama(planar, truth.apply(planar))
    assert_sim3_close(estimate, truth)
    assert np.linalg.det(estimate.rotation) == pytest.approx(1.0)


def test_umeyama_weights():
    truth = random_sim3(9, 0.6)
    rng = np.random.default_rng(10)
    src = rng.normal(size=(12, 3))
    dst = truth.apply(src)
    dst[:4] += rng.normal(size=(4, 3)) * 10  # outliers with weight 0 must not matter
    weights = np.r_[np.zeros(4), rng.uniform(0.5, 2.0, 8)]
    assert_sim3_close(umeyama(src, dst, weights=weights), truth)
    # An integer weight is the same as repeating the point.
    noisy = truth.apply(src) + rng.normal(size=src.shape) * 0.1
    weighted = umeyama(src, noisy, weights=np.r_[3.0, np.ones(11)])
    repeated = umeyama(np.r_[src[:1], src[:1], src], np.r_[noisy[:1], noisy[:1], noisy])
    assert_sim3_close(weighted, repeated, atol=1e-12)
    assert abs(weighted.scale - umeyama(src, noisy).scale) > 1e-6  # and differs from the unweighted fit


@pytest.mark.parametrize(
    "src",
    [
        np.array([[0.0, 0, 0], [1, 2, 3]]),  # N = 2
        np.outer(np.arange(5.0), [1.0, -2.0, 0.5]) + [3.0, 1.0, 2.0],  # collinear
        np.outer(np.arange(5.0), [1.0, -2.0, 0.5]) + np.random.default_rng(0).normal(size=(5, 3)) * 1e-9,
        np.tile([1.0, 2.0, 3.0], (4, 1)),  # coincident
    ],
    ids=["two-points", "collinear", "nearly-collinear", "coincident"],
)
def test_umeyama_degenerate_inputs_raise(src):
    dst = random_sim3(1).apply(src)
    with pytest.raises(DegenerateAlignmentError):
        umeyama(src, dst)
    assert issubclass(DegenerateAlignmentError, ValueError)


def test_umeyama_needs_three_weighted_points():
    src = np.random.default_rng(2).normal(size=(5, 3))
    with pytest.raises(DegenerateAlignmentError):
        umeyama(src, src, weights=[1.0, 1.0, 0.0, 0.0, 0.0])


# -- Camera alignment -----------------------------------------------------------------------------------------


def test_align_one_camera_gives_rotation_and_translation_but_no_scale():
    truth = random_sim3(11, 1.9)
    src = random_c2w(1, 12)
    dst = truth.apply_to_camera_to_world(src)
    sim, determined = align_camera_poses(src, dst)
    assert not determined and sim.scale == 1.0
    np.testing.assert_allclose(sim.rotation, truth.rotation, atol=1e-12)
    np.testing.assert_allclose(sim.apply_to_camera_to_world(src), dst, atol=1e-12)
    # With the caller's previous scale it is the true transform.
    sim, determined = align_camera_poses(src, dst, fallback_scale=1.9)
    assert not determined
    assert_sim3_close(sim, truth)


@pytest.mark.parametrize("n, collinear", [(2, False), (5, True), (6, False)])
def test_align_cameras_recovers_the_similarity(n, collinear):
    truth = random_sim3(13, 0.35)
    centres = np.outer(np.linspace(-2, 3, n), [0.3, 1.0, -0.4]) + [1.0, 2.0, 3.0] if collinear else None
    src = random_c2w(n, 14, centres)
    dst = truth.apply_to_camera_to_world(src)
    sim, determined = align_camera_poses(src, dst)
    assert determined
    assert_sim3_close(sim, truth)
    if collinear:  # the centres alone cannot do it
        with pytest.raises(DegenerateAlignmentError):
            umeyama(src[:, :3, 3], dst[:, :3, 3])


def test_align_static_cameras_determines_no_scale():
    truth = random_sim3(15, 4.0)
    src = random_c2w(4, 16, centres=np.tile([1.0, -1.0, 0.5], (4, 1)))  # a camera turning on the spot
    dst = truth.apply_to_camera_to_world(src)
    sim, determined = align_camera_poses(src, dst, fallback_scale=0.5)
    assert not determined and sim.scale == 0.5
    np.testing.assert_allclose(sim.rotation, truth.rotation, atol=1e-12)
    np.testing.assert_allclose(sim.apply_to_camera_to_world(src), dst, atol=1e-12)
    # Below min_baseline counts as static; with_scale=False never determines a scale.
    src[:, :3, 3] += np.random.default_rng(0).normal(size=(4, 3)) * 1e-8
    assert not align_camera_poses(src, truth.apply_to_camera_to_world(src), min_baseline=1e-6)[1]
    moving = random_c2w(4, 17)
    sim, determined = align_camera_poses(moving, truth.apply_to_camera_to_world(moving), with_scale=False)
    assert not determined and sim.scale == 1.0


def test_align_rejects_a_negative_scale_and_honours_weights():
    truth = random_sim3(18, 2.0)
    src = random_c2w(5, 19)
    dst = truth.apply_to_camera_to_world(src)
    mirrored = dst.copy()
    mirrored[:, :3, 3] = 2 * dst[:, :3, 3].mean(axis=0) - dst[:, :3, 3]  # centres point-reflected
    sim, determined = align_camera_poses(src, mirrored)
    assert not determined and sim.scale == 1.0
    corrupted = dst.copy()
    corrupted[:2] = random_c2w(2, 20)
    sim, determined = align_camera_poses(src, corrupted, weights=[0.0, 0.0, 1.0, 2.0, 0.5])
    assert determined
    assert_sim3_close(sim, truth)


# -- Sliding-window chaining ----------------------------------------------------------------------------------


def ground_truth_trajectory(n: int = 40) -> np.ndarray:
    """A smooth, non-planar camera path (metres): a wavy arc, yaw following it, pitch and roll oscillating."""
    k = np.arange(n, dtype=np.float64)
    theta = 0.08 * k
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, 3] = np.c_[4 * np.sin(theta), 0.4 * np.sin(0.5 * k), 4 * (1 - np.cos(theta)) + 0.05 * k]
    c2w[:, :3, :3] = Rotation.from_euler("yxz", np.c_[theta + 0.3 * np.sin(0.2 * k), 0.2 * np.sin(0.3 * k),
                                                      0.1 * np.cos(0.25 * k)]).as_matrix()
    return c2w


def make_windows(gt: np.ndarray, size: int, seed: int, rotation_noise=0.0, translation_noise=0.0):
    """Sliding windows [k, k + size) as a relative-depth model returns them: in the window's first-camera frame,
    times an unknown per-window scale, optionally with noise (radians; metres before scaling)."""
    rng = np.random.default_rng(seed)
    windows, scales = [], []
    for start in range(len(gt) - size + 1):
        local = invert_pose(gt[start]) @ gt[start:start + size]
        if rotation_noise:
            local[:, :3, :3] = Rotation.from_rotvec(rng.normal(size=(size, 3)) * rotation_noise).as_matrix() \
                @ local[:, :3, :3]
        local[:, :3, 3] += rng.normal(size=(size, 3)) * translation_noise
        scale = rng.uniform(0.2, 5.0)
        local[:, :3, 3] *= scale
        windows.append(local)
        scales.append(scale)
    return windows, scales


def chain(windows, size):
    """Chain windows as a sliding-window pipeline does: each new window shares size - 1 views with the
    trajectory so far; only its newest view is new."""
    trajectory = list(windows[0])  # the first window defines the frame and the scale
    scales = []
    for start, window in enumerate(windows[1:], start=1):
        anchors = {i: trajectory[start + i] for i in range(size - 1)}
        chained, sim, determined = chain_window(window, anchors, fallback_scale=np.nan)
        assert determined
        trajectory.append(chained[-1])
        scales.append(sim.scale)
    return np.stack(trajectory), scales


def test_window_chaining_recovers_a_known_trajectory_exactly():
    gt = ground_truth_trajectory(40)
    windows, window_scales = make_windows(gt, 5, seed=21)
    trajectory, scales = chain(windows, 5)
    expected = invert_pose(gt[0]) @ gt
    expected[:, :3, 3] *= window_scales[0]  # the first camera's frame, the first window's scale
    assert trajectory.shape == (40, 4, 4)
    np.testing.assert_allclose(trajectory, expected, atol=1e-9, rtol=0)
    np.testing.assert_allclose(scales, window_scales[0] / np.array(window_scales[1:]), rtol=1e-9)


def test_window_chaining_with_noise_drifts_boundedly():
    # 1 mrad rotation and 1 mm translation noise per predicted pose, on a 15 m path with 0.38 m between frames
    # (0.49 m RMS baseline in a window). Each window is aligned on 4 anchors, so it adds a rotation error of
    # ~1 mrad / sqrt(4) and a scale error of ~1.4 mm / (0.49 m * sqrt(4)) ~ 1.4e-3; both accumulate as random
    # walks over 35 windows (x sqrt(35) ~ 6): ~3 mrad and ~1 % by the end, i.e. ~(3e-3 + 1e-2) x 10 m extent
    # ~ 10 cm of position drift. Over 200 seeds the worst case was 0.21 m and 11 mrad; the bounds (0.3 m, i.e.
    # 2 % of the path, and 20 mrad) sit above that, while a chaining bug (a wrong scale, a dropped rotation)
    # gives errors of metres and radians.
    gt = ground_truth_trajectory(40)
    expected = invert_pose(gt[0]) @ gt
    for seed in range(3):
        windows, window_scales = make_windows(gt, 5, seed=30 + seed, rotation_noise=1e-3, translation_noise=1e-3)
        trajectory, _ = chain(windows, 5)
        position_error = np.linalg.norm(trajectory[:, :3, 3] / window_scales[0] - expected[:, :3, 3], axis=1)
        relative = np.swapaxes(trajectory[:, :3, :3], 1, 2) @ expected[:, :3, :3]
        angle_error = Rotation.from_matrix(relative).magnitude()
        assert position_error.max() < 0.3, position_error.max()
        assert angle_error.max() < 0.02, angle_error.max()
        assert position_error.max() > 1e-4  # the noise did reach the result


def test_chain_window_scale_options_and_errors():
    gt = ground_truth_trajectory(6)
    window = invert_pose(gt[1]) @ gt[1:6] * np.array([1.0, 1.0, 1.0, 3.0])[None, None, :]  # translations x3
    window[:, 3, 3] = 1.0
    truth_window = invert_pose(gt[1]) @ gt[1:6]
    # Metric model: scale given as 1 (here the window is already metric).
    chained, sim, determined = chain_window(truth_window, {0: gt[1], 2: gt[3]}, scale=1.0)
    assert sim.scale == 1.0 and not determined
    np.testing.assert_allclose(chained, gt[1:6], atol=1e-12)
    # A scale measured elsewhere (e.g. a depth ratio) is used as given, even with one anchor.
    chained, sim, determined = chain_window(window, {0: gt[1]}, scale=1 / 3)
    assert sim.scale == pytest.approx(1 / 3) and not determined
    np.testing.assert_allclose(chained, gt[1:6], atol=1e-12)
    # One anchor: no scale from the data, the caller's fallback is used.
    chained, sim, determined = chain_window(window, {0: gt[1]}, fallback_scale=1 / 3)
    assert not determined and sim.scale == pytest.approx(1 / 3)
    np.testing.assert_allclose(chained, gt[1:6], atol=1e-12)
    chained, sim, determined = chain_window(window, {0: gt[1], 4: gt[5]})
    assert determined and sim.scale == pytest.approx(1 / 3, rel=1e-12)
    np.testing.assert_allclose(chained, gt[1:6], atol=1e-12)
    with pytest.raises(ValueError, match="anchor"):
        chain_window(window, {})
    with pytest.raises(ValueError, match="outside"):
        chain_window(window, {5: gt[1]})
