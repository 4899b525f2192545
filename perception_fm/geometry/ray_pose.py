"""Camera intrinsics and pose from a dense ray map (Depth Anything 3's ray head), in torch, batched over views.

Ray map convention, shape (B, h, w, 6):
- channels 0:3: direction, in WORLD coordinates, of the ray through the centre of grid cell (i, j); any positive
  length, pointing forward (out of the camera);
- channels 3:6: that ray's origin, i.e. the camera centre in world coordinates (noisy per cell).
The grid covers a processed image of (H, W) pixels; cell (i, j) is the pixel u = (j + 0.5) * W / w - 0.5,
v = (i + 0.5) * H / h - 0.5 (OpenCV pixel centres at integer coordinates, half-pixel-centre grid resampling).

Cameras: K is a 3x3 pinhole matrix in pixels of the (H, W) image; world_to_camera is the OpenCV 4x4 pose
[R | t] (x right, y down, z forward), camera centre C = -R^T t.

Method: for one view the map from a world direction d to its pixel p is the homography p ~ H d with H = K R.
The fit is of the inverse map, d ~ G p with G = H^-1 = R^T K^-1, by a confidence-weighted DLT on the error
d x (G p): the predicted (noisy) direction then enters linearly and the exact pixel grid is what G multiplies,
so noise on the rays does not bias the fit (with Hartley-normalised pixels its second moment is isotropic). The
other way round, p x (H d), multiplies the noise by the unknown: 1 deg of ray noise moved the rotation by
~0.4 deg that way, against ~0.1 deg for this one. H = G^-1 is sign-fixed so det(H) > 0 and split by an RQ
decomposition into K (upper triangular, positive diagonal, K[2, 2] = 1) and R (proper rotation). The camera
centre is the confidence-weighted mean of the per-cell origins.

Outliers (robust=True, the default): a ray head also predicts confidently wrong cells, and a least-squares DLT
follows them (20 % such cells at normal confidence moved the rotation by ~4.6 deg). So the cells the DLT uses
are chosen first, all views and hypotheses at once, with no loop over cells: least-median-of-squares RANSAC
(homographies from random 4-cell samples drawn by confidence, the one whose median angular error over a
confidence-drawn sample of cells is smallest wins; no threshold to tune), then inliers = cells within 3x the
median error (never below a float-rounding floor, so exact rays keep every cell), a weighted DLT on them, and
twice again with the error scale re-estimated from the inliers. Then the same unbiased weighted DLT on the
inlier cells (the principal point stays free).

Last, the DLT's algebraic error is traded for the angles themselves: Levenberg-Marquardt on the weighted sum of
squared sines of the angles between each inlier ray and G p (the maximum-likelihood fit for isotropic angular
ray noise), with all 8 degrees of freedom of G free; with robust=True the inliers are chosen once more on those
world angles and it is refined again. At 1 deg of noise + 20 % outliers this lands within ~0.05 px / 0.04 deg of
an independent ML fit (the DLT alone: ~0.17 px / 0.09 deg away), which is the Cramer-Rao floor of any unbiased
estimate with a free principal point. The camera centre averages the inliers' origins. Sampling is seeded: the
same rays always give the same pose.
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


# Robust fit settings (see the module docstring). 128 samples of 4 cells find an outlier-free sample with
# probability 1 - (1 - 0.5**4)**128 > 0.9997 even at 50 % outliers; 1024 confidence-drawn cells estimate the
# median error to a few percent.
RANSAC_HYPOTHESES = 128
RANSAC_SCORING_CELLS = 1024
INLIER_MEDIANS = 3.0  # inliers: error below this many median errors (covers 99.8 % of 2-D Gaussian noise)
REFINEMENTS = 2
# Smallest inlier threshold: an angle (radians) between a conditioned direction and G p, about as large in the
# world (the conditioning stretches angles by ~1/tan(fov/2)): ~4e-3 px on a 504 px image, far above float32
# rounding of exact rays (~6e-8 rad) so that they keep every cell.
MIN_INLIER_THRESHOLD = 1e-5
MIN_INLIER_CELLS = 8


def solve_ray_pose(
    rays: Tensor, confidence: Tensor | None, image_size: tuple[int, int], *, robust: bool = True, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Intrinsics and pose of each view from its ray map (see the module docstring for the conventions).

    rays: (B, h, w, 6) any float dtype, any device; confidence: (B, h, w) >= 0 weights (None: all 1); cells with
    non-finite values or confidence <= 0 are ignored. image_size: (H, W) of the image K refers to.
    robust: choose the cells by RANSAC + refits before the final fit (module docstring); False = one weighted
    DLT on every cell. seed: of the RANSAC samples.
    Returns K (B, 3, 3) with K[2, 2] = 1 and world_to_camera (B, 4, 4), float64 on the rays' device.
    The fit minimises sum_i c_i |d_i x (G p_i)|^2, G = H^-1, in normalised coordinates (c_i = confidence).
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
    # d x (G p) = [d]_x (I (x) p^T) g with g = vec(G) (row-major), and [d]_x^T [d]_x = I - d d^T for a unit d,
    # so sum_i c_i |d_i x G p_i|^2 = g^T M g with M = sum_i c_i (I - d_i d_i^T) (x) (p_i p_i^T): a 9x9 normal
    # matrix built by one batched matmul over cells instead of materialising the (3N, 9) design matrix (N can
    # be ~1e5 per view). Forming the normal matrix squares the condition number; after the normalisation above
    # it is ~1e2-1e4, so in float64 the null vector is still accurate to ~1e-10.
    p = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # (B, N, 3)
    eye = torch.eye(3, dtype=d.dtype, device=d.device)
    direction_outer = (eye - d[..., :, None] * d[..., None, :]).reshape(B, h * w, 9)
    pixel_outer = (p[..., :, None] * p[..., None, :]).reshape(B, h * w, 9)
    # Bias correction (Taubin's method): even with the noise outside G, the normal matrix grows by its
    # second moment, E[M] = M_0 + sigma^2 N with N = sum_i c_i (tr S_i I - S_i) (x) p_i p_i^T, S_i the
    # covariance of the conditioned direction per unit of isotropic angular noise on the ray (the conditioning
    # stretches it unevenly). The null vector of M - lambda N (smallest lambda) removes the first-order bias:
    # at 1 deg of ray noise it cut the rotation error from ~0.4 deg to ~0.1 deg.
    tangent = eye - directions[..., :, None] * directions[..., None, :]  # angular noise lies across the ray
    conditioned = directions @ T_d.transpose(1, 2)
    across = (eye - d[..., :, None] * d[..., None, :]) @ T_d[:, None] / conditioned.norm(dim=-1)[..., None, None]
    covariance = across @ tangent @ across.transpose(-1, -2)  # (B, N, 3, 3)
    trace = torch.diagonal(covariance, dim1=-2, dim2=-1).sum(dim=-1)
    bias_outer = (trace[..., None, None] * eye - covariance).reshape(B, h * w, 9)
    G = _weighted_dlt(direction_outer, pixel_outer, weights, bias_outer)
    confidence_weights = weights
    if robust:
        inliers = _robust_inliers(G, direction_outer, pixel_outer, weights, p, d, seed, bias_outer)
        weights = torch.where(inliers, weights, 0.0)
        weights = weights / weights.sum(dim=1, keepdim=True)
    # Each cell's algebraic error is its angular error times a factor that varies across the image (|G p| and
    # the conditioning's stretch); dividing by that factor's square (the error's variance per unit of angular
    # noise, from the previous G) makes the fit a least-squares fit of the angles themselves, which halved
    # the principal point's spread at 1 deg of noise. Two rounds settle it.
    for _ in range(2):
        G = _weighted_dlt(direction_outer, pixel_outer, weights / _error_variance(G, p, covariance), bias_outer)
    # Undo the direction conditioning: T_d d ~ G' T_p p  =>  d ~ (T_d^-1 G') p_n with p_n = T_p p the Hartley-
    # normalised pixels. The DLT's error is still algebraic; the refinement then minimises the angles between
    # the world rays and G p_n themselves, over the inlier cells.
    G = torch.linalg.solve(T_d, G)
    G = _refine_angular(G / torch.linalg.matrix_norm(G)[:, None, None], p, directions, weights)
    if robust:
        # The inliers were chosen on conditioned angles, whose scale varies across the image, so they cut the
        # noise's tails unevenly (0.03-0.15 px of principal point away from the ML fit at 1 deg of noise).
        # Choose them again on the world angles of the refined fit, one threshold for the whole view, and
        # refine once more.
        weights = _world_inliers(G, p, directions, confidence_weights, weights)
        G = _refine_angular(G, p, directions, weights)
    H = torch.linalg.solve(T_p, torch.linalg.inv(G))  # p ~ T_p^-1 G^-1 d

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


def _kronecker_sum(left: Tensor, right: Tensor, weights: Tensor) -> Tensor:
    """sum_i w_i left_i (x) right_i as (..., 9, 9) in vec(G) order, for (..., N, 9) flattened 3x3 factors."""
    # M[a, b, c, e] = sum_i w_i left[i, a, c] right[i, b, e]; g index = 3 a + b.
    M = (weights[..., None] * left).transpose(-1, -2) @ right  # (..., 9[a,c], 9[b,e])
    batch = M.shape[:-2]
    M = M.reshape(*batch, 3, 3, 3, 3).transpose(-3, -2).reshape(*batch, 9, 9)
    return 0.5 * (M + M.transpose(-1, -2))


def _weighted_dlt(direction_outer: Tensor, pixel_outer: Tensor, weights: Tensor,
                  bias_outer: Tensor | None = None) -> Tensor:
    """Normalised maps G (B, 3, 3), det > 0, minimising sum_i w_i |d_i x (G p_i)|^2 (see solve_ray_pose).

    direction_outer, pixel_outer: (B, N, 9) per-cell I - d d^T and p p^T, flattened; weights: (B, N). Batched
    over any leading dims of all three alike (e.g. (B, K, 4, 9) samples). bias_outer (B, N, 9): the per-cell
    noise term (tr S I - S) for Taubin's bias-corrected solve; None: the plain algebraic fit."""
    M = _kronecker_sum(direction_outer, pixel_outer, weights)
    if bias_outer is None:
        # Null vector of the symmetric PSD normal matrix = eigenvector of its smallest eigenvalue.
        G = torch.linalg.eigh(M)[1][..., 0]
    else:
        # Smallest generalised eigenvector of M g = lambda N g via N = L L^T: (L^-1 M L^-T) y = lambda y,
        # g = L^-T y. N is positive definite (tr S I - S is, for a rank-2 S, and the pixels span 3-D).
        L = torch.linalg.cholesky(_kronecker_sum(bias_outer, pixel_outer, weights))
        reduced = torch.linalg.solve_triangular(L, torch.linalg.solve_triangular(L, M, upper=False).transpose(-1, -2),
                                                upper=False)
        y = torch.linalg.eigh(0.5 * (reduced + reduced.transpose(-1, -2)))[1][..., :1]
        G = torch.linalg.solve_triangular(L.transpose(-1, -2), y, upper=True)[..., 0]
        G = G / G.norm(dim=-1, keepdim=True)
    batch = M.shape[:-2]
    G = G.reshape(*batch, 3, 3)
    # det(G) > 0 is the sign for which G p points along the ray (forward), and then det(H) > 0 too.
    return G * torch.where(torch.linalg.det(G) < 0, -1.0, 1.0).to(G.dtype)[..., None, None]


