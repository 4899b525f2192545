"""Camera intrinsics and pose from a dense ray map (Depth Anything 3's ray head), in torch, batched over views.

Ray map convention, shape (B, h, w, 6):
- channels 0:3: direction, in WORLD coordinates, of the ray through the centre of grid cell (i, j); any positive
  length, pointing forward (out of the camera);
- channels 3:6: that ray's origin, i.e. the camera centre in world coordinates (noisy per cell).
The grid covers a processed image of (H, W) pixels; cell (i, j) is the pixel u = (j + 0.5) * W / w - 0.5,
v = (i + 0.5) * H / h - 0.5 (OpenCV pixel centres at integer coordinates, half-pixel-centre grid resampling).

Cameras: K is a 3x3 pinhole matrix in pixels of the (H, W) image; world_to_camera is the OpenCV 4x4 pose
[R | t] (x right, y down, z forward), camera centre C = -R^T t.

Method (no RANSAC): for one view the map from a world direction d to its pixel p is the homography
p ~ H d with H = K R. H comes from a confidence-weighted DLT, is sign-fixed so det(H) > 0, and split by an RQ
decomposition into K (upper triangular, positive diagonal, K[2, 2] = 1) and R (proper rotation). The camera
centre is the confidence-weighted mean of the per-cell origins.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def _grid_pixels(grid_size: tuple[int, int], image_size: tuple[int, int], dtype, device) -> Tensor:
    """(h, w, 2) pixel coordinates (u, v) in the (H, W) image of the centres of an (h, w) grid's cells."""
    h, w = (int(s) for s in grid_size)
    H, W = (int(s) for s in image_size)
    u = (torch.arange(w, dtype=dtype, device=device) + 0.5) * (W / w) - 0.5
    v = (torch.arange(h, dtype=dtype, device=device) + 0.5) * (H / h) - 0.5
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([uu, vv], dim=-1)


def make_ray_map(
    K: Tensor, world_to_camera: Tensor, grid_size: tuple[int, int], image_size: tuple[int, int]
) -> Tensor:
    """Exact ray map (B, h, w, 6) of cameras K (B, 3, 3), world_to_camera (B, 4, 4) (see the module docstring).

    Directions are R^T K^-1 [u, v, 1] normalised to unit length; origins are the camera centres. The result has
    the dtype of K/world_to_camera promoted to at least float32.
    """
    K = torch.as_tensor(K)
    world_to_camera = torch.as_tensor(world_to_camera, device=K.device)
    dtype = torch.promote_types(torch.promote_types(K.dtype, world_to_camera.dtype), torch.float32)
    K, world_to_camera = K.to(dtype), world_to_camera.to(dtype)
    B = K.shape[0]
    h, w = (int(s) for s in grid_size)
    uv = _grid_pixels(grid_size, image_size, dtype, K.device)
    pixels = torch.cat([uv, torch.ones_like(uv[..., :1])], dim=-1).reshape(1, h * w, 3)
    R = world_to_camera[:, :3, :3]
    t = world_to_camera[:, :3, 3]
    # d_world = R^T K^-1 p; as row vectors: p^T K^-T R.
    camera_rays = torch.linalg.solve(K, pixels.expand(B, -1, -1).transpose(1, 2)).transpose(1, 2)
    directions = camera_rays @ R
    directions = directions / directions.norm(dim=-1, keepdim=True)
    centres = -(R.transpose(1, 2) @ t.unsqueeze(-1)).squeeze(-1)  # C = -R^T t
    origins = centres[:, None, :].expand(B, h * w, 3)
    return torch.cat([directions, origins], dim=-1).reshape(B, h, w, 6)


