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

Where things are: the topics and settings (perception_fm.eval.config), the bag reading and frame grouping
(perception_fm.eval.reading), each metric family's rows (perception_fm.eval.summary, on the metric modules depth,
trajectory, pose_auc, depth_fscore, segmentation, baselines), the result and its text table
(perception_fm.eval.result), the sample images (perception_fm.eval.samples) and the HTML/JSON report
(perception_fm.eval.report). This module is the entry point, evaluate().
"""
from __future__ import annotations

import heapq
from pathlib import Path
from typing import Iterator

from perception_fm.eval.config import MAX_SAMPLES, EvalConfig, EvalError, EvalTopics
from perception_fm.eval.reading import _Evaluation
from perception_fm.eval.result import EvalResult, MetricRow, Sample, Series, TrajectoryView, format_value
from perception_fm.eval.summary import _summarise
from perception_fm.replay.bag_io import BagMessage, BagReader, BagReadError

__all__ = ["MAX_SAMPLES", "EvalConfig", "EvalError", "EvalResult", "EvalTopics", "MetricRow", "Sample", "Series",
           "TrajectoryView", "evaluate", "format_value"]


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