def _error_variance(G: Tensor, p: Tensor, covariance: Tensor) -> Tensor:
    """(B, N) variance of each cell's algebraic error d x (G p) per unit of angular ray noise: with S the
    conditioned direction's covariance, tr([Gp]_x S [Gp]_x^T) = tr(S) |Gp|^2 - (Gp)^T S (Gp)."""
    mapped = (p @ G.transpose(-1, -2)).unsqueeze(-1)  # (B, N, 3, 1)
    trace = torch.diagonal(covariance, dim1=-2, dim2=-1).sum(dim=-1)
    variance = trace * mapped.square().sum(dim=(-1, -2)) - (mapped.transpose(-1, -2) @ covariance @ mapped)[..., 0, 0]
    return variance.clamp_min(torch.finfo(variance.dtype).tiny)


def _angular_errors(G: Tensor, p: Tensor, d: Tensor) -> Tensor:
    """Angles (radians) between each conditioned direction d (B, N, 3) and G p (p: (B, N, 3)) for maps
    G (B, ..., 3, 3): (B, ..., N). A ray G sends backwards (or NaN) counts as infinitely far."""
    extra = G.dim() - 3  # hypothesis dims between the view and the matrix
    cells = (slice(None),) + (None,) * extra
    mapped = p[cells] @ G.transpose(-1, -2)  # (B, ..., N, 3)
    along = (mapped * d[cells]).sum(dim=-1)
    across = torch.linalg.cross(mapped, d[cells].expand_as(mapped)).norm(dim=-1)
    angle = torch.atan2(across, along)
    return torch.where((along > 0) & torch.isfinite(angle), angle, torch.inf)


