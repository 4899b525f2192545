"""Evaluate a replay's output bag against ground truth: depth, trajectory, segmentation and tracking.

Sources: the predictions come from the output bag; the ground truth from the output bag's own /gt/* topics
(the replay passes its input through) or from a separate bag (`gt`, e.g. the input bag). Both are streamed
in log-time order (merged when they are two bags); messages are grouped by header stamp, and a frame is
evaluated as soon as everything expected for its stamp has arrived (or when more than `max_pending` frames
wait, the oldest goes with what it has). Only numbers per frame are kept, plus at most `samples` frames of
images for the report, so memory does not grow with the bag's length (poses and small per-frame similarity
matrices do, by a few hundred bytes per frame).

Depth relative to one scale per sequence (DepthInfo.scale_source "window_chain") needs that scale before its
metrics: the bag's depth topics are then read a second time. Sequences are split where the stream restarted
(stamp went back, or a multi-view stream's window fell back to one view: the pipeline was reset).

Baselines (perception_fm.eval.baselines, where each is defined exactly): every metric row carries what trivial
estimators score on the same frames with the same alignment — trajectory: a constant pose and a straight line;
depth: a constant depth; segmentation and tracking: empty masks and whole-image masks — and whether the model
beats all of them (MetricRow.baselines, MetricRow.beats_baselines; the report marks a model that does not).
"""
from __future__ import annotations

import heapq
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from perception_fm.errors import PerceptionFmError
from perception_fm.eval import baselines as baseline_eval
from perception_fm.eval import depth as depth_eval
from perception_fm.eval import segmentation as seg_eval
from perception_fm.eval import trajectory as traj_eval
from perception_fm.replay.bag_io import BagMessage, BagReader, BagReadError

MAX_SAMPLES = 4


class EvalError(PerceptionFmError):
    pass


@dataclass
class EvalTopics:
    # predictions (output bag)
    depth: str = "/depth/image"
    depth_info: str = "/depth/info"
    tf: str = "/tf"
    camera_path: str = "/camera_path"
    instances: str = "/instances"
    rgb: str = "/camera/color/image_raw"
    rgb_compressed: str = "/camera/color/image_raw/compressed"
    # ground truth
    gt_depth: str = "/gt/depth"
    gt_pose: str = "/gt/camera_pose"
    gt_instances: str = "/gt/instances"
    gt_labels: str = "/gt/instance_labels"


@dataclass
class EvalConfig:
    topics: EvalTopics = field(default_factory=EvalTopics)
    estimated_frame: str = "da3_camera"  # child frame of the estimated camera pose on /tf
    world_frame: str = ""  # its parent; "" = whichever frame publishes estimated_frame first
    max_time_diff_s: float = 0.01  # trajectory association (evo's default)
    rpe_delta: int = 1  # frames
    rpe_all_pairs: bool = False
    min_depth: float = 0.0
    max_depth: float | None = None
    depth_modes: tuple[str, ...] | None = None  # None: chosen per frame from DepthInfo
    shift_space: str = "depth"
    iou_threshold: float = 0.5
    samples: int = MAX_SAMPLES
    sample_width: int = 480  # sample images wider than this are downsampled (nearest)
    max_pending: int = 16
    trajectory_metric: bool | None = None  # None: from DepthInfo.is_metric


# -- result -------------------------------------------------------------------------------------------------

@dataclass
class MetricRow:
    group: str  # "depth" | "trajectory" | "segmentation" | "tracking"
    name: str
    value: float
    variant: str = ""  # alignment or sub-set, e.g. "scale/frame", "Sim(3)", "red ball"
    unit: str = ""
    frames: int = 0
    primary: bool = True
    lower_is_better: bool | None = None
    note: str = ""
    baselines: dict[str, float] = field(default_factory=dict)  # baseline name -> its value of this metric

    @property
    def not_beaten(self) -> list[str] | None:
        """Baselines this value does not strictly beat ([] = beats them all; None = nothing to compare)."""
        return baseline_eval.not_beaten(self.value, self.baselines, self.lower_is_better)

    @property
    def beats_baselines(self) -> bool | None:
        lost = self.not_beaten
        return None if lost is None else not lost

    def to_dict(self) -> dict:
        out = {k: _finite_or_none(v) for k, v in self.__dict__.items() if k != "baselines"}
        out["baselines"] = {name: _finite_or_none(v) for name, v in self.baselines.items()}
        out["beats_baselines"] = self.beats_baselines
        return out


