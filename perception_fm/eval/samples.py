"""Drawing the report's sample frames: colourised depth, ground truth and error images, instance overlays with
matches in their ground truth's colour and false positives in magenta."""
from __future__ import annotations

import numpy as np

from perception_fm.eval import depth as depth_eval
from perception_fm.eval.result import Sample


def decode_rgb(message) -> np.ndarray:
    from sensor_msgs.msg import CompressedImage

    from perception_fm.ros.image_codec import compressed_to_rgb8, image_to_rgb8

    rgb = compressed_to_rgb8(message) if isinstance(message, CompressedImage) else image_to_rgb8(message)
    return np.ascontiguousarray(rgb)


def downsample(image: np.ndarray, max_width: int) -> np.ndarray:
    h, w = image.shape[:2]
    if w <= max_width:
        return np.ascontiguousarray(image)
    return np.ascontiguousarray(depth_eval.resample_nearest(image, (max(1, round(h * max_width / w)), max_width)))


ERROR_MAP_MAX = 0.3  # AbsRel at which the error image saturates


def colourise(values: np.ndarray, lo: float, hi: float, cmap: str = "turbo") -> np.ndarray:
    """(H, W) floats → (H, W, 3) uint8 through a matplotlib colormap; NaN/inf (no data) mid grey."""
    from matplotlib import colormaps

    v = np.asarray(values, np.float64)
    finite = np.isfinite(v)
    norm = np.clip((np.where(finite, v, lo) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    rgb = (colormaps[cmap](norm)[..., :3] * 255).round().astype(np.uint8)
    rgb[~finite] = 128
    return rgb


def palette(index: int) -> np.ndarray:
    """A distinct, stable colour per integer (golden-ratio hues, full saturation)."""
    import colorsys

    hue = (index * 0.618033988749895) % 1.0
    return np.array(colorsys.hsv_to_rgb(hue, 0.85, 1.0)) * 255


def _boundary(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _paint(base: np.ndarray, masks: list[np.ndarray], colours: list[np.ndarray], alpha=0.55) -> np.ndarray:
    out = base.astype(np.float64)
    for mask, colour in zip(masks, colours):
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    for mask, colour in zip(masks, colours):
        out[_boundary(mask)] = colour
    return out.round().clip(0, 255).astype(np.uint8)


def instance_sample(sample: Sample, predictions, labels, match, concepts, rgb):
    height, width = labels.shape
    base = depth_eval.resample_nearest(rgb, (height, width)) if rgb is not None else np.full((height, width, 3), 96,
                                                                                            np.uint8)
    base = (0.6 * base + 0.4 * base.mean(axis=2, keepdims=True)).astype(np.uint8)  # muted, so colours stand out
    evaluated = set(int(i) for i in match.gt_ids)
    matched_gt = {p: (g, iou) for g, p, iou in match.matches}
    gt_ids = [int(i) for i in np.unique(labels) if i != 0]
    gt_masks = [labels == i for i in gt_ids]
    gt_colours = [palette(i) if i in evaluated else np.array([150.0, 150.0, 150.0]) for i in gt_ids]
    pred_colours = []
    for p in predictions:
        if p.id in matched_gt:
            pred_colours.append(palette(matched_gt[p.id][0]))  # same colour as its ground truth: a match
        else:
            pred_colours.append(np.array([255.0, 0.0, 255.0]))  # magenta: false positive
    w = 480
    sample.images["pred_instances"] = downsample(_paint(base, [p.mask for p in predictions], pred_colours), w)
    sample.images["gt_instances"] = downsample(_paint(base, gt_masks, gt_colours), w)
    sample.captions["pred_instances"] = (f"predicted instances: {match.tp} TP, {match.fp} FP (magenta); "
                                         f"mean IoU {match.mean_iou:.2f}" if np.isfinite(match.mean_iou)
                                         else f"predicted instances: {match.tp} TP, {match.fp} FP (magenta)")
    sample.captions["gt_instances"] = f"ground-truth instances: {match.fn} missed; grey = concept not asked for"
    name = (lambda g: (concepts or {}).get(g, "?"))
    for p in predictions:
        if p.id in matched_gt:
            g, iou = matched_gt[p.id]
            sample.legend.append(f"pred {p.id} “{p.concept}” ↔ GT {g} “{name(g)}”: IoU {iou:.2f}")
        else:
            sample.legend.append(f"pred {p.id} “{p.concept}”: no match (FP)")
    for g in sorted(evaluated - {g for g, _, _ in match.matches}):
        sample.legend.append(f"GT {g} “{name(g)}”: missed (FN)")


def depth_sample(sample: Sample, pred, gt, results, is_metric, config) -> None:
    """The depth images of a sample frame: prediction aligned as its headline mode, ground truth, relative error."""
    mode = depth_eval.MODE_NONE if is_metric else depth_eval.MODE_SCALE_FRAME
    if mode not in results:
        mode = next(iter(results), depth_eval.MODE_SCALE_FRAME)
    r = results.get(mode) or depth_eval.depth_metrics(
        pred, gt, alignment="scale", min_depth=config.min_depth, max_depth=config.max_depth)
    gt_r = depth_eval.resample_nearest(gt, pred.shape)
    valid = depth_eval.valid_mask(pred, gt_r, min_depth=config.min_depth, max_depth=config.max_depth)
    alignment = {depth_eval.MODE_NONE: "none", depth_eval.MODE_SCALE_FRAME: "scale",
                 depth_eval.MODE_SHIFT_FRAME: "scale_shift"}.get(mode, "scale")
    with np.errstate(invalid="ignore", divide="ignore"):
        aligned = np.where(np.isfinite(pred) & (pred > 0),
                           depth_eval.apply_alignment(pred, alignment, r.scale, r.shift, config.shift_space,
                                                      config.max_depth), np.nan)
        error = np.where(valid, np.abs(aligned - gt_r) / np.where(valid, gt_r, 1.0), np.nan)
    gt_valid = gt[np.isfinite(gt) & (gt > 0)]
    lo, hi = (np.percentile(gt_valid, [2, 98]) if gt_valid.size else (0.0, 1.0))
    hi = max(hi, lo + 1e-6)
    w = config.sample_width
    sample.images["pred_depth"] = downsample(colourise(aligned, lo, hi, "turbo"), w)
    sample.images["gt_depth"] = downsample(colourise(gt, lo, hi, "turbo"), w)
    sample.images["depth_error"] = downsample(colourise(error, 0.0, ERROR_MAP_MAX, "YlOrRd"), w)
    how = "as published" if mode == depth_eval.MODE_NONE else f"{mode}, ×{r.scale:.3g}"
    sample.captions.update({
        "pred_depth": f"predicted depth ({how})", "gt_depth": f"ground-truth depth ({lo:.2f}–{hi:.2f})",
        "depth_error": f"|pred − gt| / gt (light 0 → dark red ≥ {ERROR_MAP_MAX:g}; grey: no data), "
                       f"AbsRel {r.metrics['abs_rel']:.3f}"})