def _median_of_valid(values: Tensor, valid: Tensor) -> Tensor:
    """Per row (B, S) the lower median of values[valid] (inf where a row has none)."""
    ordered = torch.sort(torch.where(valid, values, torch.inf), dim=-1).values
    count = valid.sum(dim=-1, keepdim=True)
    median = ordered.gather(-1, (count - 1).clamp_min(0) // 2).squeeze(-1)
    return torch.where(count.squeeze(-1) > 0, median, torch.inf)


def _robust_inliers(G: Tensor, direction_outer: Tensor, pixel_outer: Tensor, weights: Tensor, p: Tensor,
                    d: Tensor, seed: int, bias_outer: Tensor) -> Tensor:
    """(B, N) cells to fit: LMedS RANSAC, then inlier refits (module docstring). G: the plain fit (B, 3, 3),
    a candidate like any sample's; weights (B, N) normalised, zero on unusable cells."""
    B, N = weights.shape
    views = torch.arange(B, device=weights.device)
    generator = torch.Generator(device=weights.device)
    generator.manual_seed(seed)
    samples = torch.multinomial(weights, RANSAC_HYPOTHESES * 4, replacement=True, generator=generator)

    def at_samples(features: Tensor) -> Tensor:  # (B, N, 9) -> (B, K, 4, 9)
        return features.gather(1, samples[..., None].expand(-1, -1, 9)).reshape(B, RANSAC_HYPOTHESES, 4, 9)

    hypotheses = _weighted_dlt(at_samples(direction_outer), at_samples(pixel_outer),
                               torch.ones(B, RANSAC_HYPOTHESES, 4, dtype=weights.dtype, device=weights.device))
    hypotheses = torch.cat([G[:, None], hypotheses], dim=1)  # (B, 1 + K, 3, 3)

    # Cells drawn by confidence: the plain median of their errors is the confidence-weighted median.
    scoring = torch.multinomial(weights, RANSAC_SCORING_CELLS, replacement=True, generator=generator)
    scoring_p = p.gather(1, scoring[..., None].expand(-1, -1, 3))
    scoring_d = d.gather(1, scoring[..., None].expand(-1, -1, 3))
    medians = _angular_errors(hypotheses, scoring_p, scoring_d).median(dim=-1).values  # (B, 1 + K)
    best = medians.argmin(dim=1)
    G, scale = hypotheses[views, best], medians[views, best]

    usable = weights > 0
    for refit in range(REFINEMENTS + 1):
        threshold = (INLIER_MEDIANS * scale).clamp_min(MIN_INLIER_THRESHOLD)
        inliers = usable & (_angular_errors(G, p, d) < threshold[:, None])
        # A view with too few inliers to fit (no sample found its camera) keeps every cell: the plain fit.
        inliers = torch.where(inliers.sum(dim=1, keepdim=True) >= MIN_INLIER_CELLS, inliers, usable)
        if refit == REFINEMENTS:
            return inliers
        inlier_weights = torch.where(inliers, weights, 0.0)
        G = _weighted_dlt(direction_outer, pixel_outer, inlier_weights / inlier_weights.sum(dim=1, keepdim=True),
                          bias_outer)
        scale = _median_of_valid(_angular_errors(G, scoring_p, scoring_d), inliers.gather(1, scoring))
    raise AssertionError("unreachable")


# Levenberg-Marquardt steps on the angular error (see _refine_angular). From the DLT's start one Gauss-Newton
# step lands within 1e-4 px of the optimum (measured); the second only guards against a rejected first step.
ANGULAR_ITERATIONS = 2


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """(..., 1) dot products of (..., 3) vectors; summing the 3 components explicitly is several times faster in
    torch than a reduction over a last dimension of size 3."""
    return (a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2])[..., None]


