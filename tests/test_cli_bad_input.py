"""Bad input to the command line gets one clear line and exit status 2, never a Python traceback.

Each case here crashed (or misled) before its fix; they run in-process through perception_fm.cli.main with
tiny inputs, so the file stays fast."""
from __future__ import annotations

import numpy as np
import pytest

from perception_fm.cli import main


def run_cli(argv, capsys) -> tuple[int, str]:
    """main(argv)'s exit status and its stderr; argparse's SystemExit counts as the status it carries."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    import cv2

    folder = tmp_path_factory.mktemp("images")
    for index in range(2):
        cv2.imwrite(str(folder / f"{index}.png"), np.full((12, 16, 3), 40 * index, np.uint8))
    return folder


@pytest.mark.parametrize("rate", ["1e-300", "1e308", "inf", "nan", "0", "-1"])
def test_import_images_absurd_rate_is_one_line(rate, image_folder, tmp_path, capsys):
    # 1e-300 Hz overflowed round(index * 1e9 / rate) with a traceback; 1e308 Hz said "stamps must increase".
    code, err = run_cli(["import", "images", image_folder, tmp_path / "out", f"--rate={rate}"], capsys)
    assert code == 2 and "give a rate between" in err
    assert not (tmp_path / "out").exists()


def test_import_frames_infinite_rate_is_one_line(tmp_path, capsys):
    import cv2

    folder = tmp_path / "seq"
    folder.mkdir()
    for index in range(2):
        cv2.imwrite(str(folder / f"frame-{index:06d}.color.png"), np.zeros((12, 16, 3), np.uint8))
        cv2.imwrite(str(folder / f"frame-{index:06d}.depth.png"), np.full((12, 16), 1000, np.uint16))
        np.savetxt(folder / f"frame-{index:06d}.pose.txt", np.eye(4))
    for rate in ("inf", "1e-300"):
        code, err = run_cli(["import", "frames", folder, tmp_path / "out", f"--rate={rate}",
                             "--intrinsics", "10,10,8,6"], capsys)
        assert code == 2 and "give a rate between" in err, err


def test_import_video_explicit_bad_rate_names_the_rate(tmp_path, capsys):
    import cv2

    video = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (16, 12))
    for _ in range(2):
        writer.write(np.zeros((12, 16, 3), np.uint8))
    writer.release()
    # was: "video states no frame rate; give --rate" although --rate had been given
    code, err = run_cli(["import", "video", video, tmp_path / "out", "--rate=0"], capsys)
    assert code == 2 and "rate 0 Hz" in err


@pytest.mark.parametrize("stamp", ["1e12", "99999999999999999999"])
def test_import_tum_stamp_beyond_ros_time_is_one_line(stamp, tmp_path, capsys):
    import cv2

    folder = tmp_path / "rgbd_dataset_freiburg1_xyz"
    (folder / "rgb").mkdir(parents=True)
    (folder / "depth").mkdir()
    cv2.imwrite(str(folder / "rgb" / "a.png"), np.zeros((12, 16, 3), np.uint8))
    cv2.imwrite(str(folder / "depth" / "a.png"), np.full((12, 16), 5000, np.uint16))
    (folder / "rgb.txt").write_text(f"{stamp} rgb/a.png\n")
    (folder / "depth.txt").write_text(f"{stamp} depth/a.png\n")
    (folder / "groundtruth.txt").write_text(f"{stamp} 0 0 0 0 0 0 1\n")
    # was: struct.error / SystemError from builtin_interfaces/Time with a traceback
    code, err = run_cli(["import", "tum", folder, tmp_path / "out", "--intrinsics", "10,10,8,6"], capsys)
    assert code == 2 and "outside what a ROS time holds" in err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def tiny_bag(tmp_path_factory):
    """The synthetic sample, 2 frames of 32x24 (a real bag for the subcommands that read one)."""
    path = tmp_path_factory.mktemp("sample") / "tiny"
    assert main(["sample", str(path), "--frames", "2", "--width", "32", "--height", "24"]) == 0
    return path


def test_batch_out_that_is_a_file_is_one_line(tiny_bag, tmp_path, capsys):
    results = tmp_path / "results"
    results.write_text("not a directory")
    # was: "[Errno 17] File exists: '...'"
    code, err = run_cli(["batch", "config/sample.yaml", "--bags", tiny_bag, "--out", results, "--workers", "1"],
                        capsys)
    assert code == 2 and "is a file; give a results directory" in err


@pytest.mark.parametrize("inside", ["", "results"])
def test_batch_out_inside_the_input_bag_is_refused(inside, tiny_bag, capsys):
    before = sorted(p.name for p in tiny_bag.iterdir())
    # was: results (bags/, index.html, summary.*) written into the recording's own folder
    code, err = run_cli(["batch", "config/sample.yaml", "--bags", tiny_bag, "--out", tiny_bag / inside,
                         "--workers", "1"], capsys)
    assert code == 2 and "is inside the input bag" in err
    assert sorted(p.name for p in tiny_bag.iterdir()) == before


@pytest.mark.parametrize("option, text", [(["--rig", "0"], "rig_cameras must be in"),
                                          (["--rig", "-1"], "rig_cameras must be in"),
                                          (["--baseline", "-1"], "rig_baseline must be positive")])
def test_sample_bad_rig_options_are_refused(option, text, tmp_path, capsys):
    # were: --rig 0 / -1 silently wrote the single-camera sample, --baseline ignored without --rig
    code, err = run_cli(["sample", tmp_path / "s", "--frames", "1", "--width", "8", "--height", "6", *option], capsys)
    assert code == 2 and text in err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("parameters, text", [
    # was accepted by `up --dry-run` / replay's config check; the node's configure then failed at start
    ('cameras: ["cam0", "cam1"], window_size: 3, rig_frame: camera_link',
     "a camera rig with window_size 3 needs known_pose_frame"),
    # was accepted until the ONNX backend was built (and ignored there for non-ONNX models)
    ("onnx_views: garbage", 'onnx_views must be "auto"'),
    ("onnx_views: 4-2", 'onnx_views must be "auto"'),
])
def test_up_dry_run_refuses_depth_values_a_node_would_refuse(parameters, text, tmp_path, capsys):
    config = tmp_path / "graph.yaml"
    config.write_text(f"nodes:\n  depth_node:\n    executable: depth_node\n    parameters: {{{parameters}}}\n")
    code, err = run_cli(["up", config, "--dry-run", "--no-budget"], capsys)
    assert code == 2 and text in err and "node 'depth_node'" in err


def test_up_dry_run_accepts_a_rig_window_with_known_poses(tmp_path, capsys):
    config = tmp_path / "graph.yaml"
    config.write_text("nodes:\n  depth_node:\n    executable: depth_node\n    parameters: {cameras: [cam0, cam1], "
                      "window_size: 3, rig_frame: camera_link, known_pose_frame: odom, onnx_views: 2-4}\n")
    assert run_cli(["up", config, "--dry-run", "--no-budget"], capsys)[0] == 0


def test_eval_rig_camera_without_ground_truth_is_said(tmp_path, capsys):
    from perception_fm.replay.bag_io import BagReader, BagWriter

    sample = tmp_path / "rig"
    assert main(["sample", str(sample), "--rig", "2", "--frames", "2", "--width", "16", "--height", "12"]) == 0
    out = tmp_path / "out"
    with BagReader(sample) as reader, BagWriter(out) as writer:  # perfect predictions; cam1's truth left out
        for item in reader.messages():
            if item.topic.endswith("/depth") and item.topic.startswith("/gt/"):
                camera = item.topic.split("/")[2]
                writer.write(f"/{camera}/color/depth/image", item.message, item.timestamp_ns)
            if item.topic.startswith("/gt/cam1/"):
                continue
            if item.message is None:
                writer.write_raw(item)
            else:
                writer.write(item.topic, item.message, item.timestamp_ns, msgtype=item.msgtype)
    capsys.readouterr()
    # was: cam1 dropped from the evaluation without a word (and the fused cloud scored against cam0 only)
    code, err = run_cli(["eval", out], capsys)
    assert code == 0
    assert "skipped (cam1): not evaluated: its predictions have no ground truth /gt/cam1/depth" in err
    assert "skipped (cam0): not evaluated" not in err


def test_plugins_config_without_memory_is_refused(capsys):
    # was: --config silently ignored and the plain listing printed
    code, err = run_cli(["plugins", "--config", "config/sample.yaml"], capsys)
    assert code == 2 and "plugins --config needs --memory" in err
