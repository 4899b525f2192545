"""Trivial baselines beside every metric (perception_fm.eval.baselines), and the sample they must lose on.

The separation test is the issue's: on the bundled sample's scene and path (48 frames, the default tour, at a
smaller image size), an output bag whose depth, poses and instances ARE the ground truth (a test stand-in for a
perfect model: relative depth, a similarity-transformed trajectory, as DA3 publishes them) scores perfectly, and
each baseline is worse by a stated margin on every headline metric."""
from __future__ import annotations

import json

import numpy as np
import pytest
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage

from perception_fm.core.masks import rle_encode
from perception_fm.eval import baselines as base
from perception_fm.eval.cli import main
from perception_fm.eval.report import render_html, write_json
from perception_fm.eval.runner import evaluate
from perception_fm.eval.trajectory import evaluate_trajectory
from perception_fm.geometry.sim3 import Sim3
from perception_fm.msg import DepthInfo, Instance, InstanceArray
from perception_fm.replay.bag_io import BagReader, BagWriter
from perception_fm.replay.synthetic import SampleConfig, camera_to_world, instance_labels, render_frame, \
    write_sample_bag
from perception_fm.ros.image_codec import numpy_to_image
from perception_fm.ros.tf import make_transform, ns_to_time

# the default sample's scene and path (48 frames, 10 Hz), at a quarter of its pixels to keep the test quick
SAMPLE = SampleConfig(width=160, height=120)
DEPTH_SCALE = 2.5  # published relative depth = gt / DEPTH_SCALE
TRAJ = Sim3(0.4, np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), [1.0, -2.0, 0.5])  # gt → estimate
CONCEPTS = sorted(set(instance_labels().values()))


# -- the baselines themselves -------------------------------------------------------------------------------

def test_trajectory_baselines_are_built_from_stamps_only():
    stamps = np.array([5, 3, 4, 10, 11], np.int64) * 10**8
    segments = np.array([0, 0, 0, 1, 1])
    constant = base.constant_pose_trajectory(stamps)
    assert constant.shape == (5, 4, 4) and np.array_equal(constant, np.repeat(np.eye(4)[None], 5, axis=0))
    line = base.straight_line_trajectory(stamps, segments)
    assert np.array_equal(line[:, :3, :3], constant[:, :3, :3])  # orientation fixed
    # 1 m/s along the optical axis (+z) from each segment's first stamp; a restart restarts the line
    np.testing.assert_allclose(line[:, :3, 3], [[0, 0, 0.2], [0, 0, 0.0], [0, 0, 0.1], [0, 0, 0.0], [0, 0, 0.1]])
    with pytest.raises(ValueError):
        base.straight_line_trajectory(stamps, segments[:2])


def test_constant_depth_and_masks():
    pred = np.array([[2.0, np.inf], [np.nan, -1.0]], np.float32)
    constant = base.constant_depth_like(pred)
    assert constant.dtype == np.float32 and constant[0, 0] == base.CONSTANT_DEPTH_M
    assert np.isnan(constant[0, 1]) and np.isnan(constant[1, 0]) and np.isnan(constant[1, 1])  # only published
    whole = base.whole_image_instances((3, 4), ["Red  Ball", "blue box", "red ball"])
    assert [(p.id, p.concept) for p in whole] == [(1, "blue box"), (2, "red ball")] and all(p.mask.all() for p in whole)
    assert [(p.id, p.concept) for p in base.whole_image_instances((3, 4), None)] == [(1, "")]


def test_beating_is_strict_and_directional():
    assert base.not_beaten(0.1, {"a": 0.2, "b": 0.3}, lower_is_better=True) == []
    assert base.not_beaten(0.2, {"a": 0.2, "b": 0.3}, lower_is_better=True) == ["a"]  # a tie does not beat
    assert base.not_beaten(0.5, {"a": 0.6, "b": 0.4}, lower_is_better=False) == ["a"]
    assert base.not_beaten(float("nan"), {"a": 0.6}, lower_is_better=False) == ["a"]  # n/a beats nothing
    assert base.not_beaten(0.5, {"a": float("nan")}, lower_is_better=False) is None  # nothing to compare with
    assert base.not_beaten(0.5, {"a": 0.1}, lower_is_better=None) is None


