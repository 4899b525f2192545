"""End to end: the synthetic sample bag + fabricated prediction topics (known perturbations) → eval runner →
metrics, HTML report and JSON; ground truth from the output bag itself or from a separate bag; missing topics."""
from __future__ import annotations

import json

import numpy as np
import pycocotools.mask as mask_utils  # references for HOTA/IDF1 (installed by scripts/setup.sh; missing -> fail)
import pytest
import trackeval
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage

from perception_fm.core.masks import rle_encode
from perception_fm.eval.cli import main
from perception_fm.eval.report import render_html, write_json, write_report
from perception_fm.eval.runner import EvalConfig, EvalError, evaluate, format_value
from perception_fm.geometry.sim3 import Sim3
from perception_fm.msg import DepthInfo, Instance, InstanceArray
from perception_fm.replay.bag_io import BagReader, BagWriter
from perception_fm.replay.synthetic import SampleConfig, instance_labels, render_frame, write_sample_bag
from perception_fm.ros.image_codec import numpy_to_image
from perception_fm.ros.tf import make_transform, ns_to_time

# pycocotools 2.0.11 under numpy 2 warns on every decode/iou call; nothing to act on here
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept:DeprecationWarning")
SAMPLE = SampleConfig(width=64, height=48, frames=8)
DEPTH_SCALE = 2.5  # published relative depth = gt / DEPTH_SCALE
TRAJ = Sim3(0.4, np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), [1.0, -2.0, 0.5])  # gt → estimate
ACTIVE = ["red ball", "blue box", "yellow ball", "green cylinder", "wooden crate"]  # not: purple ball, cabinet...
SWITCH_AT = 4  # from this frame on, the predictions of gt 1 and gt 2 swap ids
FP_MASK = np.zeros((SAMPLE.height, SAMPLE.width), bool)
FP_MASK[0:4, 0:6] = True  # a false positive in the corner, every frame


@pytest.fixture(scope="module")
def frames():
    return [render_frame(SAMPLE, i) for i in range(SAMPLE.frames)]


@pytest.fixture(scope="module")
def sample_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "sample"
    write_sample_bag(path, SAMPLE)
    return path


def predicted_instances(frame) -> list[tuple[int, str, np.ndarray]]:
    labels = instance_labels()
    out = []
    for gt_id, concept in sorted(labels.items()):
        mask = frame.instances == gt_id
        if concept not in ACTIVE or not mask.any():
            continue
        pid = 100 + gt_id
        if frame.index >= SWITCH_AT and gt_id in (1, 2):
            pid = 100 + (3 - gt_id)
        out.append((pid, concept, mask))
    out.append((999, "red ball", FP_MASK))
    return out


def prediction_messages(frame, *, depth=True, pose=True, instances=True):
    header = Header(stamp=ns_to_time(frame.stamp_ns), frame_id=SAMPLE.camera_frame)
    out = []
    if depth:
        out.append(("/depth/image", numpy_to_image(frame.depth / np.float32(DEPTH_SCALE), "32FC1", header)))
        out.append(("/depth/info", DepthInfo(header=header, model="fake-da3", weights="random-init", is_metric=False,
                                             scale_source="window_chain", scale=1.0, pose_method="camera_head",
                                             window_size=min(frame.index + 1, 3), view_index=min(frame.index, 2))))
    if pose:
        estimate = TRAJ.apply_to_camera_to_world(frame.camera_to_world)
        out.append(("/tf", TFMessage(transforms=[make_transform(estimate, "da3_world", "da3_camera", header.stamp)])))
    if instances:
        array = InstanceArray(header=header, height=SAMPLE.height, width=SAMPLE.width, concepts=ACTIVE,
                              prompt_ids=list(range(1, len(ACTIVE) + 1)), model="fake-sam", weights="hub/fake")
        for pid, concept, mask in predicted_instances(frame):
            array.instances.append(Instance(id=pid, concept=concept, state=Instance.STATE_TRACKED,
                                            mask_rle=rle_encode(mask).tolist(), mask_area=int(mask.sum())))
        out.append(("/instances", array))
    return out


