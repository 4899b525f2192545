"""Camera intrinsics and pose from a ray map: exact recovery, down-sampled grids, weighting, robustness."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from perception_fm.geometry.ray_pose import make_ray_map, rq_decompose_3x3, solve_ray_pose

IMAGE = (7 * 14, 9 * 14)  # (H, W) = (98, 126): a DA3-style processed size, a multiple of the 14-pixel patch
GRID = (7 * 8, 9 * 8)  # (h, w) = (56, 72) = H * 8 / 14, W * 8 / 14: the ray head's down-sampled grid


def random_cameras(B: int, image_size, seed: int, focals=None):
    """B cameras with varied focal lengths, fx != fy, off-centre principal points, any rotation, any centre."""
    rng = np.random.default_rng(seed)
    H, W = image_size
    fx = np.asarray(focals, dtype=np.float64) if focals is not None else rng.uniform(0.4, 3.0, B) * W
    K = np.zeros((B, 3, 3))
    K[:, 0, 0] = fx
    K[:, 1, 1] = fx * rng.uniform(0.8, 1.25, B)
    K[:, 0, 2] = W / 2 + rng.uniform(-0.3, 0.3, B) * W
    K[:, 1, 2] = H / 2 + rng.uniform(-0.3, 0.3, B) * H
    K[:, 2, 2] = 1.0
    R = Rotation.random(B, random_state=seed).as_matrix()  # uniform on SO(3): most are large rotations
    centres = rng.normal(size=(B, 3)) * 10
    w2c = np.zeros((B, 4, 4))
    w2c[:, :3, :3] = R
    w2c[:, :3, 3] = -(R @ centres[:, :, None])[..., 0]
    w2c[:, 3, 3] = 1.0
    return K, w2c


def max_errors(K_est, w2c_est, K, w2c):
    K_est, w2c_est = K_est.cpu().numpy(), w2c_est.cpu().numpy()
    return np.abs(K_est - K).max(), np.abs(w2c_est[:, :3, :3] - w2c[:, :3, :3]).max(), \
        np.abs(w2c_est[:, :3, 3] - w2c[:, :3, 3]).max()


def check_structure(K_est, w2c_est):
    K_est, w2c_est = K_est.cpu().numpy(), w2c_est.cpu().numpy()
    assert np.all(K_est[:, [1, 2, 2], [0, 0, 1]] == 0)  # upper triangular
    assert np.all(np.diagonal(K_est, axis1=1, axis2=2) > 0)
    np.testing.assert_array_equal(K_est[:, 2, 2], 1.0)
    R = w2c_est[:, :3, :3]
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_array_equal(w2c_est[:, 3], np.broadcast_to([0.0, 0.0, 0.0, 1.0], (len(R), 4)))


def test_make_ray_map_follows_the_documented_cell_and_camera_conventions():
    # Independent of the solver: every cell's ray must project (with the true camera) to the documented pixel
    # u = (j + 0.5) * W / w - 0.5, v = (i + 0.5) * H / h - 0.5, in front of the camera, from its centre.
    image, grid = (50, 70), (7, 9)
    K, w2c = random_cameras(3, image, seed=5)
    rays = make_ray_map(torch.from_numpy(K), torch.from_numpy(w2c), grid, image).numpy()
    assert rays.shape == (3, 7, 9, 6)
    camera_dirs = np.einsum("bij,bhwj->bhwi", w2c[:, :3, :3], rays[..., :3])
    projected = np.einsum("bij,bhwj->bhwi", K, camera_dirs)
    assert np.all(projected[..., 2] > 0)
    i, j = np.meshgrid(np.arange(7), np.arange(9), indexing="ij")
    np.testing.assert_allclose(projected[..., 0] / projected[..., 2], np.broadcast_to((j + 0.5) * 70 / 9 - 0.5,
                               (3, 7, 9)), atol=1e-9)
    np.testing.assert_allclose(projected[..., 1] / projected[..., 2], np.broadcast_to((i + 0.5) * 50 / 7 - 0.5,
                               (3, 7, 9)), atol=1e-9)
    centres = -np.einsum("bji,bj->bi", w2c[:, :3, :3], w2c[:, :3, 3])
    np.testing.assert_allclose(rays[..., 3:], np.broadcast_to(centres[:, None, None], (3, 7, 9, 3)), atol=1e-12)


@pytest.mark.parametrize(
    "image, grid",
    [(IMAGE, GRID), ((12, 16), (12, 16)), ((50, 70), (7, 9))],
    ids=["da3-grid", "full-res", "coarse-non-integer-ratio"],
)
def test_recovers_random_cameras_exactly_batched(image, grid):
    W = image[1]
    # Wide (~115 deg) to narrow (~4 deg) fields of view, plus random ones.
    focals = [0.32 * W, 0.7 * W, 1.3 * W, 14.0 * W, *np.random.default_rng(1).uniform(0.4, 3, 2) * W]
    K, w2c = random_cameras(len(focals), image, seed=11, focals=focals)
    rays = make_ray_map(torch.from_numpy(K), torch.from_numpy(w2c), grid, image)
    # Any positive length per cell must not matter.
    rays[..., :3] *= torch.from_numpy(np.random.default_rng(2).uniform(0.1, 10, rays.shape[:3] + (1,)))
    K_est, w2c_est = solve_ray_pose(rays, torch.ones(rays.shape[:3]), image)
    assert K_est.dtype == torch.float64 and w2c_est.dtype == torch.float64
    assert K_est.shape == (len(focals), 3, 3) and w2c_est.shape == (len(focals), 4, 4)
    check_structure(K_est, w2c_est)
    k_err, r_err, t_err = max_errors(K_est, w2c_est, K, w2c)
    assert k_err < 1e-5 and r_err < 1e-5 and t_err < 1e-5, (k_err, r_err, t_err)


def test_camera_centre_is_the_confidence_weighted_mean_of_the_origins():
    K, w2c = random_cameras(4, IMAGE, seed=3)
    rays = make_ray_map(torch.from_numpy(K), torch.from_numpy(w2c), GRID, IMAGE)
    rng = np.random.default_rng(4)
    confidence = torch.from_numpy(rng.uniform(0.05, 3.0, rays.shape[:3]))
    noise = torch.from_numpy(rng.normal(size=rays.shape[:3] + (3,)))
    weights = confidence / confidence.sum(dim=(1, 2), keepdim=True)
    noise -= (weights[..., None] * noise).sum(dim=(1, 2), keepdim=True)  # zero weighted mean, non-zero plain mean
    assert noise.mean(dim=(1, 2)).abs().max() > 1e-3
    rays[..., 3:] += noise
    K_est, w2c_est = solve_ray_pose(rays, confidence, IMAGE)
    k_err, r_err, t_err = max_errors(K_est, w2c_est, K, w2c)
    assert k_err < 1e-5 and r_err < 1e-8 and t_err < 1e-8, (k_err, r_err, t_err)


def test_low_confidence_garbage_cells_and_unusable_cells_are_ignored():
    K, w2c = random_cameras(4, IMAGE, seed=7)
    rays = make_ray_map(torch.from_numpy(K), torch.from_numpy(w2c), GRID, IMAGE)
    rng = np.random.default_rng(8)
    bad = torch.from_numpy(rng.random(rays.shape[:3]) < 0.2)
    garbage = torch.from_numpy(rng.normal(size=rays.shape) * 50)
    rays = torch.where(bad[..., None], garbage, rays)
    confidence = torch.where(bad, 1e-6, 1.0).to(torch.float64)
    # Cells a real head can also produce: NaN rays, zero-length directions, zero confidence.
    rays[0, 3, 5, :3] = float("nan")
    rays[1, 10, 10, 3:] = float("inf")
    rays[2, 0, 0, :3] = 0.0
    rays[3, 4, 4] = garbage[3, 4, 4]
    confidence[3, 4, 4] = 0.0
    K_est, w2c_est = solve_ray_pose(rays, confidence, IMAGE)
    check_structure(K_est, w2c_est)
    k_err, r_err, t_err = max_errors(K_est, w2c_est, K, w2c)
    assert k_err < 1e-3 and r_err < 1e-3 and t_err < 1e-3, (k_err, r_err, t_err)
    # The same garbage at full confidence does break it: the weighting is what saves the solve above.
    K_bad, _ = solve_ray_pose(rays, torch.where(confidence > 0, 1.0, 0.0), IMAGE)
    assert np.abs(K_bad.numpy() - K).max() > 1.0


def test_float32_input():
    # float32 directions carry ~6e-8 relative rounding; over a 20-120 degree field of view that moves the focal
    # length by ~1e-6 of itself, so 2e-5 relative (and 1e-5 on R, t) leaves a wide margin.
    K, w2c = random_cameras(4, IMAGE, seed=9, focals=[40.0, 90.0, 150.0, 300.0])
    rays = make_ray_map(torch.from_numpy(K), torch.from_numpy(w2c), GRID, IMAGE).float()
    K_est, w2c_est = solve_ray_pose(rays, torch.ones(rays.shape[:3], dtype=torch.float32), IMAGE)
    assert K_est.dtype == torch.float64
    check_structure(K_est, w2c_est)
    relative = np.abs(K_est.numpy() - K) / K[:, :1, :1]
    assert relative.max() < 2e-5, relative.max()
    _, r_err, t_err = max_errors(K_est, w2c_est, K, w2c)
    assert r_err < 1e-5 and t_err < 1e-5, (r_err, t_err)


def test_a_view_without_usable_cells_is_an_error():
    K, w2c = random_cameras(2, (12, 16), seed=1)
    rays = make_ray_map(torch.from_numpy(K), torch.from_numpy(w2c), (6, 8), (12, 16))
    confidence = torch.ones(rays.shape[:3])
    confidence[1] = 0.0
    with pytest.raises(ValueError, match="no cell"):
        solve_ray_pose(rays, confidence, (12, 16))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_rq_decompose(sign):
    rng = np.random.default_rng(6)
    M = rng.normal(size=(8, 3, 3))
    M *= sign * np.sign(np.linalg.det(M))[:, None, None]  # all det > 0, or all det < 0
    K, R = rq_decompose_3x3(torch.from_numpy(M))
    K, R = K.numpy(), R.numpy()
    np.testing.assert_allclose(K @ R, M, atol=1e-12)
    np.testing.assert_array_equal(K[:, [1, 2, 2], [0, 0, 1]], 0.0)
    assert np.all(np.diagonal(K, axis1=1, axis2=2) > 0)
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), sign, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    K, w2c = random_cameras(4, IMAGE, seed=12)
    rays = make_ray_map(torch.from_numpy(K), torch.from_numpy(w2c), GRID, IMAGE).float()
    confidence = torch.rand(rays.shape[:3]) + 0.5
    K_gpu, w2c_gpu = solve_ray_pose(rays.cuda(), confidence.cuda(), IMAGE)
    assert K_gpu.is_cuda and w2c_gpu.is_cuda
    K_cpu, w2c_cpu = solve_ray_pose(rays, confidence, IMAGE)
    torch.testing.assert_close(K_gpu.cpu(), K_cpu, atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(w2c_gpu.cpu(), w2c_cpu, atol=1e-6, rtol=1e-6)
