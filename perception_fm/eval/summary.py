"""Computing each metric family's rows from what the stream gathered: depth (every alignment mode), trajectory
(ATE/RPE per alignment, relative pose AUC), segmentation and tracking (mIoU, P/R, HOTA, IDF1), each with its
baselines; and the provenance (models, weights, input bag) the report shows."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np

from perception_fm.eval import baselines as baseline_eval
from perception_fm.eval import depth as depth_eval
from perception_fm.eval import pose_auc
from perception_fm.eval import segmentation as seg_eval
from perception_fm.eval import trajectory as traj_eval
from perception_fm.eval.reading import _Evaluation
from perception_fm.eval.result import MetricRow, Series, TrajectoryView, format_value
from perception_fm.replay.bag_io import BagReader


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
    _summarise_fscore(ev)


def _summarise_fscore(ev: _Evaluation):
    """Depth F-score rows (perception_fm.eval.depth_fscore): a group of their own, so the depth matrix (one row per
    alignment, the same metrics in each) keeps its shape."""
    result, config = ev.result, ev.config
    if ev.frames_without_intrinsics:
        result.warnings.append(f"{ev.frames_without_intrinsics} depth frame(s) came before any "
                               f"{config.topics.camera_info!r}: no F-score for them")
    summary = ev.fscore.summary()
    if not summary:
        result.skipped.append(f"depth F-score skipped: no {config.topics.camera_info!r} (intrinsics) in either bag"
                              if ev.camera_info_source is None else "depth F-score skipped: no frame scored")
        return
    baseline = ev.fscore_baseline.summary()
    threshold = f"{config.fscore_threshold_m * 100:g} cm"
    frames = len(ev.fscore.frames)
    note = (f"points within {threshold}; alignment {ev.fscore.alignment}; mean over frames")
    for name, label, primary in (("fscore", "F-score", True), ("precision", "precision", False),
                                 ("recall", "recall", False)):
        result.rows.append(MetricRow("depth points", f"{label}@{threshold}", summary[name], ev.fscore.alignment,
                                     "%", frames, primary, False, note,
                                     {baseline_eval.CONSTANT_DEPTH: baseline.get(name, float("nan"))}))
    result.details["depth_fscore"] = {"threshold_m": config.fscore_threshold_m, "alignment": ev.fscore.alignment,
                                      "max_points": config.fscore_max_points, "frames": frames, **summary,
                                      "baselines": {baseline_eval.CONSTANT_DEPTH: baseline}}


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
    _summarise_pose_auc(ev, gt_stamps, gt_poses, est_stamps, est_poses, segments, max_diff, details)
    result.details["trajectory"] = details


def _summarise_pose_auc(ev: _Evaluation, gt_stamps, gt_poses, est_stamps, est_poses, segments, max_diff, details):
    """DA3's relative pose AUC over view pairs (perception_fm.eval.pose_auc); alignment-free, so one set of rows."""
    result, thresholds = ev.result, ev.config.pose_auc_thresholds
    r = pose_auc.evaluate_pose_auc(gt_stamps, gt_poses, est_stamps, est_poses, max_diff=max_diff,
                                   est_segments=segments, thresholds=thresholds)
    if not r.pairs:
        result.skipped.append("relative pose AUC skipped: fewer than 2 associated poses in every segment")
        return
    base = {name: pose_auc.evaluate_pose_auc(gt_stamps, gt_poses, est_stamps, make(est_stamps, segments),
                                             max_diff=max_diff, est_segments=segments, thresholds=thresholds)
            for name, make in baseline_eval.TRAJECTORY_BASELINES.items()}
    note = f"{r.pairs} view pairs; pair error max(rotation, translation direction)"
    for t in thresholds:
        result.rows.append(MetricRow("trajectory", f"pose AUC@{t}", r.auc[t], "pairs", "%", r.views, True, False,
                                     note, {name: b.auc[t] for name, b in base.items()}))
    top = max(thresholds)
    result.rows.append(MetricRow("trajectory", f"RRA@{top}", r.rra[top], "pairs", "%", r.views, False, False,
                                 "pairs with rotation error < threshold", {n: b.rra[top] for n, b in base.items()}))
    result.rows.append(MetricRow("trajectory", f"RTA@{top}", r.rta[top], "pairs", "%", r.views, False, False,
                                 "pairs with translation direction error < threshold",
                                 {n: b.rta[top] for n, b in base.items()}))
    details["pose_auc"] = {**r.to_dict(), "baselines": {name: b.to_dict() for name, b in base.items()}}


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