def write_output(path, sample_bag, frames, *, passthrough=True, **which):
    """An output bag like the replay's: the input (optionally) plus predictions at their input's log time."""
    by_stamp = {f.stamp_ns: f for f in frames}
    with BagReader(sample_bag) as reader, BagWriter(path) as writer:
        for item in reader.messages():
            if passthrough or item.topic == "/camera/color/image_raw":
                writer.write(item.topic, item.message, item.timestamp_ns,
                             latched=item.topic in ("/tf_static", "/gt/instance_labels"))
            if item.topic == "/camera/color/image_raw":
                for topic, message in prediction_messages(by_stamp[item.timestamp_ns], **which):
                    writer.write(topic, message, item.timestamp_ns)
    return path


def trackeval_reference(frames):
    """TrackEval's HOTA/IDF1 on the same scene, built straight from the rendered frames."""
    labels = instance_labels()
    gt_map, pr_map = {}, {}
    data = {"gt_ids": [], "tracker_ids": [], "similarity_scores": []}
    for frame in frames:
        gts = [g for g in sorted(labels) if labels[g] in ACTIVE and (frame.instances == g).any()]
        preds = predicted_instances(frame)
        enc = lambda m: mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))  # noqa: E731
        sim = np.asarray(mask_utils.iou([enc(frame.instances == g) for g in gts], [enc(m) for _, _, m in preds],
                                        [0] * len(preds)), float).reshape(len(gts), len(preds))
        concept_ok = np.array([[labels[g] == c for _, c, _ in preds] for g in gts]).reshape(sim.shape)
        data["gt_ids"].append(np.array([gt_map.setdefault(g, len(gt_map)) for g in gts], int))
        data["tracker_ids"].append(np.array([pr_map.setdefault(p, len(pr_map)) for p, _, _ in preds], int))
        data["similarity_scores"].append(sim * concept_ok)
    data.update(num_gt_ids=len(gt_map), num_tracker_ids=len(pr_map), num_timesteps=len(frames),
                num_gt_dets=sum(len(x) for x in data["gt_ids"]),
                num_tracker_dets=sum(len(x) for x in data["tracker_ids"]))
    hota = trackeval.metrics.HOTA().eval_sequence(data)
    ident = trackeval.metrics.Identity({"PRINT_CONFIG": False}).eval_sequence(data)
    return float(np.mean(hota["HOTA"])), float(ident["IDF1"]), data["num_gt_dets"]


@pytest.fixture(scope="module")
def output_bag(tmp_path_factory, sample_bag, frames):
    return write_output(tmp_path_factory.mktemp("eval") / "out", sample_bag, frames)


@pytest.fixture(scope="module")
def result(output_bag):
    return evaluate(output_bag)


def test_depth_metrics_from_the_bag(result):
    depth = result.details["depth"]
    assert depth["primary"] == "scale/sequence"  # relative, chained: one scale for the sequence
    assert set(depth["modes"]) == {"scale/sequence", "scale/frame", "scale_shift/frame"}
    for mode, entry in depth["modes"].items():
        assert entry["frames"] == SAMPLE.frames
        assert entry["metrics"]["abs_rel"] < 1e-6, mode
        assert entry["metrics"]["delta1"] == 1.0
    assert depth["sequence_scales"][0] == pytest.approx(DEPTH_SCALE, rel=1e-6)
    row = result.row("depth", "AbsRel", "scale/sequence")
    assert row.primary and row.frames == SAMPLE.frames


