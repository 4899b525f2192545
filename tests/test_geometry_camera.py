"""Pinhole camera maths: intrinsics scaling against a real resize, validation, rays, unprojection, rotations."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from perception_fm.errors import BadInputError
from perception_fm.geometry.camera import (
    pixel_rays,
    project_points,
    scale_intrinsics,
    transform_points,
    select_pixels,
    unproject_depth,
    validate_intrinsics,
)
from perception_fm.geometry.rotations import matrix_to_quaternion_xyzw, quaternion_xyzw_to_matrix

K0 = np.array([[40.0, 0.0, 17.3], [0.0, 44.0, 11.8], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("new_size", [(12, 16), (36, 48), (17, 29)])
def test_scale_intrinsics_matches_a_real_half_pixel_resize(new_size):
    # Ramp images hold each pixel's own (u, v) coordinate. Bilinear resampling with align_corners=False is
    # exact on linear functions, so pixel (i', j') of the resized ramps holds the old coordinate it came from.
    # A 3D point that projects to (j', i') with the scaled K must project to that old coordinate with the old K.
    H, W = 24, 32
    v, u = np.meshgrid(np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64), indexing="ij")
    ramps = torch.from_numpy(np.stack([u, v]))[None]
    resized = F.interpolate(ramps, size=new_size, mode="bilinear", align_corners=False)[0].numpy()
    h, w = new_size
    K2 = scale_intrinsics(K0, w / W, h / H)
    # Interior pixels only: at the border bilinear resampling clamps instead of extrapolating.
    jj, ii = np.meshgrid(np.arange(2, w - 2), np.arange(2, h - 2))
    pixels = np.stack([jj.ravel(), ii.ravel(), np.ones(jj.size)], axis=1)
    points = (pixels @ np.linalg.inv(K2).T) * np.linspace(0.5, 3.0, jj.size)[:, None]
    uv_old, _ = project_points(points, K0)
    np.testing.assert_allclose(uv_old[:, 0], resized[0, ii.ravel(), jj.ravel()], atol=1e-9)
    np.testing.assert_allclose(uv_old[:, 1], resized[1, ii.ravel(), jj.ravel()], atol=1e-9)


def test_scale_intrinsics_values_and_batching():
    K = np.array([[100.0, 2.0, 50.0], [0.0, 90.0, 30.0], [0.0, 0.0, 1.0]])
    expected = np.array([[50.0, 1.0, 24.75], [0.0, 135.0, 45.25], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(scale_intrinsics(K, 0.5, 1.5), expected, atol=1e-12)
    batch = np.stack([K, K0, K])[None]  # (1, 3, 3, 3)
    out = scale_intrinsics(batch, 0.5, 1.5)
    assert out.shape == (1, 3, 3, 3)
    np.testing.assert_allclose(out[0, 2], expected, atol=1e-12)
    np.testing.assert_allclose(out[0, 1], scale_intrinsics(K0, 0.5, 1.5), atol=1e-12)
    # Scaling there and back is the identity.
    np.testing.assert_allclose(scale_intrinsics(scale_intrinsics(K0, 0.37, 2.5), 1 / 0.37, 1 / 2.5), K0, atol=1e-12)


def test_validate_intrinsics_accepts_a_good_camera_and_a_flat_camera_info_k():
    np.testing.assert_array_equal(validate_intrinsics(K0, (24, 32)), K0)
    np.testing.assert_array_equal(validate_intrinsics(K0.ravel().tolist()), K0)


@pytest.mark.parametrize(
    "change, image_size, words",
    [
        (lambda K: K.__setitem__((0, 0), np.nan), None, "non-finite"),
        (lambda K: K.__setitem__((1, 2), np.inf), None, "non-finite"),
        (lambda K: K.__setitem__((0, 0), 0.0), None, "fx=0"),
        (lambda K: K.__setitem__((1, 1), -3.0), None, "fy=-3"),
        (lambda K: K.__setitem__(slice(None), 0.0), None, "not calibrated"),
        (lambda K: K.__setitem__((2, 2), 2.0), None, "[0.0, 0.0, 2.0]"),
        (lambda K: K.__setitem__((2, 0), 0.1), None, "[0.1, 0.0, 1.0]"),
        (lambda K: K.__setitem__((0, 2), 97.0), (24, 32), "cx=97"),
        (lambda K: K.__setitem__((1, 2), -25.0), (24, 32), "cy=-25"),
    ],
)
def test_validate_intrinsics_rejects_bad_cameras_naming_the_value(change, image_size, words):
    K = K0.copy()
    change(K)
    with pytest.raises(BadInputError) as info:
        validate_intrinsics(K, image_size)
    assert info.value.reason == "camera_info"
    assert words in str(info.value)


def test_validate_intrinsics_rejects_wrong_shape():
    with pytest.raises(BadInputError, match="3x3"):
        validate_intrinsics(np.eye(4))


def test_pixel_rays_invert_k_and_are_cached_read_only():
    H, W = 5, 7
    K = np.array([[30.0, 1.5, 3.2], [0.0, 25.0, 2.1], [0.0, 0.0, 1.0]])
    rays = pixel_rays(H, W, K)
    assert rays.shape == (H, W, 3) and rays.dtype == np.float32
    np.testing.assert_array_equal(rays[..., 2], 1.0)
    back = rays.astype(np.float64) @ K.T  # K ray = [u, v, 1] with u = column, v = row
    v, u = np.mgrid[0:H, 0:W]
    np.testing.assert_allclose(back[..., 0], u, atol=1e-5)
    np.testing.assert_allclose(back[..., 1], v, atol=1e-5)
    assert pixel_rays(H, W, K.copy()) is rays  # same K by value -> cached array
    assert not rays.flags.writeable
    other = pixel_rays(H, W, K * np.array([[2.0], [1.0], [1.0]]))
    assert other is not rays and not np.allclose(other, rays)


def test_unproject_depth_filters_subsamples_and_indexes_the_full_image():
    H, W = 6, 9
    K = np.array([[10.0, 0.0, 4.0], [0.0, 12.0, 2.5], [0.0, 0.0, 1.0]])
    depth = (1.0 + np.arange(H * W, dtype=np.float32) / 10).reshape(H, W)
    depth[0, 2] = np.nan
    depth[2, 4] = np.inf
    depth[4, 0] = 0.0
    depth[4, 6] = -1.0
    valid = np.ones((H, W), bool)
    valid[2, 2] = False
    points, mask = unproject_depth(depth, K, stride=2, valid=valid)
    assert points.dtype == np.float32 and mask.dtype == bool and mask.shape == (H, W)
    index = np.flatnonzero(mask)
    # Stride 2 keeps rows 0, 2, 4 and columns 0, 2, 4, 6, 8 (15 pixels); 5 of them are dropped above.
    kept = [(r, c) for r in (0, 2, 4) for c in (0, 2, 4, 6, 8)]
    kept = [rc for rc in kept if rc not in {(0, 2), (2, 4), (4, 0), (4, 6), (2, 2)}]
    np.testing.assert_array_equal(index, [r * W + c for r, c in kept])
    uv, z = project_points(points, K)
    rows, cols = np.divmod(index, W)
    np.testing.assert_allclose(uv[:, 0], cols, atol=1e-4)
    np.testing.assert_allclose(uv[:, 1], rows, atol=1e-4)
    np.testing.assert_allclose(z, depth.ravel()[index], rtol=1e-6)
    # Full resolution without a mask keeps every finite positive pixel.
    points, mask = unproject_depth(depth, K)
    assert len(points) == H * W - 4 and mask.sum() == H * W - 4
    # select_pixels gathers per-point values in the same order as the points
    image = np.arange(H * W * 3, dtype=np.uint8).reshape(H, W, 3)
    np.testing.assert_array_equal(select_pixels(image, mask), image[mask])
    np.testing.assert_array_equal(select_pixels(depth[..., None], mask)[:, 0], points[:, 2])


def test_project_and_transform_points_exact_values():
    K = np.array([[100.0, 0.0, 50.0], [0.0, 80.0, 40.0], [0.0, 0.0, 1.0]])
    points = np.array([[0.0, 0.0, 2.0], [1.0, -0.5, 4.0], [0.2, 0.1, -1.0]])
    uv, z = project_points(points, K)
    np.testing.assert_allclose(uv, [[50.0, 40.0], [75.0, 30.0], [30.0, 32.0]])
    np.testing.assert_array_equal(z, [2.0, 4.0, -1.0])
    # 90 degrees about z, then a translation: x -> y, y -> -x.
    T = np.array([[0.0, -1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 2.0], [0.0, 0.0, 1.0, 3.0], [0, 0, 0, 1.0]])
    np.testing.assert_allclose(transform_points(T, points), [[1.0, 2.0, 5.0], [1.5, 3.0, 7.0], [0.9, 2.2, 2.0]])
    assert transform_points(T, points.astype(np.float32)).dtype == np.float32


def test_quaternion_round_trip_batched_and_canonical_sign():
    q_z90 = matrix_to_quaternion_xyzw(np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    np.testing.assert_allclose(q_z90, [0.0, 0.0, np.sqrt(0.5), np.sqrt(0.5)], atol=1e-12)
    rng = np.random.default_rng(3)
    q = rng.normal(size=(2, 5, 4))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    R = quaternion_xyzw_to_matrix(q)
    assert R.shape == (2, 5, 3, 3)
    np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    back = matrix_to_quaternion_xyzw(R)
    assert np.all(back[..., 3] >= 0)
    np.testing.assert_allclose(back, np.where(q[..., 3:] < 0, -q, q), atol=1e-12)
