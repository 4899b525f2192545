"""Mask post-processing for SAM 3 in plain torch, on any device: small connected components (hole filling and
sprinkle removal) and per-concept mask non-maximum suppression.

transformers does both through a CUDA kernel downloaded from the hub ("kernels-community/cv-utils") and
silently skips them when that kernel is missing (offline, CPU, no `kernels` package); these run everywhere.

Connectivity is 8-connected (3x3 neighbourhood), like the CUDA kernel's `cc_2d`, for foreground and
background alike.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# Logits written by hole filling / sprinkle removal: just above / below the 0.5 probability threshold,
# as upstream SAM 2/3 does.
HOLE_LOGIT = 0.1
SPRINKLE_LOGIT = -0.1


def small_components(mask: torch.Tensor, max_area: int, limit: torch.Tensor | None = None) -> torch.Tensor:
    """Pixels of `mask` ((B, H, W) bool) that belong to an 8-connected component of at most `max_area`
    pixels, or of at most `limit[b]` pixels for mask b when a (B,) `limit` (each <= max_area) is given.

    Exact without running connected components to convergence: labels (pixel indices) spread by min-pooling
    for `max_area` steps, which makes every component of <= max_area pixels uniform (its geodesic diameter
    is < max_area). A larger component cannot pass for a small one: if it is uniform its label count is its
    true area; if not, every label group in it either borders a smaller label (and so changes in one more
    step, which is checked) or is the group of the component's minimum, which holds the whole radius-max_area
    ball around that pixel, i.e. more than max_area pixels. No host synchronisation; the cost is
    max_area + 1 3x3 max-poolings of the batch.
    """
    if mask.dim() != 3:
        raise ValueError(f"mask must be (B, H, W), got {tuple(mask.shape)}")
    if mask.numel() == 0 or max_area <= 0:
        return torch.zeros_like(mask, dtype=torch.bool)
    if limit is None:
        limit = torch.full((mask.shape[0],), int(max_area), device=mask.device)
    return _small_components(mask, limit, int(max_area))


def _small_components(mask: torch.Tensor, limit: torch.Tensor, steps: int) -> torch.Tensor:
    batch, height, width = mask.shape
    area = height * width
    if area >= 2**24:
        raise ValueError(f"masks of {height}x{width} are too large for float32 labels")
    mask = mask.bool()
    outside = torch.tensor(-float(area + 1), device=mask.device)
    index = torch.arange(area, device=mask.device, dtype=torch.float32).view(1, 1, height, width)
    # labels are negated indices so that max-pooling propagates the minimum index
    member = mask[:, None]
    nonmember = ~member
    labels = torch.where(member, -index, outside)
    for _ in range(steps):
        labels = _max3x3(labels).masked_fill_(nonmember, outside)
    following = _max3x3(labels).masked_fill_(nonmember, outside)
    changed = (following != labels) & member
    # one bin per (mask, label), plus a dump bin for pixels outside the masks
    offsets = (torch.arange(batch, device=mask.device) * area).view(batch, 1, 1, 1)
    bins = torch.where(member, (-labels).long() + offsets, torch.full_like(offsets, batch * area))
    bins = bins.flatten()
    counts = torch.zeros(batch * area + 1, device=mask.device, dtype=torch.int32)
    counts.scatter_add_(0, bins, member.flatten().to(torch.int32))
    unsettled = torch.zeros(batch * area + 1, device=mask.device, dtype=torch.int32)
    unsettled.scatter_add_(0, bins, changed.flatten().to(torch.int32))
    small = (counts[bins] <= limit.repeat_interleave(area).to(torch.int32)) & (unsettled[bins] == 0)
    return small.view(batch, height, width) & mask


def _max3x3(x: torch.Tensor) -> torch.Tensor:
    """3x3 max filter of (B, 1, H, W), the border acting as -inf: one pooling kernel on GPU; on CPU, separable
    maxima of shifted views (faster than max_pool2d there)."""
    if x.device.type != "cpu":
        return F.max_pool2d(x, 3, stride=1, padding=1)
    padded = F.pad(x, (1, 1, 1, 1), value=float("-inf"))
    rows = torch.maximum(torch.maximum(padded[..., :, :-2], padded[..., :, 1:-1]), padded[..., :, 2:])
    return torch.maximum(torch.maximum(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])


def fill_holes(logits: torch.Tensor, max_area: int, fill: bool = True, remove_sprinkles: bool = True) -> torch.Tensor:
    """SAM 2/3's mask clean-up on mask logits ((B, H, W) or (B, 1, H, W)); returns a new tensor.

    - holes: background components (logit <= 0) of at most `max_area` pixels become foreground
      (logit HOLE_LOGIT);
    - sprinkles: then, foreground components (logit > 0) of at most min(max_area, half the mask's foreground
      area) pixels become background (logit SPRINKLE_LOGIT), so a tiny object is not erased.
    """
    if max_area <= 0 or logits.numel() == 0 or not (fill or remove_sprinkles):
        return logits
    shape = logits.shape
    flat = logits.reshape(-1, shape[-2], shape[-1])
    if fill:
        background = flat <= 0
        holes = small_components(background, int(max_area))
        flat = torch.where(holes, torch.as_tensor(HOLE_LOGIT, dtype=flat.dtype, device=flat.device), flat)
    if remove_sprinkles:
        foreground = flat > 0
        limit = torch.clamp(foreground.flatten(1).sum(1) // 2, max=int(max_area))
        sprinkles = small_components(foreground, int(max_area), limit)
        flat = torch.where(sprinkles, torch.as_tensor(SPRINKLE_LOGIT, dtype=flat.dtype, device=flat.device), flat)
    return flat.reshape(shape)


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, H, W) x (M, H, W) bool masks -> (N, M) IoU (0 where both are empty), on the masks' device."""
    a = a.flatten(1).float()
    b = b.flatten(1).float()
    intersection = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - intersection
    return intersection / union.clamp(min=1)


def greedy_nms(scores: np.ndarray, iou: np.ndarray, groups: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS over precomputed IoUs: in decreasing score order (ties: lower index first), keep a
    detection unless a kept one of the same group overlaps it by IoU > `iou_threshold`. Returns a bool keep
    mask. Runs on the host: N is small (detections above the score threshold) and the loop is sequential."""
    count = len(scores)
    keep = np.zeros(count, bool)
    suppressed = np.zeros(count, bool)
    for i in np.argsort(-scores, kind="stable"):
        if suppressed[i]:
            continue
        keep[i] = True
        suppressed |= (iou[i] > iou_threshold) & (groups == groups[i])
    return keep