def rq_decompose_3x3(M: Tensor) -> tuple[Tensor, Tensor]:
    """RQ decomposition of a batch of 3x3 matrices: M = K @ R.

    K (B, 3, 3) is upper triangular with a positive diagonal (not normalised), R (B, 3, 3) orthogonal with
    det(R) = sign(det(M)); pass det(M) > 0 for a proper rotation. M must be non-singular.
    """
    # With P the row-reversal permutation, QR of (P M)^T = Q U gives M = (P U^T P)(P Q^T), where P U^T P is
    # upper triangular and P Q^T orthogonal.
    P = torch.flip(torch.eye(3, dtype=M.dtype, device=M.device), dims=[0])
    Q, U = torch.linalg.qr((P @ M).transpose(-1, -2))
    K = P @ U.transpose(-1, -2) @ P
    R = P @ Q.transpose(-1, -2)
    # QR fixes the factors only up to signs of K's columns / R's rows; flip both so diag(K) > 0.
    signs = torch.where(torch.diagonal(K, dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(M.dtype)
    K = K * signs[..., None, :]
    R = R * signs[..., :, None]
    return K, R


def _hartley(points: Tensor, weights: Tensor) -> Tensor:
    """(B, 3, 3) similarity moving the weighted centroid of (B, N, 2) points to 0 and their weighted mean
    distance from it to sqrt(2) (Hartley normalisation). weights (B, N) sum to 1 per view."""
    centroid = (weights[..., None] * points).sum(dim=1)
    distance = (weights * (points - centroid[:, None, :]).norm(dim=-1)).sum(dim=1)
    scale = 2.0**0.5 / distance.clamp_min(torch.finfo(points.dtype).tiny)
    T = torch.zeros(points.shape[0], 3, 3, dtype=points.dtype, device=points.device)
    T[:, 0, 0] = scale
    T[:, 1, 1] = scale
    T[:, :2, 2] = -scale[:, None] * centroid
    T[:, 2, 2] = 1.0
    return T


def _rotation_to_z(axis: Tensor) -> Tensor:
    """(B, 3, 3) rotations Q with Q @ axis = e_z for unit (B, 3) axes."""
    # Helper vector: the coordinate axis least aligned with `axis`, so the cross product is well conditioned.
    helper = torch.zeros_like(axis)
    helper.scatter_(1, axis.abs().argmin(dim=1, keepdim=True), 1.0)
    x = torch.linalg.cross(helper, axis)
    x = x / x.norm(dim=-1, keepdim=True)
    y = torch.linalg.cross(axis, x)
    return torch.stack([x, y, axis], dim=1)


def solve_ray_pose(
    rays: Tensor, confidence: Tensor | None, image_size: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Intrinsics and pose of each view from its ray map (see the module docstring for the conventions).

    rays: (B, h, w, 6) any float dtype, any device; confidence: (B, h, w) >= 0 weights (None: all 1); cells with
    non-finite values or confidence <= 0 are ignored. image_size: (H, W) of the image K refers to.
    Returns K (B, 3, 3) with K[2, 2] = 1 and world_to_camera (B, 4, 4), float64 on the rays' device.
    The homography fit minimises sum_i c_i |p_i x (H d_i)|^2 in normalised coordinates (c_i = confidence).
    Raises ValueError when a view has no usable cell. Needs at least 4 cells in general position per view.
    """
    if rays.ndim != 4 or rays.shape[-1] != 6:
        raise ValueError(f"rays must be (B, h, w, 6), got {tuple(rays.shape)}")
    B, h, w, _ = rays.shape
    rays = rays.to(torch.float64)
    if confidence is None:
        confidence = torch.ones(B, h, w, dtype=torch.float64, device=rays.device)
    elif tuple(confidence.shape) != (B, h, w):
        raise ValueError(f"confidence must be {(B, h, w)}, got {tuple(confidence.shape)}")
    weights = confidence.to(device=rays.device, dtype=torch.float64).reshape(B, h * w)
    rays = rays.reshape(B, h * w, 6)
    usable = torch.isfinite(rays).all(dim=-1) & torch.isfinite(weights) & (weights > 0)
    directions = rays[..., :3]
    norms = directions.norm(dim=-1)
    usable &= norms > 0
    weights = torch.where(usable, weights, 0.0)
    total = weights.sum(dim=1)
    if not bool((total > 0).all()):
        raise ValueError("a view of the ray map has no cell with finite rays and positive confidence")
    weights = weights / total[:, None]
    # Unusable cells get harmless placeholder values; their zero weight removes them from every sum below.
    directions = torch.where(usable[..., None], directions / norms.clamp_min(1e-300)[..., None], 0.0)
    directions[..., 2] = torch.where(usable, directions[..., 2], 1.0)
    origins = torch.where(usable[..., None], rays[..., 3:], 0.0)

    # --- Conditioning -------------------------------------------------------------------------------------
    # Pixels: plain Hartley normalisation T_p. Directions are homogeneous 3-vectors; we never divide by the
    # world d_z (which is ~0 or negative for many cameras). Instead rotate the weighted mean direction onto
    # +z (Q): every real ray of a camera with FOV < 180 deg then has a clearly positive z, so dehomogenising
    # in that frame is safe for computing Hartley statistics N. The DLT itself uses T_d d = N Q d as a unit
    # homogeneous 3-vector, so a stray cell (garbage direction, z ~ 0 in that frame) gives a bounded row
    # rather than an enormous one that a small weight could not tame. Without this, a narrow FOV would make
    # all directions nearly parallel and the normal matrix badly conditioned.
    mean_direction = (weights[..., None] * directions).sum(dim=1)
    mean_direction = mean_direction / mean_direction.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    Q = _rotation_to_z(mean_direction)
    rotated = directions @ Q.transpose(1, 2)
    forward = rotated[..., 2] > 1e-3  # well in front in the mean-direction frame: fine for the statistics
    stat_weights = torch.where(forward, weights, 0.0)
    stat_weights = stat_weights / stat_weights.sum(dim=1, keepdim=True).clamp_min(1e-300)
    planar = rotated[..., :2] / torch.where(forward, rotated[..., 2], 1.0)[..., None]
    T_d = _hartley(planar, stat_weights) @ Q
    d = directions @ T_d.transpose(1, 2)
    d = d / d.norm(dim=-1, keepdim=True)

    uv = _grid_pixels((h, w), image_size, torch.float64, rays.device).reshape(1, h * w, 2)
    T_p = _hartley(uv.expand(B, -1, -1), weights)
    x = uv[..., 0] * T_p[:, 0, 0, None] + T_p[:, 0, 2, None]  # (B, N)
    y = uv[..., 1] * T_p[:, 1, 1, None] + T_p[:, 1, 2, None]

    # --- Weighted DLT ------------------------------------------------------------------------------------
    # p x (H d) = 0 with p = (x, y, 1) gives two independent rows in h = vec(H) (row-major):
    #   r1 (x) d with r1 = (0, -1, y)   and   r2 (x) d with r2 = (1, 0, -x),
    # so sum_i c_i A_i^T A_i = sum_i c_i (r1 r1^T + r2 r2^T) (x) (d d^T), a 9x9 normal matrix built by one
    # batched matmul over cells instead of materialising the (2N, 9) design matrix (N can be ~1e5 per view).
    # Forming the normal matrix squares the condition number; after the normalisation above it is ~1e2-1e4,
    # so in float64 the null vector is still accurate to ~1e-10.
    zeros, ones = torch.zeros_like(x), torch.ones_like(x)
    r1 = torch.stack([zeros, -ones, y], dim=-1)
    r2 = torch.stack([ones, zeros, -x], dim=-1)
    pixel_outer = r1[..., :, None] * r1[..., None, :] + r2[..., :, None] * r2[..., None, :]  # (B, N, 3, 3)
    direction_outer = d[..., :, None] * d[..., None, :]  # (B, N, 3, 3)
    # M[a, b, c, e] = sum_i c_i pixel_outer[i, a, c] direction_outer[i, b, e]; h index = 3 a + b.
    weighted = (weights[..., None] * pixel_outer.reshape(B, h * w, 9)).transpose(1, 2)  # (B, 9, N) over (a, c)
    M = weighted @ direction_outer.reshape(B, h * w, 9)  # (B, 9[a,c], 9[b,e])
    M = M.reshape(B, 3, 3, 3, 3).permute(0, 1, 3, 2, 4).reshape(B, 9, 9)
    M = 0.5 * (M + M.transpose(1, 2))
    # Null vector of the symmetric PSD normal matrix = eigenvector of its smallest eigenvalue.
    _, eigenvectors = torch.linalg.eigh(M)
    H_normalised = eigenvectors[..., 0].reshape(B, 3, 3)
    # Undo the conditioning: T_p p ~ H' T_d d  =>  p ~ T_p^-1 H' T_d d.
    H = torch.linalg.solve(T_p, H_normalised @ T_d)

    # --- Decomposition -----------------------------------------------------------------------------------
    # H = lambda K R with det(K) > 0 and det(R) = 1, so det(H) > 0 picks lambda > 0, the sign for which the
    # (forward-pointing) rays project with positive depth.
    H = H * torch.where(torch.linalg.det(H) < 0, -1.0, 1.0).to(H.dtype)[:, None, None]
    K, R = rq_decompose_3x3(H)
    K = K / K[:, 2:3, 2:3]

    centre = (weights[..., None] * origins).sum(dim=1)
    world_to_camera = torch.zeros(B, 4, 4, dtype=torch.float64, device=rays.device)
    world_to_camera[:, :3, :3] = R
    world_to_camera[:, :3, 3] = -(R @ centre.unsqueeze(-1)).squeeze(-1)
    world_to_camera[:, 3, 3] = 1.0
    return K, world_to_camera
