"""Trivial baselines, evaluated beside every headline metric on the same frames with the same alignment, so a
number can be read against what a guess scores.

A baseline uses neither the model's output values nor the ground truth; the only ground truth that reaches
it is what the alignment applied to the model's output uses too (a Sim(3) or SE(3) fit of the trajectory, a
median depth scale). Each one:

Trajectory (one pose per estimated stamp, in the estimate's sequence segments; aligned and scored exactly as
the estimate: Umeyama SE(3) and/or Sim(3) per segment, then ATE and RPE):

- ``constant pose``: the identity at every stamp (a camera that never moves). Its positions coincide, so the
  alignment falls back to orientations (perception_fm.geometry.sim3.align_camera_poses): the point lands on
  the ground truth's centroid, and the ATE is the trajectory's RMS spread about it.
- ``straight line``: constant velocity from the identity at the segment's first stamp, 1 m/s along that first
  pose's optical axis (+z), orientation fixed: position (0, 0, t - t0) metres with t in seconds. The Sim(3)
  alignment fits its direction, speed and offset to the ground truth (the best straight line at uniform speed
  the alignment can find); the SE(3) alignment keeps the 1 m/s.

Depth (on the pixels where the model published a depth, finite and > 0, so the same pixels; aligned with each
mode the model is evaluated in, parameters fitted the same way):

- ``constant depth``: ``CONSTANT_DEPTH_M`` (1 m) at every such pixel. Aligned: ``none`` keeps the 1 m (with
  nothing to choose a constant from but the ground truth); ``scale/frame`` makes it the frame's median ground
  truth depth; ``scale/sequence`` the median of those over the sequence; ``scale_shift/frame`` the frame's
  mean ground-truth depth (the least-squares fit of a constant).

Segmentation and tracking (matched and scored exactly as the model's instances, with the concepts the model was
asked for in that frame):

- ``empty masks``: no instance at all (every ground-truth instance missed).
- ``whole image``: one instance per concept asked for (every concept of /gt/instance_labels when the model's
  messages list none; a single concept-less one without labels) whose mask is the whole image, with one
  track id per concept for the whole sequence.

"Beats": a metric beats its baselines when it is strictly better than every baseline that has a value (lower
for errors, higher for accuracies); a model that ties or loses to any of them is marked in the report and the
JSON (``beats_baselines`` false). A metric without a value (n/a) beats nothing.
"""
from __future__ import annotations

import math

import numpy as np

from perception_fm.eval import segmentation as seg_eval

CONSTANT_POSE = "constant pose"
STRAIGHT_LINE = "straight line"
CONSTANT_DEPTH = "constant depth"
EMPTY_MASKS = "empty masks"
WHOLE_IMAGE = "whole image"

CONSTANT_DEPTH_M = 1.0
LINE_SPEED_M_S = 1.0

DESCRIPTIONS = {
    "trajectory": {
        CONSTANT_POSE: "the identity pose at every stamp (a camera that never moves), aligned like the estimate: "
                       "it lands on the ground truth's centroid",
        STRAIGHT_LINE: f"constant velocity from the identity, {LINE_SPEED_M_S:g} m/s along the first pose's optical "
                       "axis, orientation fixed; aligned like the estimate (Sim(3) fits its direction, speed and "
                       "offset; SE(3) keeps the speed)",
    },
    "depth": {
        CONSTANT_DEPTH: f"{CONSTANT_DEPTH_M:g} m wherever the model published a depth, aligned like the model in "
                        "each mode (none: 1 m; scale: the median ground-truth depth of the frame or sequence; "
                        "scale+shift: the frame's mean ground-truth depth)",
    },
    "segmentation": {
        EMPTY_MASKS: "no instance in any frame",
        WHOLE_IMAGE: "one whole-image mask per concept asked for, one track id per concept",
    },
}
DESCRIPTIONS["tracking"] = DESCRIPTIONS["segmentation"]


# -- trajectory --------------------------------------------------------------------------------------------

def constant_pose_trajectory(stamps_ns) -> np.ndarray:
    """(N, 4, 4) identity camera_to_world at every stamp."""
    return np.repeat(np.eye(4)[None], len(np.asarray(stamps_ns)), axis=0)


def straight_line_trajectory(stamps_ns, segments=None, speed_m_s: float = LINE_SPEED_M_S) -> np.ndarray:
    """(N, 4, 4): identity orientation, position (0, 0, speed * (t - t0)) with t0 the first stamp of each pose's
    segment (the estimate's restarts restart the line too). Stamps in integer nanoseconds, any order."""
    stamps = np.asarray(stamps_ns, np.int64)
    segments = np.zeros(stamps.size, np.int64) if segments is None else np.asarray(segments, np.int64)
    if segments.shape != stamps.shape:
        raise ValueError(f"one segment per stamp needed, got {segments.shape} for {stamps.shape}")
    poses = constant_pose_trajectory(stamps)
    for segment in np.unique(segments):
        sel = segments == segment
        poses[sel, 2, 3] = speed_m_s * (stamps[sel] - stamps[sel].min()) / 1e9
    return poses


TRAJECTORY_BASELINES = {CONSTANT_POSE: lambda stamps, segments: constant_pose_trajectory(stamps),
                        STRAIGHT_LINE: straight_line_trajectory}


# -- depth ---------------------------------------------------------------------------------------------------

def constant_depth_like(pred: np.ndarray, value: float = CONSTANT_DEPTH_M) -> np.ndarray:
    """float32 `value` where `pred` is a published depth (finite, > 0), NaN elsewhere (not evaluated there)."""
    pred = np.asarray(pred)
    with np.errstate(invalid="ignore"):
        published = np.isfinite(pred) & (pred > 0)
    return np.where(published, np.float32(value), np.float32(np.nan)).astype(np.float32)


# -- segmentation ------------------------------------------------------------------------------------------

def whole_image_instances(shape: tuple[int, int], concepts: list[str] | None) -> list[seg_eval.PredictedInstance]:
    """One whole-image instance per concept (ids 1, 2, ... in the sorted concepts' order, so stable over a
    sequence with the same concepts); a single concept-less one when `concepts` is None or empty."""
    mask = np.ones(shape, bool)
    names = sorted({seg_eval.normalise_concept(c) for c in concepts or ()} - {None, ""})
    if not names:
        return [seg_eval.PredictedInstance(1, "", mask)]
    return [seg_eval.PredictedInstance(1 + k, name, mask) for k, name in enumerate(names)]


# -- comparison --------------------------------------------------------------------------------------------

def not_beaten(value: float, baselines: dict[str, float], lower_is_better: bool | None) -> list[str] | None:
    """Names of the baselines `value` does not strictly beat; None when undecidable (no direction, or no
    baseline with a value). A value that is n/a beats none of them."""
    if lower_is_better is None:
        return None
    scored = {name: v for name, v in baselines.items() if v is not None and math.isfinite(v)}
    if not scored:
        return None
    if value is None or not math.isfinite(value):
        return sorted(scored)
    return sorted(name for name, v in scored.items() if not (value < v if lower_is_better else value > v))


__all__ = ["CONSTANT_DEPTH", "CONSTANT_DEPTH_M", "CONSTANT_POSE", "DESCRIPTIONS", "EMPTY_MASKS", "STRAIGHT_LINE",
           "TRAJECTORY_BASELINES", "WHOLE_IMAGE", "constant_depth_like", "constant_pose_trajectory", "not_beaten",
           "straight_line_trajectory", "whole_image_instances"]