def _finite_or_none(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


@dataclass
class Series:
    key: str
    label: str
    unit: str
    t_s: np.ndarray  # seconds since the first stamp
    values: np.ndarray
    group: str

    def to_dict(self) -> dict:
        return {"key": self.key, "label": self.label, "unit": self.unit, "group": self.group,
                "t_s": [round(float(t), 6) for t in self.t_s], "values": [_finite(v) for v in self.values]}


@dataclass
class Sample:
    stamp_ns: int
    t_s: float
    images: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (H, W, 3) uint8
    captions: dict[str, str] = field(default_factory=dict)
    legend: list[str] = field(default_factory=list)


@dataclass
class TrajectoryView:
    label: str  # "SE(3)" / "Sim(3)"
    gt_xyz: np.ndarray  # (M, 3)
    est_xyz: np.ndarray  # (M, 3) aligned estimate
    t_s: np.ndarray
    ate: np.ndarray
    baselines: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (M, 3) aligned baseline positions


@dataclass
class EvalResult:
    rows: list[MetricRow] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    trajectories: list[TrajectoryView] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def row(self, group: str, name: str, variant: str | None = None) -> MetricRow | None:
        for row in self.rows:
            if row.group == group and row.name == name and (variant is None or row.variant == variant):
                return row
        return None

    def to_dict(self) -> dict:
        return {"provenance": self.provenance, "metrics": [r.to_dict() for r in self.rows],
                "skipped": self.skipped, "warnings": self.warnings, "details": _jsonable(self.details),
                "series": [s.to_dict() for s in self.series]}

    def depth_matrix(self) -> list[tuple[str, bool, int, list[MetricRow]]]:
        """Depth rows as (alignment, primary, frames, rows in METRICS order), primary alignment first."""
        out: dict[str, list[MetricRow]] = {}
        for row in self.rows:
            if row.group == "depth":
                out.setdefault(row.variant, []).append(row)
        return [(mode, rows[0].primary, rows[0].frames, rows) for mode, rows in out.items()]

    def table(self) -> str:
        """The metric table as aligned text (what the CLI prints); * marks the headline rows."""
        blocks = []
        matrix = self.depth_matrix()
        if matrix:
            header = ["DEPTH ALIGNMENT"] + [r.name + (f" ({r.unit})" if r.unit == "m" else "") for r in matrix[0][3]] \
                + ["FRAMES"]
            lines = []
            for mode, primary, frames, rows in matrix:
                lines.append([mode + (" *" if primary else "")] + [
                    format_value(r.value, "%" if r.unit == "%" else "") + ("" if r.beats_baselines is not False
                                                                           else " !") for r in rows] + [str(frames)])
                for name in rows[0].baselines:
                    lines.append([f"  {name}"] + [format_value(r.baselines.get(name, float("nan")),
                                                               "%" if r.unit == "%" else "") for r in rows] + [""])
            blocks.append(_aligned([header] + lines, left=1))
        others = [r for r in self.rows if r.group != "depth"]
        if others:
            lines = [[r.group.upper(), r.name + (" *" if r.primary else ""), r.variant,
                      format_value(r.value, r.unit) + ("" if r.beats_baselines is not False else " !"),
                      str(r.frames) if r.frames else "",
                      ", ".join(f"{name} {format_value(v, r.unit)}" for name, v in r.baselines.items())]
                     for r in others]
            blocks.append(_aligned([["GROUP", "METRIC", "VARIANT", "VALUE", "FRAMES", "BASELINES"]] + lines,
                                   left=3))
        if any(r.beats_baselines is False for r in self.rows):
            blocks.append("! = does not beat every baseline (perception_fm.eval.baselines) on this metric")
        return "\n\n".join(blocks)


def _aligned(rows: list[list[str]], left: int) -> str:
    """Columns padded to their widest cell; the first `left` columns left-aligned, the rest right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if i < left else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows)


def format_value(value: float, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if unit == "%":
        return f"{100 * value:.1f} %"
    if unit == "count":
        return f"{int(round(value))}"
    text = f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return f"{text} {unit}".rstrip()


def _finite(v):
    v = float(v)
    return v if math.isfinite(v) else None


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return _finite(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


# -- streaming ----------------------------------------------------------------------------------------------

@dataclass
class _Bundle:
    stamp_ns: int
    parts: dict = field(default_factory=dict)  # part name -> message
    sample: bool = False
    segment: int = 0


PRED_PARTS = ("depth", "depth_info", "instances")
GT_PARTS = ("gt_depth", "gt_instances")


def _stamp(message) -> int:
    stamp = message.header.stamp
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class _Evaluation:
    def __init__(self, out_bag: Path, gt_bag: Path | None, config: EvalConfig):
        self.out_bag, self.gt_bag, self.config = out_bag, gt_bag, config
        self.topics = config.topics
        self.result = EvalResult()
        self.depth = depth_eval.DepthEvaluator(min_depth=config.min_depth, max_depth=config.max_depth,
                                               shift_space=config.shift_space, modes=config.depth_modes)
        self.segmentation = seg_eval.SegmentationEvaluator(config.iou_threshold)
        # the baselines go through evaluators of their own, configured like the model's (same modes, same
        # thresholds), and get the model's frames, stamps, sequence segments and asked-for concepts
        self.depth_baseline = depth_eval.DepthEvaluator(min_depth=config.min_depth, max_depth=config.max_depth,
                                                        shift_space=config.shift_space, modes=config.depth_modes)
        self.seg_baselines = {name: seg_eval.SegmentationEvaluator(config.iou_threshold)
                              for name in (baseline_eval.EMPTY_MASKS, baseline_eval.WHOLE_IMAGE)}
        self.labels: dict[int, str] | None = None
        self.est_poses: list[tuple[int, np.ndarray]] = []
        self.path_poses: dict[int, np.ndarray] = {}
        self.gt_poses: list[tuple[int, np.ndarray]] = []
        self.est_parent: str | None = None
        self.other_parents: set[str] = set()
        self.infos: dict[int, tuple[bool, str, int]] = {}  # stamp -> (is_metric, scale_source, segment)
        self._segment = 0
        self._last_info: tuple[int, int] | None = None  # (stamp, window_size)
        self.depth_provenance: dict | None = None
        self.seg_provenance: dict | None = None
        self.first_stamp: int | None = None
        self.last_stamp: int | None = None
        self.samples: list[Sample] = []
        self.unpaired: dict[str, int] = {}
        self.frames_without_instances = 0
        self._warned_concepts = False

    # -- topic plan --

    def plan(self, out_topics: dict[str, str], gt_topics: dict[str, str]):
        t = self.topics
        self.have = {
            "depth": t.depth in out_topics, "depth_info": t.depth_info in out_topics,
            "tf": t.tf in out_topics, "camera_path": t.camera_path in out_topics,
            "instances": t.instances in out_topics,
            "gt_depth": t.gt_depth in gt_topics, "gt_pose": t.gt_pose in gt_topics,
            "gt_instances": t.gt_instances in gt_topics, "gt_labels": t.gt_labels in gt_topics,
        }
        self.rgb_source, self.rgb_topic = None, None
        for source, topics in (("out", out_topics), ("gt", gt_topics)):
            for name in (t.rgb, t.rgb_compressed):
                if self.rgb_source is None and name in topics:
                    self.rgb_source, self.rgb_topic = source, name
        gt_where = f"the ground-truth bag {str(self.gt_bag)!r}" if self.gt_bag else "the output bag"

        def missing(names):
            return [f"{topic!r} ({where})" for topic, ok, where in names if not ok]

        self.tasks = {}
        checks = {
            "depth": [(t.depth, self.have["depth"], "output bag"), (t.gt_depth, self.have["gt_depth"], gt_where)],
            "trajectory": [(f"{t.tf} or {t.camera_path}", self.have["tf"] or self.have["camera_path"], "output bag"),
                           (t.gt_pose, self.have["gt_pose"], gt_where)],
            "segmentation": [(t.instances, self.have["instances"], "output bag"),
                             (t.gt_instances, self.have["gt_instances"], gt_where)],
        }
        what = {"depth": "depth metrics (AbsRel, RMSE, δ)", "trajectory": "trajectory metrics (ATE, RPE)",
                "segmentation": "segmentation and tracking metrics (mask IoU, P/R, HOTA, IDF1)"}
        for task, names in checks.items():
            lacking = missing(names)
            self.tasks[task] = not lacking
            if lacking:
                self.result.skipped.append(f"{what[task]} skipped: missing {', '.join(lacking)}")
        if not any(self.tasks.values()):
            raise EvalError("nothing to evaluate: " + "; ".join(self.result.skipped))
        if self.tasks["depth"] and not self.have["depth_info"]:
            self.result.warnings.append(f"no {t.depth_info!r}: depth treated as relative (per-frame scale)")
        if self.tasks["segmentation"] and not self.have["gt_labels"]:
            self.result.warnings.append(f"no {t.gt_labels!r}: instances matched without concepts")
        expected = set()
        if self.tasks["depth"]:
            expected |= {"depth", "gt_depth"} | ({"depth_info"} if self.have["depth_info"] else set())
        if self.tasks["segmentation"]:
            expected |= {"instances", "gt_instances"}
        self.expected = expected
        # the topic whose message count places the samples: the colour image, else a predicted one
        self.clock_topic = self.rgb_topic or (t.depth if "depth" in expected else t.instances)

    def out_topic_set(self) -> set[str]:
        t = self.topics
        names = {"depth": t.depth, "depth_info": t.depth_info, "instances": t.instances}
        topics = {names[p] for p in names if p in self.expected or (p == "depth_info" and self.have["depth_info"])}
        if self.tasks["trajectory"]:
            topics |= {topic for topic, ok in ((t.tf, self.have["tf"]), (t.camera_path, self.have["camera_path"]))
                       if ok}
        if self.rgb_source == "out":
            topics.add(self.rgb_topic)
        return topics

    def gt_topic_set(self) -> set[str]:
        t = self.topics
        topics = {t.gt_depth} if "gt_depth" in self.expected else set()
        if "gt_instances" in self.expected:
            topics.add(t.gt_instances)
            if self.have["gt_labels"]:
                topics.add(t.gt_labels)
        if self.tasks["trajectory"]:
            topics.add(t.gt_pose)
        if self.rgb_source == "gt":
            topics.add(self.rgb_topic)
        return topics

    # -- pass 1 --

    def run(self, messages: Iterable[BagMessage], clock_count: int):
        n = max(0, min(self.config.samples, MAX_SAMPLES))
        self.sample_indices = set(np.unique(np.linspace(0, clock_count - 1, n).round().astype(int)).tolist()) \
            if clock_count and n else set()
        self.pending: dict[int, _Bundle] = {}
        clock_index = 0
        t = self.topics
        part_of = {t.depth: "depth", t.depth_info: "depth_info", t.instances: "instances",
                   t.gt_depth: "gt_depth", t.gt_instances: "gt_instances"}
        for item in messages:
            topic, message = item.topic, item.message
            if topic == t.tf:
                self._on_tf(message)
            elif topic == t.camera_path:
                if message.poses:
                    from perception_fm.ros.tf import pose_to_matrix

                    self.path_poses[_stamp(message.poses[-1])] = pose_to_matrix(message.poses[-1].pose)
            elif topic == t.gt_pose:
                from perception_fm.ros.tf import pose_to_matrix

                self.gt_poses.append((_stamp(message), pose_to_matrix(message.pose)))
                self._saw(_stamp(message))
            elif topic == t.gt_labels:
                self._on_labels(message)
            if topic == self.clock_topic:
                if clock_index in self.sample_indices:
                    self._bundle(_stamp(message)).sample = True
                clock_index += 1
            if topic == self.rgb_topic:
                bundle = self.pending.get(_stamp(message))
                if bundle is not None and bundle.sample:
                    bundle.parts["rgb"] = message  # colour images are kept for samples only
            elif topic in part_of:
                part = part_of[topic]
                stamp = _stamp(message)
                self._saw(stamp)
                if part == "depth_info":
                    self._on_info(stamp, message)
                if part not in self.expected:
                    continue
                self._bundle(stamp).parts[part] = message
            self._drain()
        self._drain(flush=True)

    def _saw(self, stamp: int):
        self.first_stamp = stamp if self.first_stamp is None else min(self.first_stamp, stamp)
        self.last_stamp = stamp if self.last_stamp is None else max(self.last_stamp, stamp)

    def _bundle(self, stamp: int) -> _Bundle:
        bundle = self.pending.get(stamp)
        if bundle is None:
            bundle = self.pending[stamp] = _Bundle(stamp)
        return bundle

    def _complete(self, bundle: _Bundle) -> bool:
        needed = self.expected | ({"rgb"} if bundle.sample and self.rgb_topic else set())
        return needed <= bundle.parts.keys()

    def _drain(self, flush: bool = False):
        while self.pending:
            front = min(self.pending)
            bundle = self.pending[front]
            if not (flush or self._complete(bundle) or len(self.pending) > self.config.max_pending):
                break
            del self.pending[front]
            self._process(bundle)

    def _on_tf(self, message):
        from perception_fm.ros.tf import transform_to_matrix

        for transform in message.transforms:
            if transform.child_frame_id != self.config.estimated_frame:
                continue
            parent = transform.header.frame_id
            if self.config.world_frame and parent != self.config.world_frame:
                self.other_parents.add(parent)
                continue
            if self.est_parent is None:
                self.est_parent = parent
            elif parent != self.est_parent:
                self.other_parents.add(parent)
                continue
            self.est_poses.append((_stamp(transform), transform_to_matrix(transform.transform)))

    def _on_labels(self, message):
        try:
            raw = json.loads(message.data)
            self.labels = {int(k): str(v) for k, v in raw.items()}
        except (ValueError, TypeError, AttributeError) as error:
            self.result.warnings.append(f"unreadable {self.topics.gt_labels!r} ({error}); concepts ignored")

    def _on_info(self, stamp: int, info):
        window = int(info.window_size)
        if self._last_info is not None:
            last_stamp, last_window = self._last_info
            if stamp < last_stamp or (window <= 1 < last_window):
                self._segment += 1
        self._last_info = (stamp, window)
        self.infos[stamp] = (bool(info.is_metric), str(info.scale_source), self._segment)
        if self.depth_provenance is None:
            self.depth_provenance = {"model": info.model, "weights": info.weights, "is_metric": bool(info.is_metric),
                                     "scale_source": info.scale_source, "pose_method": info.pose_method,
                                     "window_size": int(info.window_size)}
        # a window fills up over the first frames (frame 0's is 1): report the largest seen
        self.depth_provenance["window_size"] = max(self.depth_provenance["window_size"], window)

    # -- one frame --

    def _process(self, bundle: _Bundle):
        from perception_fm.ros.image_codec import image_to_numpy

        parts = bundle.parts
        sample = Sample(bundle.stamp_ns, 0.0) if bundle.sample and len(self.samples) < MAX_SAMPLES else None
        if sample is not None and "rgb" in parts:
            sample.images["input"] = _downsample(_decode_rgb(parts["rgb"]), self.config.sample_width)
            sample.captions["input"] = "input"
        info = self.infos.get(bundle.stamp_ns)
        if "depth" in parts and "gt_depth" in parts:
            pred = image_to_numpy(parts["depth"]).astype(np.float32)
            gt = image_to_numpy(parts["gt_depth"]).astype(np.float32)
            is_metric, source, segment = info if info is not None else (None, None, 0)
            results = self.depth.add(bundle.stamp_ns, pred, gt, is_metric=is_metric, scale_source=source,
                                     segment=segment)
            self.depth_baseline.add(bundle.stamp_ns, baseline_eval.constant_depth_like(pred), gt,
                                    is_metric=is_metric, scale_source=source, segment=segment)
            if sample is not None:
                self._depth_sample(sample, pred, gt, results, is_metric)
        elif "depth" in parts or "gt_depth" in parts:
            missing = "gt_depth" if "depth" in parts else "depth"
            self.unpaired[missing] = self.unpaired.get(missing, 0) + 1
        if "instances" in parts and "gt_instances" in parts:
            self._segmentation(bundle, parts["instances"], image_to_numpy(parts["gt_instances"]), sample)
        elif "gt_instances" in parts and "instances" in self.expected:
            self.frames_without_instances += 1
        elif "instances" in parts:
            self.unpaired["gt_instances"] = self.unpaired.get("gt_instances", 0) + 1
        if sample is not None and len(sample.images) > 1:
            self.samples.append(sample)

    def _segmentation(self, bundle: _Bundle, array, gt_labels: np.ndarray, sample: Sample | None):
        height, width = int(array.height), int(array.width)
        labels = depth_eval.resample_nearest(np.asarray(gt_labels), (height, width))
        predictions = []
        for instance in array.instances:
            if not len(instance.mask_rle):
                continue
            counts = np.asarray(instance.mask_rle, np.int64)
            if counts.sum() != height * width:
                self.result.warnings.append(
                    f"instance {instance.id} at {bundle.stamp_ns} ns: RLE does not cover {width}x{height}; skipped")
                continue
            mask = seg_eval.decode_masks([counts], height, width)[0]
            predictions.append(seg_eval.PredictedInstance(int(instance.id), str(instance.concept), mask))
        if self.seg_provenance is None:
            self.seg_provenance = {"model": array.model, "weights": array.weights}
        active = list(array.concepts) if self.labels is not None and len(array.concepts) else None
        if self.labels is not None and not len(array.concepts) and not self._warned_concepts:
            self._warned_concepts = True
            self.result.warnings.append(f"{self.topics.instances!r} lists no active concepts: every ground-truth "
                                        "instance counts")
        match = self.segmentation.add_frame(bundle.stamp_ns, predictions, labels, self.labels, active)
        # whole-image masks for what the model was asked for (all labelled concepts when it does not say)
        whole_for = active if active is not None else (sorted(set(self.labels.values())) if self.labels else None)
        self.seg_baselines[baseline_eval.EMPTY_MASKS].add_frame(bundle.stamp_ns, [], labels, self.labels, active)
        self.seg_baselines[baseline_eval.WHOLE_IMAGE].add_frame(
            bundle.stamp_ns, baseline_eval.whole_image_instances((height, width), whole_for), labels, self.labels,
            active)
        if sample is not None:
            _instance_sample(sample, predictions, labels, match, self.labels, sample.images.get("input"))

    def _depth_sample(self, sample: Sample, pred, gt, results, is_metric):
        mode = depth_eval.MODE_NONE if is_metric else depth_eval.MODE_SCALE_FRAME
        if mode not in results:
            mode = next(iter(results), depth_eval.MODE_SCALE_FRAME)
        r = results.get(mode) or depth_eval.depth_metrics(
            pred, gt, alignment="scale", min_depth=self.config.min_depth, max_depth=self.config.max_depth)
        gt_r = depth_eval.resample_nearest(gt, pred.shape)
        valid = depth_eval.valid_mask(pred, gt_r, min_depth=self.config.min_depth, max_depth=self.config.max_depth)
        alignment = {depth_eval.MODE_NONE: "none", depth_eval.MODE_SCALE_FRAME: "scale",
                     depth_eval.MODE_SHIFT_FRAME: "scale_shift"}.get(mode, "scale")
        with np.errstate(invalid="ignore", divide="ignore"):
            aligned = np.where(np.isfinite(pred) & (pred > 0),
                               depth_eval.apply_alignment(pred, alignment, r.scale, r.shift, self.config.shift_space,
                                                          self.config.max_depth), np.nan)
            error = np.where(valid, np.abs(aligned - gt_r) / np.where(valid, gt_r, 1.0), np.nan)
        gt_valid = gt[np.isfinite(gt) & (gt > 0)]
        lo, hi = (np.percentile(gt_valid, [2, 98]) if gt_valid.size else (0.0, 1.0))
        hi = max(hi, lo + 1e-6)
        w = self.config.sample_width
        sample.images["pred_depth"] = _downsample(colourise(aligned, lo, hi, "turbo"), w)
        sample.images["gt_depth"] = _downsample(colourise(gt, lo, hi, "turbo"), w)
        sample.images["depth_error"] = _downsample(colourise(error, 0.0, ERROR_MAP_MAX, "YlOrRd"), w)
        how = "as published" if mode == depth_eval.MODE_NONE else f"{mode}, ×{r.scale:.3g}"
        sample.captions.update({
            "pred_depth": f"predicted depth ({how})", "gt_depth": f"ground-truth depth ({lo:.2f}–{hi:.2f})",
            "depth_error": f"|pred − gt| / gt (light 0 → dark red ≥ {ERROR_MAP_MAX:g}; grey: no data), "
                           f"AbsRel {r.metrics['abs_rel']:.3f}"})

    # -- after the stream --

    def finish_depth_pass2(self, messages: Iterable[BagMessage]):
        from perception_fm.ros.image_codec import image_to_numpy

        t = self.topics
        pending: dict[int, dict] = {}
        for item in messages:
            part = "depth" if item.topic == t.depth else "gt_depth" if item.topic == t.gt_depth else None
            if part is None:
                continue
            stamp = _stamp(item.message)
            if not self.depth.wants_sequence_frame(stamp):
                continue
            entry = pending.setdefault(stamp, {})
            entry[part] = item.message
            if len(entry) == 2:
                del pending[stamp]
                pred = image_to_numpy(entry["depth"]).astype(np.float32)
                gt = image_to_numpy(entry["gt_depth"]).astype(np.float32)
                self.depth.add_sequence_pass(stamp, pred, gt)
                self.depth_baseline.add_sequence_pass(stamp, baseline_eval.constant_depth_like(pred), gt)
            while len(pending) > self.config.max_pending:
                del pending[min(pending)]

    def t_of(self, stamps) -> np.ndarray:
        return (np.asarray(stamps, np.int64) - (self.first_stamp or 0)) / 1e9


def _decode_rgb(message) -> np.ndarray:
    from sensor_msgs.msg import CompressedImage

    from perception_fm.ros.image_codec import compressed_to_rgb8, image_to_rgb8

    rgb = compressed_to_rgb8(message) if isinstance(message, CompressedImage) else image_to_rgb8(message)
    return np.ascontiguousarray(rgb)


def _downsample(image: np.ndarray, max_width: int) -> np.ndarray:
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


def _instance_sample(sample: Sample, predictions, labels, match, concepts, rgb):
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
    sample.images["pred_instances"] = _downsample(_paint(base, [p.mask for p in predictions], pred_colours), w)
    sample.images["gt_instances"] = _downsample(_paint(base, gt_masks, gt_colours), w)
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


# -- entry point --------------------------------------------------------------------------------------------

def evaluate(out_bag: str | Path, gt: str | Path | None = None, config: EvalConfig | None = None) -> EvalResult:
    """Evaluate `out_bag` against `gt` (a bag; None = the output bag's own ground-truth topics)."""
    config = config or EvalConfig()
    out_bag = Path(out_bag)
    gt_bag = Path(gt) if gt is not None else None
    try:
        out_reader = BagReader(out_bag)
    except BagReadError as error:
        raise EvalError(str(error)) from error
    gt_reader = None
    try:
        if gt_bag is not None:
            try:
                gt_reader = BagReader(gt_bag)
            except BagReadError as error:
                raise EvalError(str(error)) from error
        ev = _Evaluation(out_bag, gt_bag, config)
        ev.plan(out_reader.topics, (gt_reader or out_reader).topics)
        clock_reader = out_reader if ev.rgb_source != "gt" else gt_reader
        clock_count = clock_reader.count(ev.clock_topic)

        def stream(out_topics: set[str], gt_topics: set[str]) -> Iterator[BagMessage]:
            if gt_reader is None:
                return out_reader.messages(out_topics | gt_topics)
            sources = [r.messages(t) for r, t in ((out_reader, out_topics), (gt_reader, gt_topics)) if t]
            return heapq.merge(*sources, key=lambda m: m.timestamp_ns)

        try:
            ev.run(stream(ev.out_topic_set(), ev.gt_topic_set()), clock_count)
            if ev.tasks["depth"] and ev.depth.needs_sequence_pass():
                ev.finish_depth_pass2(stream({config.topics.depth}, {config.topics.gt_depth}))
        except BagReadError as error:
            ev.result.warnings.append(f"bag error, results cover what was read before it: {error}")
        _summarise(ev, out_reader)
        return ev.result
    finally:
        out_reader.close()
        if gt_reader is not None:
            gt_reader.close()


def _summarise(ev: _Evaluation, out_reader: BagReader):
    result, config = ev.result, ev.config
    result.samples = sorted(ev.samples, key=lambda s: s.stamp_ns)
    for sample in result.samples:
        sample.t_s = float(ev.t_of([sample.stamp_ns])[0])
    if ev.tasks["depth"]:
        _summarise_depth(ev)
    if ev.tasks["trajectory"]:
        _summarise_trajectory(ev)
    if ev.tasks["segmentation"]:
        _summarise_segmentation(ev)
    for part, count in ev.unpaired.items():
        result.warnings.append(f"{count} frame(s) had no {part.replace('_', ' ')} with the same stamp; not evaluated")
    if ev.frames_without_instances:
        result.warnings.append(f"{ev.frames_without_instances} ground-truth instance frame(s) had no "
                               f"{config.topics.instances!r} message with the same stamp; not evaluated")
    result.provenance = _provenance(ev, out_reader)
    result.details["baselines"] = {group: dict(baseline_eval.DESCRIPTIONS[group])
                                   for group in ("depth", "trajectory", "segmentation")
                                   if any(r.group in (group, "tracking" if group == "segmentation" else group)
                                          and r.baselines for r in result.rows)}


def _summarise_depth(ev: _Evaluation):
    result = ev.result
    summary = ev.depth.summary()
    if not summary:
        result.skipped.append("depth metrics skipped: no predicted depth frame had a ground-truth frame with the "
                              "same stamp")
        return
    primary = ev.depth.primary_mode()
    baseline = ev.depth_baseline.summary()
    result.details["depth"] = {"modes": summary, "primary": primary,
                               "baselines": {baseline_eval.CONSTANT_DEPTH: baseline},
                               "sequence_scales": ev.depth.sequence_scales(),
                               "mode_descriptions": depth_eval.MODE_DESCRIPTIONS,
                               "max_depth": ev.config.max_depth, "min_depth": ev.config.min_depth}
    for mode in sorted(summary, key=lambda m: (m != primary, depth_eval.MODES.index(m))):
        entry = summary[mode]
        for name in depth_eval.METRICS:
            unit = "m" if name == "rmse" else ""  # aligned predictions are in ground-truth units
            result.rows.append(MetricRow(
                "depth", depth_eval.METRIC_LABELS[name], entry["metrics"][name], mode,
                "%" if name.startswith("delta") else unit, entry["frames"], mode == primary,
                depth_eval.LOWER_IS_BETTER[name], depth_eval.MODE_DESCRIPTIONS[mode],
                {baseline_eval.CONSTANT_DEPTH: baseline.get(mode, {}).get("metrics", {}).get(name, float("nan"))}))
        stamps, values = ev.depth.series(mode, "abs_rel")
        result.series.append(Series(f"depth_abs_rel_{mode}", f"AbsRel ({mode})", "", ev.t_of(stamps), values,
                                    "depth"))


def _summarise_trajectory(ev: _Evaluation):
    result, config = ev.result, ev.config
    est = ev.est_poses
    source = f"TF {ev.est_parent} -> {config.estimated_frame}"
    if not est and ev.path_poses:
        est = sorted(ev.path_poses.items())
        source = f"{config.topics.camera_path} (last pose of each path)"
    if ev.other_parents:
        result.warnings.append(f"{config.estimated_frame!r} also published under "
                               f"{', '.join(sorted(ev.other_parents))}; those poses were ignored")
    if not est:
        result.skipped.append(f"trajectory metrics skipped: no estimated pose (no TF to {config.estimated_frame!r} "
                              f"on {config.topics.tf!r} and no {config.topics.camera_path!r})")
        return
    if not ev.gt_poses:
        result.skipped.append(f"trajectory metrics skipped: no message on {config.topics.gt_pose!r}")
        return
    # one pose per stamp (the last published)
    est_by_stamp = dict(est)
    gt_by_stamp = dict(ev.gt_poses)
    est_stamps = np.array(sorted(est_by_stamp), np.int64)
    gt_stamps = np.array(sorted(gt_by_stamp), np.int64)
    est_poses = np.stack([est_by_stamp[s] for s in est_stamps])
    gt_poses = np.stack([gt_by_stamp[s] for s in gt_stamps])
    segments = np.array([ev.infos.get(int(s), (None, None, 0))[2] for s in est_stamps], np.int64)
    metric_flags = [v[0] for v in ev.infos.values()]
    if config.trajectory_metric is not None:
        metric = config.trajectory_metric
    else:
        metric = bool(metric_flags) and sum(metric_flags) * 2 > len(metric_flags)
    variants = [False, True] if metric else [True]
    max_diff = int(round(config.max_time_diff_s * 1e9))
    details = {"source": source, "metric": metric, "estimated_poses": len(est_stamps),
               "reference_poses": len(gt_stamps), "max_time_diff_s": config.max_time_diff_s,
               "rpe_delta_frames": config.rpe_delta, "rpe_all_pairs": config.rpe_all_pairs, "alignments": {}}
    for index, with_scale in enumerate(variants):
        try:
            r = traj_eval.evaluate_trajectory(gt_stamps, gt_poses, est_stamps, est_poses, with_scale=with_scale,
                                              max_diff=max_diff, delta=config.rpe_delta,
                                              all_pairs=config.rpe_all_pairs, est_segments=segments)
        except traj_eval.TrajectoryEvalError as error:
            result.skipped.append(f"trajectory metrics ({'Sim(3)' if with_scale else 'SE(3)'}) skipped: {error}")
            continue
        primary = index == 0
        label = r.label
        n = int(r.ate.size)
        unit = "m"  # the aligned estimate is in ground-truth units
        note = "scale estimated with the alignment" if with_scale else "rigid alignment"
        # the baselines at the estimate's own stamps and segments, aligned and scored the same way
        base: dict[str, traj_eval.TrajectoryResult] = {}
        for name, make in baseline_eval.TRAJECTORY_BASELINES.items():
            try:
                base[name] = traj_eval.evaluate_trajectory(
                    gt_stamps, gt_poses, est_stamps, make(est_stamps, segments), with_scale=with_scale,
                    max_diff=max_diff, delta=config.rpe_delta, all_pairs=config.rpe_all_pairs,
                    est_segments=segments)
            except traj_eval.TrajectoryEvalError as error:
                result.warnings.append(f"trajectory baseline {name!r} ({label}) not evaluated: {error}")

        def of(stat: str, field_name: str) -> dict[str, float]:
            return {name: getattr(getattr(b, stat), field_name) for name, b in base.items()}

        for name, field_name in (("ATE RMSE", "rmse"), ("ATE mean", "mean"), ("ATE median", "median"),
                                 ("ATE max", "max")):
            result.rows.append(MetricRow("trajectory", name, getattr(r.ate_stats, field_name), label, unit, n,
                                         primary, True, note, of("ate_stats", field_name)))
        result.rows.append(MetricRow("trajectory", "RPE trans RMSE", r.rpe_trans_stats.rmse, label, unit,
                                     r.rpe_trans_stats.count, primary, True, f"delta {config.rpe_delta} frame(s)",
                                     of("rpe_trans_stats", "rmse")))
        result.rows.append(MetricRow("trajectory", "RPE rot RMSE", r.rpe_rot_stats.rmse, label, "deg",
                                     r.rpe_rot_stats.count, primary, True, f"delta {config.rpe_delta} frame(s)",
                                     of("rpe_rot_stats", "rmse")))
        if with_scale:
            result.rows.append(MetricRow("trajectory", "Sim(3) scale", r.scale, label, "", n, False, None,
                                         "estimate units → ground-truth units"))
        details["alignments"][label] = {
            "ate": r.ate_stats.to_dict(), "rpe_trans": r.rpe_trans_stats.to_dict(),
            "rpe_rot_deg": r.rpe_rot_stats.to_dict(), "scales": [s.scale for s in r.alignments],
            "segments_used": r.segments_used, "segments_skipped": r.segments_skipped,
            "baselines": {name: {"ate": b.ate_stats.to_dict(), "rpe_trans": b.rpe_trans_stats.to_dict(),
                                 "rpe_rot_deg": b.rpe_rot_stats.to_dict(), "scales": [s.scale for s in b.alignments]}
                          for name, b in base.items()}}
        t = ev.t_of(r.stamps)
        result.series.append(Series(f"ate_{label}", f"ATE ({label})", unit, t, r.ate, "trajectory"))
        # baseline positions at the same stamps (one stamp set: the association depends on stamps only)
        views = {name: b.est_aligned[:, :3, 3].copy() for name, b in base.items()
                 if np.array_equal(b.stamps, r.stamps)}
        result.trajectories.append(TrajectoryView(label, r.ref_poses[:, :3, 3].copy(), r.est_aligned[:, :3, 3].copy(),
                                                  t, r.ate, views))
    result.details["trajectory"] = details


def _summarise_segmentation(ev: _Evaluation):
    result, seg = ev.result, ev.segmentation
    if not seg.frames:
        result.skipped.append("segmentation metrics skipped: no instance frame had ground truth with the same stamp")
        return
    totals = seg.totals()
    frames = totals["frames"]
    h = seg_eval.hota(seg.sequence())
    ident = seg_eval.identity(seg.sequence())
    thr = f"IoU ≥ {ev.config.iou_threshold:g}"
    # the same numbers for the baselines (their evaluators saw the same frames and asked-for concepts)
    base = {}
    for name, evaluator in ev.seg_baselines.items():
        b_totals, b_sequence = evaluator.totals(), evaluator.sequence()
        b_h, b_ident = seg_eval.hota(b_sequence), seg_eval.identity(b_sequence)
        base[name] = {"mIoU": b_totals["miou"], "precision": b_totals["precision"], "recall": b_totals["recall"],
                      "HOTA": b_h.mean("hota"), "DetA": b_h.mean("det_a"), "AssA": b_h.mean("ass_a"),
                      "IDF1": b_ident.idf1,
                      "per_concept": {c: v["iou"] for c, v in b_totals["per_concept"].items()}}

    def of(metric: str) -> dict[str, float]:
        return {name: values[metric] for name, values in base.items()}

    rows = [
        MetricRow("segmentation", "mIoU", totals["miou"], "", "", frames, True, False,
                  "mean over concepts of the matched mask IoU (0 when missed)", of("mIoU")),
        MetricRow("segmentation", "precision", totals["precision"], thr, "%", frames, True, False, "",
                  of("precision")),
        MetricRow("segmentation", "recall", totals["recall"], thr, "%", frames, True, False, "", of("recall")),
        MetricRow("tracking", "HOTA", h.mean("hota"), "", "", frames, True, False, "mean over alpha 0.05..0.95",
                  of("HOTA")),
        MetricRow("tracking", "DetA", h.mean("det_a"), "", "", frames, True, False, "", of("DetA")),
        MetricRow("tracking", "AssA", h.mean("ass_a"), "", "", frames, True, False, "", of("AssA")),
        # no baselines for LocA: it averages over matches only, and with none TrackEval's convention makes it 1
        MetricRow("tracking", "LocA", h.mean("loc_a"), "", "", frames, True, False),
        MetricRow("tracking", "IDF1", ident.idf1, "", "", frames, True, False, "", of("IDF1")),
        MetricRow("tracking", "IDTP", ident.idtp, "", "count", frames, False, False),
        MetricRow("tracking", "IDFP", ident.idfp, "", "count", frames, False, True),
        MetricRow("tracking", "IDFN", ident.idfn, "", "count", frames, False, True),
    ]
    per_concept = {}
    concept_rows = []
    for concept, values in totals["per_concept"].items():
        sequence = seg.sequence(concept)
        ch, ci = seg_eval.hota(sequence), seg_eval.identity(sequence)
        values = dict(values, HOTA=ch.mean("hota"), IDF1=ci.idf1)
        per_concept[concept] = values
        concept_rows.append(MetricRow(
            "segmentation", "IoU", values["iou"], concept, "", 0, False, False,
            f"{values['instances']} instance-frames; P {format_value(values['precision'], '%')}, "
            f"R {format_value(values['recall'], '%')}, HOTA {format_value(values['HOTA'])}, "
            f"IDF1 {format_value(values['IDF1'])}",
            {name: b["per_concept"].get(concept, float("nan")) for name, b in base.items()}))
    result.rows.extend(rows[:3] + concept_rows + rows[3:])
    result.details["segmentation"] = {"totals": {k: v for k, v in totals.items() if k != "per_concept"},
                                      "per_concept": per_concept, "hota": h.to_dict(), "identity": ident.to_dict(),
                                      "iou_threshold": ev.config.iou_threshold,
                                      "baselines": {name: {k: v for k, v in b.items()} for name, b in base.items()},
                                      "labels": bool(ev.labels is not None)}
    stamps = sorted(seg.per_frame)
    t = ev.t_of(stamps)
    result.series.append(Series("mask_iou", "mean mask IoU per frame", "", t,
                                np.array([seg.per_frame[s]["mean_iou"] for s in stamps]), "segmentation"))


def _provenance(ev: _Evaluation, out_reader: BagReader) -> dict:
    report_file = ev.out_bag / "replay_report.json"
    replay_report = None
    if report_file.is_file():
        try:
            replay_report = json.loads(report_file.read_text())
        except ValueError:
            replay_report = None
    models = []
    if ev.depth_provenance:
        models.append({"task": "depth", **ev.depth_provenance})
    if ev.seg_provenance:
        models.append({"task": "segmentation", **ev.seg_provenance})
    if replay_report:
        for node in replay_report.get("nodes", []):
            same = [m for m in models if (m["model"], m["weights"]) == (node.get("model"), node.get("weights"))]
            for m in same:
                m.setdefault("device", node.get("device"))
                if node.get("parameters"):  # what the node was configured with (replay_report.json)
                    m["parameters"] = node["parameters"]
                    m["window_size"] = node["parameters"].get("window_size", m.get("window_size"))
            if not same:
                models.append({"task": node.get("task", "?"), "model": node.get("model"),
                               "weights": node.get("weights"), "device": node.get("device"),
                               **({"parameters": node["parameters"]} if node.get("parameters") else {})})
    input_bag = (replay_report or {}).get("input_bag") or (str(ev.gt_bag) if ev.gt_bag else
                                                           "unknown (no replay_report.json beside the output bag)")
    stamps = [s for s in (ev.first_stamp, ev.last_stamp) if s is not None]

    def iso(ns):
        return datetime.fromtimestamp(ns / 1e9, timezone.utc).isoformat(timespec="seconds")

    return {
        "output_bag": str(ev.out_bag),
        "input_bag": input_bag,
        "ground_truth": str(ev.gt_bag) if ev.gt_bag else "the output bag's own ground-truth topics",
        "models": models,
        "random_init": any(m.get("weights") == "random-init" for m in models),
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bag_start": iso(stamps[0]) if stamps else None,
        "bag_duration_s": (stamps[1] - stamps[0]) / 1e9 if len(stamps) == 2 else None,
        "replay": {k: replay_report.get(k) for k in ("wall_s", "messages_in", "warnings")} if replay_report else None,
        "config": {"estimated_frame": ev.config.estimated_frame, "max_time_diff_s": ev.config.max_time_diff_s,
                   "rpe_delta": ev.config.rpe_delta, "iou_threshold": ev.config.iou_threshold,
                   "max_depth": ev.config.max_depth, "shift_space": ev.config.shift_space},
    }