def test_constant_pose_lands_on_the_centroid_and_the_line_on_the_best_line():
    """What the alignment makes of them, worked out independently on the sample's path."""
    stamps = np.array([SAMPLE.start_ns + i * 10**8 for i in range(SAMPLE.frames)], np.int64)
    gt = np.stack([camera_to_world(SAMPLE, i) for i in range(SAMPLE.frames)])
    positions = gt[:, :3, 3]
    spread = np.sqrt(np.mean(np.sum((positions - positions.mean(axis=0)) ** 2, axis=1)))
    r = evaluate_trajectory(stamps, gt, stamps, base.constant_pose_trajectory(stamps), with_scale=True, max_diff=0)
    assert r.ate_stats.rmse == pytest.approx(spread, rel=1e-9)
    # the straight line at uniform speed: Sim(3) finds the least-squares line with positions linear in time
    t = (stamps - stamps[0]) / 1e9
    design = np.stack([t, np.ones_like(t)], axis=1)
    fit = design @ np.linalg.lstsq(design, positions, rcond=None)[0]
    best = np.sqrt(np.mean(np.sum((positions - fit) ** 2, axis=1)))
    r = evaluate_trajectory(stamps, gt, stamps, base.straight_line_trajectory(stamps), with_scale=True, max_diff=0)
    assert r.ate_stats.rmse == pytest.approx(best, rel=1e-6)


# -- the sample separates a correct estimate from the baselines -------------------------------------------

@pytest.fixture(scope="module")
def frames():
    return [render_frame(SAMPLE, i) for i in range(SAMPLE.frames)]


@pytest.fixture(scope="module")
def sample_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("baselines") / "sample"
    write_sample_bag(path, SAMPLE)
    return path


def predictions(frame, *, depth, pose, instances: bool):
    """What a model would publish for `frame`: the given depth and camera_to_world; ground-truth masks."""
    header = Header(stamp=ns_to_time(frame.stamp_ns), frame_id=SAMPLE.camera_frame)
    out = [("/depth/image", numpy_to_image(np.asarray(depth, np.float32), "32FC1", header)),
           ("/depth/info", DepthInfo(header=header, model="ground-truth-stand-in", weights="test", is_metric=False,
                                     scale_source="window_chain", scale=1.0, pose_method="camera_head",
                                     window_size=min(frame.index + 1, 4), view_index=min(frame.index, 3))),
           ("/tf", TFMessage(transforms=[make_transform(pose, "da3_world", "da3_camera", header.stamp)]))]
    array = InstanceArray(header=header, height=SAMPLE.height, width=SAMPLE.width, concepts=CONCEPTS,
                          prompt_ids=list(range(1, len(CONCEPTS) + 1)), model="ground-truth-stand-in", weights="test")
    if instances:
        for gt_id, concept in sorted(instance_labels().items()):
            mask = frame.instances == gt_id
            if mask.any():
                array.instances.append(Instance(id=100 + gt_id, concept=concept, state=Instance.STATE_TRACKED,
                                                mask_rle=rle_encode(mask).tolist(), mask_area=int(mask.sum())))
    out.append(("/instances", array))
    return out


def write_output(path, sample_bag, frames, model):
    """An output bag like the replay's: the input passed through plus `model(frame)`'s predictions."""
    by_stamp = {f.stamp_ns: f for f in frames}
    with BagReader(sample_bag) as reader, BagWriter(path) as writer:
        for item in reader.messages():
            writer.write(item.topic, item.message, item.timestamp_ns,
                         latched=item.topic in ("/tf_static", "/gt/instance_labels"))
            if item.topic == "/camera/color/image_raw":
                for topic, message in model(by_stamp[item.timestamp_ns]):
                    writer.write(topic, message, item.timestamp_ns)
    return path


def perfect(frame):
    return predictions(frame, depth=frame.depth / DEPTH_SCALE, pose=TRAJ.apply_to_camera_to_world(
        frame.camera_to_world), instances=True)


def trivial(frame):
    """A 'model' that IS the baselines: constant depth 1, the identity pose, nothing segmented."""
    return predictions(frame, depth=np.ones_like(frame.depth), pose=np.eye(4), instances=False)


@pytest.fixture(scope="module")
def perfect_result(tmp_path_factory, sample_bag, frames):
    return evaluate(write_output(tmp_path_factory.mktemp("baselines") / "perfect", sample_bag, frames, perfect))


