"""Reading the bags: which topics feed which metric (the plan), the log-time stream of predictions and ground
truth grouped into frames by header stamp, each frame handed to the metric evaluators as it completes, and the
second pass over depth for one-scale-per-sequence alignment. Only per-frame numbers and a few sample frames are
kept, so memory does not grow with the bag's length."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from perception_fm.eval import baselines as baseline_eval
from perception_fm.eval import depth as depth_eval
from perception_fm.eval import depth_fscore
from perception_fm.eval import segmentation as seg_eval
from perception_fm.eval.config import MAX_SAMPLES, EvalConfig, EvalError
from perception_fm.eval.result import EvalResult, Sample
from perception_fm.eval.samples import decode_rgb, depth_sample, downsample, instance_sample
from perception_fm.replay.bag_io import BagMessage


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
        self.fscore = depth_fscore.FscoreEvaluator(config.fscore_threshold_m, config.fscore_max_points)
        self.fscore_baseline = depth_fscore.FscoreEvaluator(config.fscore_threshold_m, config.fscore_max_points)
        self.camera_k: tuple[np.ndarray, tuple[int, int]] | None = None  # latest (K, (height, width))
        self.frames_without_intrinsics = 0
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
        # the F-score's intrinsics: from the ground-truth side when it has them, else from the output bag
        self.camera_info_source = "gt" if t.camera_info in gt_topics else "out" if t.camera_info in out_topics \
            else None
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
        if self.camera_info_source == "out" and self.tasks["depth"]:
            topics.add(t.camera_info)
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
        if self.camera_info_source == "gt" and self.tasks["depth"]:
            topics.add(t.camera_info)
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
            elif topic == t.camera_info:
                if message.k[0] > 0:  # an uncalibrated camera publishes zeros
                    self.camera_k = (np.asarray(message.k, np.float64).reshape(3, 3),
                                     (int(message.height), int(message.width)))
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
            sample.images["input"] = downsample(decode_rgb(parts["rgb"]), self.config.sample_width)
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
            self._fscore(bundle.stamp_ns, pred, gt, bool(is_metric))
            if sample is not None:
                depth_sample(sample, pred, gt, results, is_metric, self.config)
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
            instance_sample(sample, predictions, labels, match, self.labels, sample.images.get("input"))

    def _fscore(self, stamp: int, pred: np.ndarray, gt: np.ndarray, is_metric: bool):
        """Depth F-score of a frame and of the constant-depth baseline: no alignment for metric depth, else the
        frame's median scale (perception_fm.eval.depth_fscore)."""
        if self.camera_k is None:
            self.frames_without_intrinsics += 1
            return
        k, size = self.camera_k
        config = self.config
        gt_r = depth_eval.resample_nearest(gt, pred.shape)
        k = depth_fscore.scaled_intrinsics(k, size, pred.shape)
        with np.errstate(invalid="ignore"):
            gt_valid = np.isfinite(gt_r) & (gt_r > config.min_depth)
            if config.max_depth is not None and config.max_depth > 0:
                gt_valid &= gt_r <= config.max_depth
        alignment = "none" if is_metric else "scale"
        for evaluator, values in ((self.fscore, pred), (self.fscore_baseline, baseline_eval.constant_depth_like(pred))):
            valid = depth_eval.valid_mask(values, gt_r, min_depth=config.min_depth, max_depth=config.max_depth)
            scale = 1.0 if is_metric else depth_eval.median_scale(values[valid], gt_r[valid])
            if not np.isfinite(scale):
                continue  # no valid pixel: nothing to score
            with np.errstate(invalid="ignore"):
                aligned = np.where(np.isfinite(values) & (values > 0),
                                   depth_eval.apply_alignment(values, alignment, scale, 0.0, config.shift_space,
                                                              config.max_depth), np.nan)
            evaluator.alignment = "none" if is_metric else depth_eval.MODE_SCALE_FRAME
            evaluator.add(stamp, aligned, gt_r, gt_valid, k)

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