def _refine_angular(G: Tensor, p: Tensor, d: Tensor, weights: Tensor) -> Tensor:
    """Maps G (B, 3, 3) (normalised pixels p (B, N, 3) -> world directions) minimising the weighted sum of
    squared sines of the angles between each unit direction d_i and G p_i (B views at once).

    With isotropic angular noise on the rays this is the maximum-likelihood fit, which the algebraic DLT only
    approximates: its error weights each cell by how the conditioning stretches it, which left the principal
    point 0.04-0.33 px (rotation 0.04-0.13 deg) from the ML fit at 1 deg of ray noise. All 8 degrees of
    freedom of G (K and R) stay free, so nothing pulls the principal point anywhere. Levenberg-Marquardt: per
    view, a step is kept only if it lowers the cost, so the result is never worse than the start; exact rays have
    zero residual and gradient, so they stay exact. weights (B, N) zero on cells not to fit (outliers, unusable)."""
    B, N = p.shape[:2]

    def residuals(G: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        mapped = p @ G.transpose(-1, -2)
        length = mapped.norm(dim=-1, keepdim=True)
        unit = mapped / length
        # The part of the unit model ray across the observed one: its length is the sine of the angle. A cell
        # G maps backwards would read as a small error; inliers were chosen forward, and outliers weigh 0.
        residual = unit - d * _dot(unit, d)
        cost = (weights * _dot(residual, residual)[..., 0]).sum(dim=-1)
        return residual, cost, unit, length

    residual, cost, unit, length = residuals(G)
    damping = torch.full((B,), 1e-6, dtype=G.dtype, device=G.device)
    eye3 = torch.eye(3, dtype=G.dtype, device=G.device)[None]
    for _ in range(ANGULAR_ITERATIONS):
        # d(residual) = (I - d d^T) A dG p with A = (I - u u^T) / |G p|, so J^T J = sum w A (I - d d^T) A (x)
        # p p^T and J^T r = vec(sum w (A r) p^T) (r is already across the ray). In closed form, without 3x3
        # products per cell: A (I - d d^T) A = (I - u u^T - v v^T) / |G p|^2 with v = d - u (u.d), and
        # A r = (r - u (u.r)) / |G p|.
        # With vec(a b^T) = a (x) b: sum w (I - u u^T - v v^T) (x) p p^T / |Gp|^2 = I (x) (sum w' p p^T)
        # - X^T W' X over the 9-vectors X = u (x) p and v (x) p: two plain matrix products over the cells.
        v = d - unit * _dot(unit, d)
        scaled = weights / length[..., 0].square()
        pixel_moment = (scaled[..., None] * p).transpose(1, 2) @ p  # (B, 3, 3)
        lifted = torch.cat([unit, v], dim=1)[..., :, None] * torch.cat([p, p], dim=1)[..., None, :]
        lifted = lifted.reshape(B, 2 * N, 9)
        lifted_weights = torch.cat([scaled, scaled], dim=1)[..., None]
        normal = torch.kron(eye3, pixel_moment) - (lifted_weights * lifted).transpose(1, 2) @ lifted
        pulled = (residual - unit * _dot(unit, residual)) / length
        gradient = ((weights[..., None] * pulled).transpose(1, 2) @ p).reshape(B, 9)
        # Scaling G changes no angle, so g itself is a null direction of J^T J and of the gradient; the
        # damping (relative to the curvature) keeps the system regular and the step never moves along g.
        scale = torch.diagonal(normal, dim1=-2, dim2=-1).mean(dim=-1).clamp_min(torch.finfo(G.dtype).tiny)
        system = normal + (damping * scale)[:, None, None] * torch.eye(9, dtype=G.dtype, device=G.device)
        step = torch.linalg.solve(system, -gradient[..., None])[..., 0].reshape(B, 3, 3)
        candidate = G + step
        candidate = candidate / torch.linalg.matrix_norm(candidate)[:, None, None]
        new_residual, new_cost, new_unit, new_length = residuals(candidate)
        better = torch.isfinite(new_cost) & (new_cost < cost)
        G = torch.where(better[:, None, None], candidate, G)
        residual = torch.where(better[:, None, None], new_residual, residual)
        unit = torch.where(better[:, None, None], new_unit, unit)
        length = torch.where(better[:, None, None], new_length, length)
        cost = torch.where(better, new_cost, cost)
        damping = torch.where(better, damping * 0.1, damping * 10.0).clamp(1e-12, 1e6)
    return G


def _world_inliers(G: Tensor, p: Tensor, directions: Tensor, confidence_weights: Tensor,
                   current: Tensor) -> Tensor:
    """(B, N) normalised weights of the cells whose world angle to G p is below INLIER_MEDIANS median errors of
    the `current` inliers (weights > 0: the median of outlier-free errors, so the cut sits ~3.5 noise sigmas out
    whatever the outlier share, and outliers already rejected stay out). A view left with too few cells keeps
    `current`."""
    usable = confidence_weights > 0
    angles = _angular_errors(G, p, directions)
    threshold = (INLIER_MEDIANS * _median_of_valid(angles, current > 0)).clamp_min(MIN_INLIER_THRESHOLD)
    inliers = usable & (angles < threshold[:, None])
    weights = torch.where(inliers, confidence_weights, 0.0)
    weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
    return torch.where((inliers.sum(dim=1, keepdim=True) >= MIN_INLIER_CELLS), weights, current)
