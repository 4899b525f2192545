"""Depth metrics with known perturbations, alignments, validity, resampling and per-sequence scale."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from perception_fm.eval.depth import (
    MODE_NONE,
    MODE_SCALE_FRAME,
    MODE_SCALE_SEQUENCE,
    MODE_SHIFT_FRAME,
    DepthEvaluator,
    depth_metrics,
    fit_scale_shift,
    modes_for,
    resample_nearest,
    valid_mask,
)
from perception_fm.replay.synthetic import SampleConfig, render_frame


@pytest.fixture(scope="module")
def gt():
    return render_frame(SampleConfig(width=64, height=48, frames=4), 1).depth  # metres, finite, > 0


def reference_metrics(p, g):
    """Straight from the definitions (Eigen et al.), written out independently of the module."""
    p, g = p.astype(np.float64).ravel(), g.astype(np.float64).ravel()
    thresh = np.maximum(g / p, p / g)
    return {"abs_rel": np.mean(np.abs(g - p) / g), "sq_rel": np.mean((g - p) ** 2 / g),
            "rmse": np.sqrt(np.mean((g - p) ** 2)), "rmse_log": np.sqrt(np.mean((np.log(g) - np.log(p)) ** 2)),
            "delta1": np.mean(thresh < 1.25), "delta2": np.mean(thresh < 1.25 ** 2),
            "delta3": np.mean(thresh < 1.25 ** 3)}


def test_perfect_prediction(gt):
    r = depth_metrics(gt, gt)
    assert r.valid_pixels == gt.size
    for name in ("abs_rel", "sq_rel", "rmse", "rmse_log"):
        assert r.metrics[name] == 0.0
    assert r.metrics["delta1"] == r.metrics["delta2"] == r.metrics["delta3"] == 1.0


def test_scaled_metric_prediction_has_known_errors(gt):
    r = depth_metrics(gt * np.float32(1.1), gt)
    g = gt.astype(np.float64)
    assert r.metrics["abs_rel"] == pytest.approx(0.1, rel=1e-6)
    assert r.metrics["sq_rel"] == pytest.approx(0.01 * g.mean(), rel=1e-5)
    assert r.metrics["rmse"] == pytest.approx(0.1 * np.sqrt(np.mean(g ** 2)), rel=1e-5)
    assert r.metrics["rmse_log"] == pytest.approx(np.log(1.1), rel=1e-5)
    assert r.metrics["delta1"] == 1.0
    r = depth_metrics(gt * np.float32(1.3), gt)  # 1.3 > 1.25, < 1.5625
    assert (r.metrics["delta1"], r.metrics["delta2"]) == (0.0, 1.0)


def test_noisy_prediction_matches_definitions(gt):
    rng = np.random.default_rng(0)
    pred = (gt * np.exp(rng.normal(scale=0.2, size=gt.shape))).astype(np.float32)
    r = depth_metrics(pred, gt)
    ref = reference_metrics(np.clip(pred, 1e-3, None), gt)
    for name, value in ref.items():
        assert r.metrics[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


def test_relative_prediction_median_scale_recovers_exactly(gt):
    pred = gt / np.float32(3.7)
    r = depth_metrics(pred, gt, alignment="scale")
    assert r.scale == pytest.approx(3.7, rel=1e-6)
    assert r.metrics["abs_rel"] < 1e-6 and r.metrics["delta1"] == 1.0
    r = depth_metrics(pred, gt, alignment="scale", scale=2.0)  # a given (sequence) scale is used as is
    assert r.scale == 2.0 and r.metrics["abs_rel"] == pytest.approx(1 - 2 / 3.7, rel=1e-5)
    # median scaling is the ratio of medians
    rng = np.random.default_rng(1)
    noisy = (pred * np.exp(rng.normal(scale=0.1, size=gt.shape))).astype(np.float32)
    r = depth_metrics(noisy, gt, alignment="scale")
    assert r.scale == pytest.approx(np.median(gt.astype(np.float64)) / np.median(noisy.astype(np.float64)))
    ref = reference_metrics(noisy.astype(np.float64) * r.scale, gt)
    assert r.metrics["abs_rel"] == pytest.approx(ref["abs_rel"], rel=1e-9)


def test_scale_shift_in_depth_and_disparity(gt):
    pred = (gt - np.float32(0.5)) / np.float32(2.0)  # gt = 2 pred + 0.5
    r = depth_metrics(pred, gt, alignment="scale_shift")
    assert (r.scale, r.shift) == (pytest.approx(2.0, rel=1e-5), pytest.approx(0.5, abs=1e-5))
    assert r.metrics["abs_rel"] < 1e-5
    # MiDaS-style: 1/gt = a / pred + b
    a, b = 0.8, 0.05
    pred = (a / (1.0 / gt.astype(np.float64) - b)).astype(np.float32)
    assert np.all(pred > 0)
    r = depth_metrics(pred, gt, alignment="scale_shift", shift_space="disparity")
    assert (r.scale, r.shift) == (pytest.approx(a, rel=1e-4), pytest.approx(b, abs=1e-5))
    assert r.metrics["abs_rel"] < 1e-4
    assert fit_scale_shift(np.ones(5), np.arange(5.0)) == (0.0, 2.0)  # no spread: shift only


def test_validity_and_max_depth(gt):
    pred = gt.copy()
    g = gt.copy()
    pred[0, :10] = np.nan
    pred[1, :10] = np.inf  # sky
    pred[2, :10] = 0.0
    pred[3, :10] = -1.0
    g[4, :10] = np.nan
    g[5, :10] = 0.0
    g[6, :10] = np.inf
    r = depth_metrics(pred, g)
    assert r.valid_pixels == gt.size - 70 and r.metrics["abs_rel"] == 0.0
    far = float(np.median(gt))
    v = valid_mask(gt, gt, max_depth=far)
    assert v.sum() == np.count_nonzero(gt <= far)
    r = depth_metrics(gt * np.float32(2.0), gt, max_depth=far)  # predictions are clipped at max_depth too
    kept = gt[gt <= far].astype(np.float64)
    expected = np.mean(np.abs(np.minimum(2 * kept, far) - kept) / kept)
    assert r.metrics["abs_rel"] == pytest.approx(expected, rel=1e-6)
    empty = depth_metrics(np.full_like(gt, np.nan), gt)
    assert empty.valid_pixels == 0 and np.isnan(empty.metrics["abs_rel"])


@pytest.mark.parametrize("src,dst", [((48, 64), (24, 32)), ((24, 32), (48, 64)), ((48, 64), (35, 50)),
                                     ((37, 53), (48, 64)), ((240, 320), (280, 378)), ((1080, 1920), (280, 504))])
def test_resample_nearest_is_pixel_centre_aligned(src, dst):
    """Equals OpenCV's INTER_NEAREST_EXACT except where a target centre falls exactly on a source pixel edge
    (there OpenCV's fixed-point arithmetic picks either side; we take floor, the upper pixel)."""
    image = np.random.default_rng(2).random(src).astype(np.float32)
    expected = cv2.resize(image, (dst[1], dst[0]), interpolation=cv2.INTER_NEAREST_EXACT)
    ours = resample_nearest(image, dst)
    rows_tie = ((2 * np.arange(dst[0]) + 1) * src[0]) % (2 * dst[0]) == 0
    cols_tie = ((2 * np.arange(dst[1]) + 1) * src[1]) % (2 * dst[1]) == 0
    exact = ~rows_tie[:, None] & ~cols_tie[None, :]
    np.testing.assert_array_equal(ours[exact], expected[exact])
    # and by definition: target pixel centre (i + 0.5) * src / dst, floor (ties included)
    i, j = np.arange(dst[0]), np.arange(dst[1])
    rows = np.minimum(np.floor((i + 0.5) * src[0] / dst[0] + 1e-9).astype(int), src[0] - 1)
    cols = np.minimum(np.floor((j + 0.5) * src[1] / dst[1] + 1e-9).astype(int), src[1] - 1)
    np.testing.assert_array_equal(ours, image[rows[:, None], cols[None, :]])


def test_ground_truth_at_another_resolution(gt):
    # the prediction at half resolution samples the gt at the pixel centres (rows/cols 1, 3, 5, ...)
    pred = gt[1::2, 1::2]
    r = depth_metrics(pred, gt)
    assert r.valid_pixels == pred.size and r.metrics["abs_rel"] == 0.0


def test_modes_follow_depth_info():
    assert modes_for(True, "model") == (MODE_NONE, MODE_SCALE_FRAME)
    assert modes_for(True, "known_poses")[0] == MODE_NONE
    assert modes_for(False, "window_chain") == (MODE_SCALE_SEQUENCE, MODE_SCALE_FRAME, MODE_SHIFT_FRAME)
    assert modes_for(False, "none") == (MODE_SCALE_FRAME, MODE_SHIFT_FRAME)
    assert modes_for(None, None)[0] == MODE_SCALE_FRAME


def test_sequence_scale_per_segment(gt):
    """Two chained sequences with their own scale (2 and 5), and a drift inside the first: the per-sequence
    scale is the median of the frame ratios, so drift shows in the sequence metrics but not the per-frame ones."""
    ev = DepthEvaluator()
    frames = []
    for k in range(5):
        frames.append((k, gt / np.float32(2.0 * (1 + 0.1 * (k - 2))), 0))  # scales 1.6 .. 2.4, median 2
    for k in range(5, 8):
        frames.append((k, gt / np.float32(5.0), 1))
    for stamp, pred, segment in frames:
        ev.add(stamp, pred, gt, is_metric=False, scale_source="window_chain", segment=segment)
    assert ev.needs_sequence_pass()
    scales = ev.sequence_scales()
    assert scales[0] == pytest.approx(2.0, rel=1e-6) and scales[1] == pytest.approx(5.0, rel=1e-6)
    for stamp, pred, _ in frames:
        assert ev.wants_sequence_frame(stamp)
        ev.add_sequence_pass(stamp, pred, gt)
    summary = ev.summary()
    assert summary[MODE_SCALE_FRAME]["metrics"]["abs_rel"] < 1e-6
    # frame k of sequence 0 is off by 1 / (1 + 0.1 (k - 2)) after the sequence scale
    expected = np.mean([abs(1 / (1 + 0.1 * (k - 2)) - 1) for k in range(5)] + [0, 0, 0])
    assert summary[MODE_SCALE_SEQUENCE]["metrics"]["abs_rel"] == pytest.approx(expected, rel=1e-5)
    assert summary[MODE_SCALE_SEQUENCE]["frames"] == 8
    assert ev.primary_mode() == MODE_SCALE_SEQUENCE
    stamps, values = ev.series(MODE_SCALE_SEQUENCE)
    assert stamps.tolist() == list(range(8)) and values[2] < 1e-6


def test_metric_frames_and_forced_modes(gt):
    ev = DepthEvaluator()
    ev.add(0, gt * np.float32(1.1), gt, is_metric=True, scale_source="model")
    ev.add(1, gt * np.float32(1.1), gt, is_metric=True, scale_source="model")
    s = ev.summary()
    assert set(s) == {MODE_NONE, MODE_SCALE_FRAME} and not ev.needs_sequence_pass()
    assert s[MODE_NONE]["metrics"]["abs_rel"] == pytest.approx(0.1, rel=1e-6)
    assert s[MODE_SCALE_FRAME]["metrics"]["abs_rel"] < 1e-6
    forced = DepthEvaluator(modes=(MODE_SHIFT_FRAME,))
    forced.add(0, gt * np.float32(1.1), gt, is_metric=True)
    assert set(forced.summary()) == {MODE_SHIFT_FRAME}
    with pytest.raises(ValueError):
        DepthEvaluator(modes=("bogus",))
