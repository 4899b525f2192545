"""Instance masks: run-length encoding (COCO's uncompressed RLE, as pycocotools reads it), boxes, IoU and
label images. numpy, vectorised per mask (no Python loops over pixels)."""
from __future__ import annotations

import numpy as np


def rle_encode(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool → uint32 counts of alternating runs of 0s and 1s over the mask in column-major order,
    starting with 0s (a leading 0 count when the first pixel is set): COCO's uncompressed RLE."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return np.zeros(0, np.uint32)
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(bounds)
    if flat[0]:
        counts = np.concatenate(([0], counts))
    return counts.astype(np.uint32)


def rle_decode(counts: np.ndarray, height: int, width: int) -> np.ndarray:
    """Inverse of rle_encode: (H, W) bool."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() != height * width:
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, not {height}x{width}={height * width}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((width, height)).T


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool → (N, 4) int xyxy pixel boxes, inclusive-exclusive (x1 = last column + 1); all zero for
    empty masks."""
    masks = np.asarray(masks, dtype=bool)
    boxes = np.zeros((masks.shape[0], 4), dtype=np.int64)
    if masks.shape[0] == 0:
        return boxes
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # (N, H), (N, W)
    present = rows.any(axis=1)
    height, width = masks.shape[1:]
    boxes[:, 0] = np.argmax(cols, axis=1)
    boxes[:, 1] = np.argmax(rows, axis=1)
    boxes[:, 2] = width - np.argmax(cols[:, ::-1], axis=1)
    boxes[:, 3] = height - np.argmax(rows[:, ::-1], axis=1)
    boxes[~present] = 0
    return boxes


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every mask in a (N, H, W) with every mask in b (M, H, W): (N, M); 0 where both are empty."""
    a = np.asarray(a, dtype=bool).reshape(len(a), -1).astype(np.float32)
    b = np.asarray(b, dtype=bool).reshape(len(b), -1).astype(np.float32)
    intersection = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def label_image(masks: np.ndarray, ids: np.ndarray, scores: np.ndarray | None = None,
                dtype=np.uint16) -> np.ndarray:
    """(N, H, W) bool masks → (H, W) image of ids (0 = none). Where masks overlap, the higher score wins
    (the later mask when no scores are given)."""
    masks = np.asarray(masks, dtype=bool)
    height, width = masks.shape[1:] if masks.ndim == 3 else (0, 0)
    labels = np.zeros((height, width), dtype=dtype)
    if masks.shape[0] == 0:
        return labels
    order = np.argsort(scores, kind="stable") if scores is not None else np.arange(len(masks))
    ids = np.asarray(ids, dtype=dtype)
    for index in order:  # per instance, lowest priority first; each paint is one vectorised assignment
        labels[masks[index]] = ids[index]
    return labels
