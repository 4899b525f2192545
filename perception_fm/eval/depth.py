"""Depth accuracy against ground-truth depth: the standard single-image metrics (Eigen et al. 2014, as the
KITTI / monodepth2 evaluations compute them), per frame, with the alignments relative depth needs.

Conventions (one set, used everywhere in perception_fm.eval):

- Valid pixels: ground truth finite and > ``min_depth`` (0 by default) and, when given, <= ``max_depth``;
  prediction finite and > 0 (sky is published as +inf and so never counts).
- Resolution: when the ground truth's size differs from the prediction's, the ground truth is resampled to the
  prediction's size by nearest neighbour with pixel centres aligned (target pixel centre (r + 0.5) * h / H in
  source rows, floor; OpenCV's INTER_NEAREST_EXACT). Depth is never interpolated: no mixed-surface values.
- Alignment (``ALIGNMENTS``):
  - ``none``: the prediction as published (metric predictions).
  - ``scale``: one factor s = median(gt) / median(pred) over the frame's valid pixels (median scaling, as
    monodepth2 and most relative-depth papers report). With a given ``scale`` (per sequence), that factor.
  - ``scale_shift``: least squares a * pred + b ~ gt over the valid pixels, in depth space by default (the
    models here publish depth, not disparity); ``shift_space="disparity"`` fits a / pred + b ~ 1 / gt instead
    (MiDaS-style) and evaluates 1 / (a / pred + b).
  After alignment the prediction is clipped to [``DEPTH_FLOOR``, max_depth] (max only when given), as
  monodepth2 does, so a negative shift cannot produce a log of a non-positive number.
- Per-sequence scale (relative depth chained over a window, DepthInfo.scale_source == "window_chain": one
  unknown scale for the whole sequence): s_seq = median over the sequence's frames of the per-frame median
  ratios above. The metrics with s_seq need a second pass over the frames (the runner reads the bag twice).
- Aggregation over frames: the mean of the per-frame values (each image weighs the same), as KITTI's Eigen
  split evaluation does; RMSE is the mean of per-frame RMSEs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")
METRIC_LABELS = {"abs_rel": "AbsRel", "sq_rel": "SqRel", "rmse": "RMSE", "rmse_log": "RMSE log",
                 "delta1": "δ<1.25", "delta2": "δ<1.25²", "delta3": "δ<1.25³"}
LOWER_IS_BETTER = {"abs_rel": True, "sq_rel": True, "rmse": True, "rmse_log": True,
                   "delta1": False, "delta2": False, "delta3": False}
ALIGNMENTS = ("none", "scale", "scale_shift")
DEPTH_FLOOR = 1e-3  # aligned predictions are clipped to at least this (GT units)

# Evaluation modes: alignment + where its parameters come from.
MODE_NONE = "none"
MODE_SCALE_FRAME = "scale/frame"
MODE_SHIFT_FRAME = "scale_shift/frame"
MODE_SCALE_SEQUENCE = "scale/sequence"
MODES = (MODE_NONE, MODE_SCALE_SEQUENCE, MODE_SCALE_FRAME, MODE_SHIFT_FRAME)
MODE_DESCRIPTIONS = {
    MODE_NONE: "as published (metric)",
    MODE_SCALE_SEQUENCE: "one median scale per sequence",
    MODE_SCALE_FRAME: "median scale per frame",
    MODE_SHIFT_FRAME: "least-squares scale+shift per frame",
}


class DepthEvalError(ValueError):
    pass


def resample_nearest(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(h, w[, C]) → (H, W[, C]) nearest neighbour, pixel centres aligned (INTER_NEAREST_EXACT).

    Not cv2.resize(..., INTER_NEAREST_EXACT) itself, because it is not identical: over 3000 random size pairs
    (1 to 1920 pixels a side, up and down) it picked another source pixel in 893 pairs, 1.06 % of all pixels,
    every one of them a tie (a target centre exactly on a source pixel edge), where its fixed-point scale falls
    on either side (PIL's NEAREST gives the same as OpenCV). Exact integer arithmetic makes the rule one
    rule: floor, the upper pixel. tests/test_eval_depth.py::test_resample_nearest_is_pixel_centre_aligned
    checks equality with OpenCV off the ties."""
    h, w = image.shape[:2]
    height, width = int(shape[0]), int(shape[1])
    if (h, w) == (height, width):
        return image
    # floor((i + 0.5) * src / dst) in exact integer arithmetic (a centre exactly on a pixel edge goes to the
    # upper pixel; OpenCV's fixed-point INTER_NEAREST_EXACT may pick either there, and agrees elsewhere)
    rows = np.minimum((2 * np.arange(height, dtype=np.int64) + 1) * h // (2 * height), h - 1)
    cols = np.minimum((2 * np.arange(width, dtype=np.int64) + 1) * w // (2 * width), w - 1)
    return image[rows[:, None], cols[None, :]]


def valid_mask(pred: np.ndarray, gt: np.ndarray, *, min_depth: float = 0.0,
               max_depth: float | None = None) -> np.ndarray:
    """Pixels valid in both: gt finite, > min_depth, <= max_depth (if given); pred finite and > 0."""
    if pred.shape != gt.shape:
        raise DepthEvalError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(gt) & (gt > min_depth) & np.isfinite(pred) & (pred > 0)
        if max_depth is not None and max_depth > 0:
            valid &= gt <= max_depth
    return valid


def median_scale(pred: np.ndarray, gt: np.ndarray) -> float:
    """median(gt) / median(pred) of already-selected valid values (1-D)."""
    if pred.size == 0:
        return float("nan")
    return float(np.median(np.asarray(gt, np.float64)) / np.median(np.asarray(pred, np.float64)))


def fit_scale_shift(pred: np.ndarray, gt: np.ndarray, space: str = "depth") -> tuple[float, float]:
    """Least squares (a, b): a * pred + b ~ gt (space="depth") or a / pred + b ~ 1 / gt ("disparity"), over
    valid 1-D values. With no spread in pred, a = 0 and b = mean(target)."""
    p = np.asarray(pred, np.float64)
    g = np.asarray(gt, np.float64)
    if space == "disparity":
        p, g = 1.0 / p, 1.0 / g
    elif space != "depth":
        raise DepthEvalError(f"shift space must be 'depth' or 'disparity', got {space!r}")
    if p.size == 0:
        return float("nan"), float("nan")
    pc = p - p.mean()
    variance = float(pc @ pc)
    a = float(pc @ (g - g.mean()) / variance) if variance > 0 else 0.0
    return a, float(g.mean() - a * p.mean())


def apply_alignment(pred: np.ndarray, alignment: str, scale: float = 1.0, shift: float = 0.0,
                    space: str = "depth", max_depth: float | None = None) -> np.ndarray:
    """pred (any shape) aligned and clipped to [DEPTH_FLOOR, max_depth]; float64."""
    p = np.asarray(pred, np.float64)
    if alignment == "none":
        out = p
    elif alignment == "scale":
        out = scale * p
    elif alignment == "scale_shift":
        if space == "disparity":
            with np.errstate(divide="ignore"):
                disparity = scale / p + shift
                out = np.where(disparity > 0, 1.0 / np.maximum(disparity, 1e-300), np.inf)
        else:
            out = scale * p + shift
    else:
        raise DepthEvalError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
    upper = max_depth if max_depth is not None and max_depth > 0 else np.inf
    return np.clip(out, DEPTH_FLOOR, upper)


def metrics_from_values(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """The seven metrics of aligned valid 1-D values (pred > 0, gt > 0)."""
    p = np.asarray(pred, np.float64)
    g = np.asarray(gt, np.float64)
    if p.size == 0:
        return {name: float("nan") for name in METRICS}
    diff = p - g
    ratio = np.maximum(g / p, p / g)
    log_diff = np.log(p) - np.log(g)
    return {
        "abs_rel": float(np.mean(np.abs(diff) / g)),
        "sq_rel": float(np.mean(diff * diff / g)),
        "rmse": float(np.sqrt(np.mean(diff * diff))),
        "rmse_log": float(np.sqrt(np.mean(log_diff * log_diff))),
        "delta1": float(np.mean(ratio < 1.25)),
        "delta2": float(np.mean(ratio < 1.25 ** 2)),
        "delta3": float(np.mean(ratio < 1.25 ** 3)),
    }


@dataclass
class DepthFrameResult:
    metrics: dict[str, float]
    alignment: str
    scale: float  # the factor applied (1 for "none")
    shift: float  # the shift applied (0 unless scale_shift)
    valid_pixels: int


def depth_metrics(pred: np.ndarray, gt: np.ndarray, *, alignment: str = "none", scale: float | None = None,
                  min_depth: float = 0.0, max_depth: float | None = None,
                  shift_space: str = "depth") -> DepthFrameResult:
    """Metrics of one predicted depth map against ground truth (resampled to the prediction's size).

    alignment "scale" uses `scale` when given (a per-sequence factor), else the frame's median ratio.
    Frames without valid pixels give NaN metrics and valid_pixels = 0.
    """
    pred = np.asarray(pred)
    gt = resample_nearest(np.asarray(gt), pred.shape[:2])
    valid = valid_mask(pred, gt, min_depth=min_depth, max_depth=max_depth)
    p, g = pred[valid].astype(np.float64), gt[valid].astype(np.float64)
    a, b = 1.0, 0.0
    if alignment == "scale":
        a = float(scale) if scale is not None else median_scale(p, g)
    elif alignment == "scale_shift":
        a, b = fit_scale_shift(p, g, shift_space)
    elif alignment != "none":
        raise DepthEvalError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
    if p.size == 0 or not (np.isfinite(a) and np.isfinite(b)):
        return DepthFrameResult({name: float("nan") for name in METRICS}, alignment, a, b, int(p.size))
    aligned = apply_alignment(p, alignment, a, b, shift_space, max_depth)
    return DepthFrameResult(metrics_from_values(aligned, g), alignment, a, b, int(p.size))


def modes_for(is_metric: bool | None, scale_source: str | None) -> tuple[str, ...]:
    """Which evaluation modes are meaningful for a frame; the first is the primary one.

    metric → none (plus scale/frame: shape accuracy regardless of the scale); relative chained over a
    window (scale_source window_chain) → scale/sequence (one scale for the sequence), plus the per-frame
    ones; other relative frames (single view, unknown) → scale/frame and scale_shift/frame.
    """
    if is_metric:
        return (MODE_NONE, MODE_SCALE_FRAME)
    if scale_source == "window_chain":
        return (MODE_SCALE_SEQUENCE, MODE_SCALE_FRAME, MODE_SHIFT_FRAME)
    return (MODE_SCALE_FRAME, MODE_SHIFT_FRAME)


@dataclass
class _FrameRecord:
    stamp_ns: int
    segment: int
    modes: tuple[str, ...]
    frame_scale: float  # median ratio of this frame (for the sequence scale)
    values: dict[str, dict[str, float]] = field(default_factory=dict)  # mode -> metric -> value
    valid_pixels: int = 0


class DepthEvaluator:
    """Per-frame depth metrics over a sequence; keeps only numbers per frame (no images).

    Pass 1: `add(stamp, pred, gt, is_metric, scale_source, segment)` for every frame. Then, when
    `needs_sequence_pass()`, pass 2: `add_sequence_pass(stamp, pred, gt)` for the frames again (in any order).
    `modes` forces the evaluated modes (e.g. ("scale/frame",)); None chooses them per frame with `modes_for`.
    """

    def __init__(self, *, min_depth: float = 0.0, max_depth: float | None = None, shift_space: str = "depth",
                 modes: tuple[str, ...] | None = None):
        if modes is not None:
            unknown = [m for m in modes if m not in MODES]
            if unknown or not modes:
                raise DepthEvalError(f"unknown depth modes {unknown}; choose from {MODES}")
        self.min_depth, self.max_depth, self.shift_space = min_depth, max_depth, shift_space
        self.forced_modes = tuple(modes) if modes is not None else None
        self.frames: dict[int, _FrameRecord] = {}
        self._sequence_scales: dict[int, float] | None = None

    def _kw(self):
        return dict(min_depth=self.min_depth, max_depth=self.max_depth, shift_space=self.shift_space)

    def add(self, stamp_ns: int, pred: np.ndarray, gt: np.ndarray, *, is_metric: bool | None = None,
            scale_source: str | None = None, segment: int = 0) -> dict[str, DepthFrameResult]:
        modes = self.forced_modes or modes_for(is_metric, scale_source)
        results: dict[str, DepthFrameResult] = {}
        for mode in modes:
            if mode == MODE_SCALE_SEQUENCE:
                continue  # pass 2
            alignment = {MODE_NONE: "none", MODE_SCALE_FRAME: "scale", MODE_SHIFT_FRAME: "scale_shift"}[mode]
            results[mode] = depth_metrics(pred, gt, alignment=alignment, **self._kw())
        if MODE_SCALE_FRAME in results:
            frame_scale, valid = results[MODE_SCALE_FRAME].scale, results[MODE_SCALE_FRAME].valid_pixels
        else:
            gt_r = resample_nearest(np.asarray(gt), np.asarray(pred).shape[:2])
            v = valid_mask(np.asarray(pred), gt_r, min_depth=self.min_depth, max_depth=self.max_depth)
            frame_scale, valid = median_scale(np.asarray(pred)[v], gt_r[v]), int(v.sum())
        record = _FrameRecord(int(stamp_ns), int(segment), modes, float(frame_scale),
                              {mode: r.metrics for mode, r in results.items()}, valid)
        self.frames[int(stamp_ns)] = record
        self._sequence_scales = None
        return results

    def needs_sequence_pass(self) -> bool:
        return any(MODE_SCALE_SEQUENCE in r.modes for r in self.frames.values())

    def sequence_scales(self) -> dict[int, float]:
        """Segment → median of its frames' median ratios (frames evaluated with scale/sequence)."""
        if self._sequence_scales is None:
            by_segment: dict[int, list[float]] = {}
            for record in self.frames.values():
                if MODE_SCALE_SEQUENCE in record.modes and np.isfinite(record.frame_scale):
                    by_segment.setdefault(record.segment, []).append(record.frame_scale)
            self._sequence_scales = {seg: float(np.median(v)) for seg, v in by_segment.items()}
        return self._sequence_scales

    def wants_sequence_frame(self, stamp_ns: int) -> bool:
        record = self.frames.get(int(stamp_ns))
        return record is not None and MODE_SCALE_SEQUENCE in record.modes

    def add_sequence_pass(self, stamp_ns: int, pred: np.ndarray, gt: np.ndarray) -> DepthFrameResult | None:
        record = self.frames.get(int(stamp_ns))
        if record is None or MODE_SCALE_SEQUENCE not in record.modes:
            return None
        scale = self.sequence_scales().get(record.segment, float("nan"))
        result = depth_metrics(pred, gt, alignment="scale", scale=scale, **self._kw())
        record.values[MODE_SCALE_SEQUENCE] = result.metrics
        return result

    def primary_mode(self) -> str | None:
        """The mode most frames name first."""
        counts: dict[str, int] = {}
        for record in self.frames.values():
            counts[record.modes[0]] = counts.get(record.modes[0], 0) + 1
        return max(counts, key=lambda m: (counts[m], -MODES.index(m))) if counts else None

    def summary(self) -> dict[str, dict]:
        """mode → {"frames": n, "metrics": {name: mean over frames with a finite value}}; modes in MODES order."""
        out = {}
        for mode in MODES:
            rows = [r.values[mode] for r in self.frames.values() if mode in r.values]
            if not rows:
                continue
            table = np.array([[row[name] for name in METRICS] for row in rows], dtype=np.float64)
            finite = np.isfinite(table).all(axis=1)
            means = table[finite].mean(axis=0) if finite.any() else np.full(len(METRICS), np.nan)
            out[mode] = {"frames": int(finite.sum()), "metrics": dict(zip(METRICS, (float(v) for v in means)))}
        return out

    def series(self, mode: str, metric: str = "abs_rel") -> tuple[np.ndarray, np.ndarray]:
        """(stamps_ns, values) of one metric in one mode, sorted by stamp."""
        items = sorted((s, r.values[mode][metric]) for s, r in self.frames.items() if mode in r.values)
        if not items:
            return np.zeros(0, np.int64), np.zeros(0)
        stamps, values = zip(*items)
        return np.array(stamps, np.int64), np.array(values, np.float64)