def test_trajectory_metrics_from_the_bag(result):
    traj = result.details["trajectory"]
    assert not traj["metric"] and list(traj["alignments"]) == ["Sim(3)"]  # relative: Sim(3) only
    assert traj["source"] == "TF da3_world -> da3_camera"
    sim3 = traj["alignments"]["Sim(3)"]
    assert sim3["scales"][0] == pytest.approx(1 / TRAJ.scale, rel=1e-6)
    assert sim3["ate"]["count"] == SAMPLE.frames and sim3["ate"]["max"] < 1e-6
    assert sim3["rpe_rot_deg"]["max"] < 1e-4 and sim3["rpe_trans"]["count"] == SAMPLE.frames - 1
    assert result.row("trajectory", "ATE RMSE", "Sim(3)").value < 1e-6



def test_pose_auc_and_depth_fscore_from_the_bag(result):
    """The DA3 paper's metrics (checked against their definition in tests/test_eval_pose_auc.py) end to end: the
    estimate is a Sim(3) of the ground truth and the depth a scaled copy, so both are perfect; baselines are not."""
    pairs = SAMPLE.frames * (SAMPLE.frames - 1) // 2
    for t in (3, 30):
        row = result.row("trajectory", f"pose AUC@{t}", "pairs")
        assert row.primary and row.value == 1.0 and row.frames == SAMPLE.frames
        assert row.beats_baselines and max(row.baselines.values()) < 1.0
    assert result.details["trajectory"]["pose_auc"]["pairs"] == pairs
    fscore = result.row("depth points", "F-score@5 cm", "scale/frame")
    assert fscore.primary and fscore.value == 1.0 and fscore.frames == SAMPLE.frames
    assert fscore.baselines["constant depth"] < 0.5
    assert result.details["depth_fscore"]["threshold_m"] == 0.05

def test_segmentation_and_tracking_from_the_bag(result, frames):
    seg = result.details["segmentation"]
    totals = seg["totals"]
    labels = instance_labels()
    expected_gt = sum(int((f.instances == g).any()) for f in frames for g in labels if labels[g] in ACTIVE)
    assert totals["frames"] == SAMPLE.frames
    assert (totals["tp"], totals["fn"], totals["fp"]) == (expected_gt, 0, SAMPLE.frames)  # 1 FP per frame
    assert totals["precision"] == pytest.approx(expected_gt / (expected_gt + SAMPLE.frames))
    assert totals["recall"] == 1.0 and totals["miou"] == pytest.approx(1.0)
    assert set(seg["per_concept"]) == set(ACTIVE) & {labels[g] for f in frames for g in np.unique(f.instances) if g}
    hota, idf1, n_gt = trackeval_reference(frames)
    assert n_gt == expected_gt
    assert result.row("tracking", "HOTA").value == pytest.approx(hota, abs=1e-6)
    assert result.row("tracking", "IDF1").value == pytest.approx(idf1, abs=1e-6)
    assert hota < 1.0 and idf1 < 1.0  # the id switch and the false positives cost something
    assert seg["identity"]["IDFP"] >= SAMPLE.frames


def test_samples_and_provenance(result, output_bag, sample_bag):
    assert 1 <= len(result.samples) <= 4
    sample = result.samples[0]
    for name in ("input", "pred_depth", "gt_depth", "depth_error", "pred_instances", "gt_instances"):
        image = sample.images[name]
        assert image.dtype == np.uint8 and image.shape == (SAMPLE.height, SAMPLE.width, 3), name
    assert any("FP" in line for line in sample.legend) and any("IoU 1.00" in line for line in sample.legend)
    p = result.provenance
    assert p["random_init"] and p["output_bag"] == str(output_bag)
    assert {m["model"] for m in p["models"]} == {"fake-da3", "fake-sam"}
    assert not result.skipped


