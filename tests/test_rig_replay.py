"""A camera rig's bag end to end: `perception-fm sample --rig 2` -> replay through depth_node and concept_node
with `cameras` (perception_fm.replay.rig_nodes) -> per-camera outputs and the fused cloud -> `perception-fm
eval`: per-camera and fused metrics (perception_fm.eval.rig). Depth from the ground-truth test model
(tests/rig_truth_model.py), so the metrics are known exactly; concepts from the tiny SAM 3."""
import json

import numpy as np
import pytest

from perception_fm.graph import load_graph
from perception_fm.replay import synthetic as syn
from perception_fm.replay.bag_io import BagReader
from perception_fm.ros.image_codec import image_to_numpy
from perception_fm.ros.tf import stamp_to_ns
from rig_truth_model import FRAMES, RIG, use_in_default_manager
from sam3_tiny import save_tiny_sam3

CAMERAS = ["/cam0/color/image_raw,/cam0/color/camera_info", "/cam1/color/image_raw,/cam1/color/camera_info"]


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    from perception_fm.replay.runner import replay

    use_in_default_manager()
    root = tmp_path_factory.mktemp("rig_replay")
    checkpoint = save_tiny_sam3(root / "sam3")
    config = json.loads((checkpoint / "config.json").read_text())
    config["score_threshold_detection"] = 0.0  # random weights score ~0.4: every query a detection (test only)
    (checkpoint / "config.json").write_text(json.dumps(config))
    assert syn.main([str(root / "in"), "--rig", "2", "--frames", str(RIG.frames), "--width", str(RIG.width),
                     "--height", str(RIG.height)]) in (0, None)
    (root / "rig.yaml").write_text(f"""
nodes:
  depth_node:
    executable: depth_node
    parameters: {{model: rig-truth, cameras: {json.dumps(CAMERAS)}, rig_frame: camera_link, rig_tolerance: 0.005}}
  concept_node:
    executable: concept_node
    parameters: {{model: sam3, weights: "{checkpoint}", cameras: {json.dumps(CAMERAS)}, concepts: object,
                 confirmation_frames: 0, new_track_score: 0.0, max_objects: 4}}
""")
    report = replay(root / "in", load_graph(root / "rig.yaml"), root / "out", progress=False)
    return root, report


def messages(bag, topic):
    with BagReader(bag) as reader:
        return [item.message for item in reader.messages({topic})]


def test_replay_writes_each_cameras_outputs_and_the_fused_cloud(replayed):
    root, report = replayed
    nodes = {node["node"]: node for node in report.nodes}
    for camera in range(2):
        depths = messages(root / "out", f"/cam{camera}/color/depth/image")
        assert len(depths) == RIG.frames
        for index, depth in enumerate(depths):  # each camera's own frame, stamp and (ground-truth) depth
            assert depth.header.frame_id == syn.rig_camera_frame(RIG, camera)
            assert stamp_to_ns(depth.header.stamp) == FRAMES[index, camera].stamp_ns
            np.testing.assert_array_equal(image_to_numpy(depth), FRAMES[index, camera].depth)
        arrays = messages(root / "out", f"/cam{camera}/color/instances")
        assert len(arrays) == RIG.frames and all(a.header.frame_id == syn.rig_camera_frame(RIG, camera)
                                                 for a in arrays)
        # the camera's name: its namespace (depth_rig_io.parse_camera)
        assert all(i.camera == f"cam{camera}/color" for a in arrays for i in a.instances)
    assert len(messages(root / "out", "/points_fused")) == RIG.frames
    combined = messages(root / "out", "/instances")
    assert len(combined) == RIG.frames
    ids = {camera: {i.id for a in combined for i in a.instances if i.camera == camera}
           for camera in ("cam0/color", "cam1/color")}
    assert all(ids.values()) and not ids["cam0/color"] & ids["cam1/color"]  # unique across cameras
    assert nodes["depth_node"]["processed"] == nodes["concept_node"]["processed"] == RIG.frames  # groups
    assert nodes["depth_node"]["frames"] == 2 * RIG.frames and not nodes["depth_node"]["dropped"]


def test_eval_gives_per_camera_and_fused_metrics(replayed, capsys):
    from perception_fm.eval.cli import main

    root, _ = replayed
    assert main([str(root / "out"), "--json", str(root / "metrics.json")]) == 0
    printed = capsys.readouterr().out
    assert "== camera cam0 ==" in printed and "== camera cam1 ==" in printed and "== fused cloud ==" in printed
    result = json.loads((root / "metrics.json").read_text())
    assert sorted(result["cameras"]) == ["cam0", "cam1"]
    for camera in ("cam0", "cam1"):
        rows = {(m["group"], m["name"], m["variant"]): m for m in result["cameras"][camera]["metrics"]}
        absrel = rows[("depth", "AbsRel", "none")]  # ground-truth depth: exact, on every frame
        assert absrel["value"] == pytest.approx(0.0, abs=1e-6) and absrel["frames"] == RIG.frames
        assert any(group == "segmentation" for group, _, _ in rows)  # the camera's instances were evaluated
    fused = {row["name"]: row for row in result["fused"]}
    assert fused["fused AbsRel (median over points)"]["value"] == pytest.approx(0.0, abs=1e-5)
    assert fused["fused points within 0.05 m"]["value"] == pytest.approx(1.0)
    assert fused["fused AbsRel (median over points)"]["frames"] == RIG.frames