HEADLINES = [  # (group, metric, variant, perfect value, the margin every baseline must lose by)
    ("depth", "AbsRel", "scale/sequence", 0.0, 0.25),
    ("depth", "δ<1.25", "scale/sequence", 1.0, 0.35),
    ("depth", "RMSE", "scale/sequence", 0.0, 0.8),
    ("trajectory", "ATE RMSE", "Sim(3)", 0.0, 0.6),
    ("trajectory", "RPE trans RMSE", "Sim(3)", 0.0, 0.1),
    ("trajectory", "RPE rot RMSE", "Sim(3)", 0.0, 4.0),
    ("segmentation", "mIoU", "", 1.0, 0.8),
    ("segmentation", "recall", None, 1.0, 0.8),
    ("tracking", "HOTA", "", 1.0, 0.8),
    ("tracking", "IDF1", "", 1.0, 0.8),
]


@pytest.mark.parametrize("group,name,variant,ideal,margin", HEADLINES, ids=[f"{h[0]}-{h[1]}" for h in HEADLINES])
def test_ground_truth_is_perfect_and_every_baseline_clearly_worse(perfect_result, group, name, variant, ideal,
                                                                    margin):
    row = perfect_result.row(group, name, variant)
    assert row is not None and row.primary and row.frames > 0
    assert row.value == pytest.approx(ideal, abs=1e-5)
    expected = {"depth": {"constant depth"}, "trajectory": {"constant pose", "straight line"},
                "segmentation": {"empty masks", "whole image"}, "tracking": {"empty masks", "whole image"}}[group]
    assert set(row.baselines) == expected
    for baseline, value in row.baselines.items():
        assert np.isfinite(value), baseline
        worse_by = value - row.value if row.lower_is_better else row.value - value
        assert worse_by > margin, (baseline, value)
    assert row.beats_baselines is True and row.not_beaten == []


def test_baselines_do_not_see_the_model(tmp_path, sample_bag, frames, perfect_result):
    """A different model on the same frames leaves every baseline value unchanged (bit for bit); and a model that
    is the baselines ties with them, which is not beating them: marked in the rows, the JSON, the text table and
    the report."""
    result = evaluate(write_output(tmp_path / "trivial", sample_bag, frames, trivial))
    for row in result.rows:
        if row.baselines:
            same = perfect_result.row(row.group, row.name, row.variant)
            assert same is not None and same.baselines.keys() == row.baselines.keys()
            np.testing.assert_array_equal(list(row.baselines.values()), list(same.baselines.values()))
    for group, name, variant, baseline in (("depth", "AbsRel", "scale/sequence", "constant depth"),
                                           ("trajectory", "ATE RMSE", "Sim(3)", "constant pose"),
                                           ("segmentation", "mIoU", "", "empty masks"),
                                           ("tracking", "HOTA", "", "empty masks")):
        row = result.row(group, name, variant)
        assert row.value == pytest.approx(row.baselines[baseline], abs=1e-12)  # it is that baseline
        assert row.beats_baselines is False and baseline in row.not_beaten
    data = json.loads(write_json(result, tmp_path / "trivial.json").read_text())
    ate = next(m for m in data["metrics"] if (m["group"], m["name"], m["variant"]) == ("trajectory", "ATE RMSE",
                                                                                     "Sim(3)"))
    assert ate["beats_baselines"] is False and set(ate["baselines"]) == {"constant pose", "straight line"}
    assert set(data["details"]["baselines"]) == {"depth", "trajectory", "segmentation"}
    assert " !" in result.table() and "does not beat" in result.table()
    html = render_html(result)
    assert 'class="warnbox"' in html and "does not beat a trivial baseline" in html
    assert 'class="num lost"' in html and "✗ does not beat empty masks" in html
    perfect_html = render_html(perfect_result)
    body = perfect_html.split("</style>")[1]
    assert 'class="warnbox"' not in body and "lost" not in body.replace('<span class="lost">✗ does not beat</span> '
                                                                        "marks", "")  # only the legend says it
    for name in ("constant pose", "straight line", "constant depth", "empty masks", "whole image"):
        assert f"baseline: {name}" in perfect_html or f"{name}: " in perfect_html, name
        assert name in perfect_html.split("<h3>Baselines</h3>")[1]  # and what it is, in the Baselines section


def test_cli_prints_the_baselines(tmp_path, sample_bag, frames, capsys):
    out = write_output(tmp_path / "perfect", sample_bag, frames, perfect)
    assert main([str(out), "--samples", "0"]) == 0
    text = capsys.readouterr().out
    assert "constant depth" in text and "straight line" in text and "whole image" in text and " !" not in text