def test_report_html_and_json(result, tmp_path):
    html_path = write_report(result, tmp_path / "report" / "eval.html")
    text = html_path.read_text()
    assert text.startswith("<!DOCTYPE html>") and "RANDOM-INIT" in text
    for group, name, variant in (("depth", "AbsRel", "scale/sequence"), ("trajectory", "ATE RMSE", "Sim(3)"),
                                 ("tracking", "HOTA", ""), ("tracking", "IDF1", ""), ("segmentation", "mIoU", "")):
        row = result.row(group, name, variant)
        assert format_value(row.value, row.unit) in text, (group, name)
    assert text.count("data:image/png;base64,") >= 4 + 6  # plots + sample images
    assert "http://" not in text and "https://" not in text and "<script" not in text  # self-contained
    data = json.loads(write_json(result, tmp_path / "eval.json").read_text())
    names = {(m["group"], m["name"], m["variant"]) for m in data["metrics"]}
    assert ("tracking", "HOTA", "") in names and data["provenance"]["random_init"] is True
    assert data["details"]["depth"]["primary"] == "scale/sequence"
    assert {s["key"] for s in data["series"]} >= {"mask_iou", "ate_Sim(3)", "depth_abs_rel_scale/sequence"}


def test_separate_ground_truth_bag(tmp_path, sample_bag, frames, result):
    out = write_output(tmp_path / "out", sample_bag, frames, passthrough=False)
    with BagReader(out) as reader:
        assert not any(topic.startswith("/gt/") for topic in reader.topics)
    separate = evaluate(out, gt=sample_bag)
    for group, name, variant in (("depth", "AbsRel", "scale/sequence"), ("trajectory", "ATE RMSE", "Sim(3)"),
                                 ("tracking", "HOTA", ""), ("tracking", "IDF1", ""), ("segmentation", "recall", None)):
        assert separate.row(group, name, variant).value == pytest.approx(result.row(group, name, variant).value,
                                                                         abs=1e-12)
    assert separate.provenance["ground_truth"] == str(sample_bag)
    with pytest.raises(EvalError, match="/gt/depth"):  # without gt= this bag has no ground truth at all
        evaluate(out)


def test_missing_topics_are_named_and_skipped(tmp_path, sample_bag, frames, capsys):
    out = write_output(tmp_path / "depth_only", sample_bag, frames, pose=False, instances=False)
    partial = evaluate(out)
    assert partial.details["depth"]["primary"] == "scale/sequence"
    text = " ".join(partial.skipped)
    assert "'/instances'" in text and "segmentation" in text and "trajectory" in text
    assert main([str(out)]) == 0
    captured = capsys.readouterr()
    assert "AbsRel" in captured.out and "skipped" in captured.err and "'/instances'" in captured.err
    # nothing evaluable: exit code 2 and the missing topics named
    bare = write_output(tmp_path / "bare", sample_bag, frames, passthrough=False, depth=False, pose=False,
                        instances=False)
    with pytest.raises(EvalError, match="/gt/depth"):
        evaluate(bare)
    assert main([str(bare)]) == 2
    assert "'/depth/image'" in capsys.readouterr().err
    assert main([str(tmp_path / "does_not_exist")]) == 2


def test_cli_writes_report_and_json(output_bag, tmp_path, capsys):
    report, numbers = tmp_path / "r.html", tmp_path / "r.json"
    assert main([str(output_bag), "--report", str(report), "--json", str(numbers), "--samples", "2"]) == 0
    captured = capsys.readouterr()
    assert "HOTA" in captured.out and "scale/sequence *" in captured.out and "RANDOM-INIT" in captured.err
    assert report.is_file() and json.loads(numbers.read_text())["metrics"]
    assert render_html(evaluate(output_bag, config=EvalConfig(samples=0))).count("<figure>") == 0


def test_metric_depth_and_trajectory_get_se3_and_none(tmp_path, sample_bag, frames):
    """A metric model: depth 'none' is the headline, the trajectory gets SE(3) (and Sim(3) beside it)."""
    path = tmp_path / "metric"
    by_stamp = {f.stamp_ns: f for f in frames}
    rigid = Sim3(1.0, TRAJ.rotation, TRAJ.translation)
    with BagReader(sample_bag) as reader, BagWriter(path) as writer:
        for item in reader.messages():
            writer.write(item.topic, item.message, item.timestamp_ns)
            if item.topic == "/camera/color/image_raw":
                frame = by_stamp[item.timestamp_ns]
                header = Header(stamp=ns_to_time(frame.stamp_ns), frame_id=SAMPLE.camera_frame)
                writer.write("/depth/image", numpy_to_image(frame.depth * np.float32(1.1), "32FC1", header),
                             item.timestamp_ns)
                writer.write("/depth/info", DepthInfo(header=header, model="m", weights="w", is_metric=True,
                                                      scale_source="model", window_size=2), item.timestamp_ns)
                estimate = rigid.apply_to_camera_to_world(frame.camera_to_world)
                writer.write("/tf", TFMessage(transforms=[make_transform(estimate, "odom", "da3_camera",
                                                                         header.stamp)]), item.timestamp_ns)
    r = evaluate(path)
    assert r.details["depth"]["primary"] == "none"
    assert r.row("depth", "AbsRel", "none").value == pytest.approx(0.1, rel=1e-5)
    assert r.row("depth", "AbsRel", "scale/frame").value < 1e-6
    traj = r.details["trajectory"]
    assert traj["metric"] and list(traj["alignments"]) == ["SE(3)", "Sim(3)"]
    assert r.row("trajectory", "ATE RMSE", "SE(3)").primary and r.row("trajectory", "ATE RMSE", "SE(3)").value < 1e-6
    assert r.row("trajectory", "Sim(3) scale").value == pytest.approx(1.0, abs=1e-6)
    assert not r.provenance["random_init"]


def test_sequence_resets_split_scale_and_alignment(tmp_path, frames):
    """A relative multi-view stream that was reset half-way (window back to one view): each half has its own
    depth scale and trajectory frame; per-sequence scale and per-segment alignment recover both exactly.
    Compressed colour images feed the samples."""
    sample = tmp_path / "sample_jpeg"
    write_sample_bag(sample, SAMPLE, compressed=True)
    halves = {0: (2.5, TRAJ), 1: (4.0, Sim3(3.0, np.eye(3), [0.0, 1.0, 0.0]))}
    by_stamp = {f.stamp_ns: f for f in frames}
    path = tmp_path / "reset"
    with BagReader(sample) as reader, BagWriter(path) as writer:
        for item in reader.messages():
            writer.write(item.topic, item.message, item.timestamp_ns)
            if item.topic != "/camera/color/image_raw/compressed":
                continue
            frame = by_stamp[item.timestamp_ns]
            half = int(frame.index >= 4)
            scale, sim3 = halves[half]
            header = Header(stamp=ns_to_time(frame.stamp_ns), frame_id=SAMPLE.camera_frame)
            writer.write("/depth/image", numpy_to_image(frame.depth / np.float32(scale), "32FC1", header),
                         item.timestamp_ns)
            writer.write("/depth/info", DepthInfo(header=header, model="m", weights="w", is_metric=False,
                                                  scale_source="window_chain", window_size=min(frame.index % 4 + 1, 3)),
                         item.timestamp_ns)
            estimate = sim3.apply_to_camera_to_world(frame.camera_to_world)
            writer.write("/tf", TFMessage(transforms=[make_transform(estimate, "da3_world", "da3_camera",
                                                                     header.stamp)]), item.timestamp_ns)
    r = evaluate(path)
    depth = r.details["depth"]
    assert depth["sequence_scales"] == {0: pytest.approx(2.5, rel=1e-6), 1: pytest.approx(4.0, rel=1e-6)}
    assert depth["modes"]["scale/sequence"]["metrics"]["abs_rel"] < 1e-6
    sim3 = r.details["trajectory"]["alignments"]["Sim(3)"]
    assert sim3["segments_used"] == 2 and sim3["ate"]["max"] < 1e-6
    assert sorted(sim3["scales"]) == [pytest.approx(1 / 3.0), pytest.approx(1 / TRAJ.scale)]
    assert sim3["rpe_trans"]["count"] == SAMPLE.frames - 2  # no pair across the reset
    assert r.samples and all(s.images["input"].shape == (SAMPLE.height, SAMPLE.width, 3) for s in r.samples)
