"""`perception-fm import`: small datasets written here in each real layout (TUM RGB-D, 7-Scenes, ScanNet export, an
image folder, a video file) become bags whose stamps, frames, units and poses are checked against the source
numbers; the imported TUM bag goes through replay and eval end to end."""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import yaml

from perception_fm.cli import main
from perception_fm.datasets import tum_rgbd
from perception_fm.datasets.bag import (CAMERA_FRAME, CAMERA_INFO_TOPIC, GT_CAMERA_INFO_TOPIC, GT_DEPTH_TOPIC,
                                        GT_POSE_TOPIC, IMAGE_TOPIC, WORLD_FRAME)
from perception_fm.replay.bag_io import BagReader
from perception_fm.replay.synthetic import TOPICS
from perception_fm.ros.image_codec import image_to_numpy
from perception_fm.ros.tf import pose_to_matrix, stamp_to_ns

W, H = 32, 24
TW, TH = 640, 480  # TUM's Kinect images: its published calibrations are for this size
RNG = np.random.default_rng(7)


def read_bag(path):
    """{topic: [(log time, message)]} and {topic: type}."""
    out = {}
    with BagReader(path) as reader:
        types = reader.topics
        for item in reader.messages():
            out.setdefault(item.topic, []).append((item.timestamp_ns, item.message))
    return out, types


def colour(k, w=W, h=H):
    image = np.zeros((h, w, 3), np.uint8)
    image[:, :, 0] = (np.arange(w)[None, :] * 7 + k * 20) % 256  # a ramp moving with k: texture for DA3
    image[:, :, 1] = (np.arange(h)[:, None] * 9) % 256
    image[:, :, 2] = (k * 37) % 255
    return image


# -- TUM RGB-D ----------------------------------------------------------------------------------------------

RGB_T = ["1305031102.175304", "1305031102.211214", "1305031102.243211", "1305031102.275326", "1305031102.311267",
         "1305031102.343300", "1305031103.500000"]  # the last has no depth within 0.02 s
DEPTH_T = ["1305031102.171191", "1305031102.217235", "1305031102.240204", "1305031102.283476",
           "1305031102.306265", "1305031102.345611"]  # each 2-8 ms from its colour image, as the Kinect's


def gt_line(t: float) -> list[float]:
    angle = 0.3 * (t - 1305031102.0)
    q = np.array([0.1, -0.2, math.sin(angle / 2), math.cos(angle / 2)])
    q /= np.linalg.norm(q)
    if t > 1305031102.3:
        q = -q  # the same rotation; the importer keeps the sign it was given
    return [1.0 + 0.5 * (t - 1305031102.0), -0.3 * (t - 1305031102.0), 1.4, *q]


def write_tum(folder, rgb_t=RGB_T, depth_t=DEPTH_T, damaged: int | None = None):
    (folder / "rgb").mkdir(parents=True)
    (folder / "depth").mkdir()
    depths = {}
    for k, t in enumerate(rgb_t):
        cv2.imwrite(str(folder / "rgb" / f"{t}.png"), colour(k, TW, TH)[:, :, ::-1])
    for k, t in enumerate(depth_t):
        depth = RNG.integers(2500, 20000, (TH, TW)).astype(np.uint16)
        depth[0, :3] = 0  # no data
        cv2.imwrite(str(folder / "depth" / f"{t}.png"), depth)
        depths[t] = depth
    if damaged is not None:
        (folder / "rgb" / f"{rgb_t[damaged]}.png").write_bytes(b"not a png")
    header = "# timestamp filename\n# a comment\n"
    (folder / "rgb.txt").write_text(header + "".join(f"{t} rgb/{t}.png\n" for t in rgb_t))
    (folder / "depth.txt").write_text(header + "".join(f"{t} depth/{t}.png\n" for t in depth_t))
    gt_t = [1305031102.17 + 0.01 * i for i in range(20)]  # 100 Hz, as the motion capture
    gt = {f"{t:.4f}": gt_line(float(f"{t:.4f}")) for t in gt_t}
    (folder / "groundtruth.txt").write_text("# timestamp tx ty tz qx qy qz qw\n" + "".join(
        f"{t} " + " ".join(f"{v:.6f}" for v in values) + "\n" for t, values in gt.items()))
    return depths, gt


@pytest.fixture(scope="module")
def tum(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tum") / "rgbd_dataset_freiburg1_tiny"
    depths, gt = write_tum(folder)
    out = folder.parent / "tum_bag"
    assert main(["import", "tum", str(folder), str(out)]) == 0
    return folder, depths, gt, out


def test_associate_is_greedy_by_smallest_difference_and_unique():
    # 0.009 is closer to 0.01 than to 0: the pair (1, 0) is taken first and 0 stays alone
    assert tum_rgbd.associate(np.array([0.0, 0.01]), np.array([0.009])) == [(1, 0)]
    assert tum_rgbd.associate(np.array([0.0, 1.0]), np.array([0.03, 0.995])) == [(1, 1)]  # 0.03 >= 0.02
    assert tum_rgbd.associate(np.array([0.0, 1.0]), np.array([0.03, 0.995]), 0.05) == [(0, 0), (1, 1)]
    assert tum_rgbd.associate(np.array([0.0]), np.array([0.1]), 0.02, offset=-0.095) == [(0, 0)]


def test_tum_import_stamps_frames_units_and_poses(tum, capsys):
    folder, depths, gt, out = tum
    bag, types = read_bag(out)
    assert types[IMAGE_TOPIC] == "sensor_msgs/msg/Image" and types[GT_POSE_TOPIC] == "geometry_msgs/msg/PoseStamped"
    assert IMAGE_TOPIC == TOPICS["image"] and CAMERA_INFO_TOPIC == TOPICS["camera_info"]  # what the sample uses
    assert GT_DEPTH_TOPIC == TOPICS["depth"] and GT_POSE_TOPIC == TOPICS["camera_pose"]  # what eval reads
    expected_stamps = [int(t.replace(".", "")) * 1000 for t in RGB_T[:6]]  # exact ns of the listed seconds
    for topic in (IMAGE_TOPIC, CAMERA_INFO_TOPIC, GT_DEPTH_TOPIC, GT_CAMERA_INFO_TOPIC, GT_POSE_TOPIC):
        assert [t for t, _ in bag[topic]] == expected_stamps, topic  # log time = the colour image's stamp
        assert [stamp_to_ns(m.header.stamp) for _, m in bag[topic]] == expected_stamps, topic
    for topic in (IMAGE_TOPIC, CAMERA_INFO_TOPIC, GT_DEPTH_TOPIC, GT_CAMERA_INFO_TOPIC):
        assert {m.header.frame_id for _, m in bag[topic]} == {CAMERA_FRAME} == {"camera_color_optical_frame"}
    assert {m.header.frame_id for _, m in bag[GT_POSE_TOPIC]} == {WORLD_FRAME}
    for k, (_, image) in enumerate(bag[IMAGE_TOPIC]):
        assert image.encoding == "rgb8"
        np.testing.assert_array_equal(image_to_numpy(image), colour(k, TW, TH))
    info = bag[CAMERA_INFO_TOPIC][0][1]
    np.testing.assert_allclose(np.reshape(info.k, (3, 3)), [[517.3, 0, 318.6], [0, 516.5, 255.3], [0, 0, 1]])
    np.testing.assert_allclose(info.d, [0.2624, -0.9531, -0.0054, 0.0026, 1.1633])
    assert (info.width, info.height) == (TW, TH)
    # depth: nearest depth image within 0.02 s of each colour image, uint16 / 5000 = metres, 0 -> NaN
    pairs = [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]
    for (i, j), (_, depth) in zip(pairs, bag[GT_DEPTH_TOPIC]):
        assert depth.encoding == "32FC1"
        metres = image_to_numpy(depth)
        raw = depths[DEPTH_T[j]]
        assert np.isnan(metres[0, :3]).all()
        np.testing.assert_allclose(metres[raw > 0], raw[raw > 0].astype(np.float64) / 5000.0, rtol=1e-6)
    # poses: the ground-truth line nearest each colour stamp, numbers as written (translation, quaternion)
    gt_times = np.array([float(t) for t in gt])
    for stamp_text, (_, pose) in zip(RGB_T, bag[GT_POSE_TOPIC]):
        nearest = list(gt)[int(np.argmin(np.abs(gt_times - float(stamp_text))))]
        tx, ty, tz, qx, qy, qz, qw = (float(f"{v:.6f}") for v in gt[nearest])
        p, q = pose.pose.position, pose.pose.orientation
        np.testing.assert_allclose([p.x, p.y, p.z], [tx, ty, tz], atol=1e-12)
        np.testing.assert_allclose([q.x, q.y, q.z, q.w], np.array([qx, qy, qz, qw]) /
                                   np.linalg.norm([qx, qy, qz, qw]), atol=1e-12)
    assert bag[GT_POSE_TOPIC][-1][1].pose.orientation.w < 0  # sign kept


def test_tum_summary_counts_what_it_skipped(tmp_path, capsys):
    folder = tmp_path / "rgbd_dataset_freiburg3_long_office"
    write_tum(folder, damaged=2)
    out = tmp_path / "bag"
    assert main(["import", "tum", str(folder), str(out)]) == 0
    printed = capsys.readouterr()
    assert "imported 5 frames (5 with depth, 5 with pose)" in printed.out
    assert "1 no_depth_within_tolerance" in printed.out and "1 unreadable_image" in printed.out
    assert "TUM's published fr3 calibration" in printed.out
    bag, _ = read_bag(out)
    assert len(bag[IMAGE_TOPIC]) == 5
    np.testing.assert_allclose(np.reshape(bag[CAMERA_INFO_TOPIC][0][1].k, (3, 3))[0], [535.4, 0, 320.1])


@pytest.mark.parametrize("damage, message", [
    ("no_groundtruth", "groundtruth.txt' does not exist"),
    ("non_monotonic", "does not increase"),
    ("no_association", "has a depth image within 0.02 s"),
    ("malformed", "malformed"),
    ("unknown_camera", "--camera fr1|fr2|fr3"),
])
def test_tum_bad_input_is_a_one_line_error(tmp_path, capsys, damage, message):
    folder = tmp_path / ("my_sequence" if damage == "unknown_camera" else "rgbd_dataset_freiburg2_desk")
    depth_t = [f"{float(t) + 5:.6f}" for t in DEPTH_T] if damage == "no_association" else DEPTH_T
    write_tum(folder, depth_t=depth_t)
    if damage == "no_groundtruth":
        (folder / "groundtruth.txt").unlink()
    elif damage == "non_monotonic":
        lines = (folder / "rgb.txt").read_text().splitlines()
        lines[3], lines[4] = lines[4], lines[3]
        (folder / "rgb.txt").write_text("\n".join(lines) + "\n")
    elif damage == "malformed":
        with open(folder / "groundtruth.txt", "a") as stream:
            stream.write("1305031109.0 1 2 three 0 0 0 1\n")
    out = tmp_path / "bag"
    assert main(["import", "tum", str(folder), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("perception-fm: error:")
    assert not out.exists() and not list(tmp_path.glob(".bag*"))  # nothing half-written left


def test_an_existing_output_is_not_overwritten_unless_asked(tum, tmp_path, capsys):
    folder, _, _, _ = tum
    out = tmp_path / "bag"
    out.mkdir()
    assert main(["import", "tum", str(folder), str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["import", "tum", str(folder), str(out), "--overwrite"]) == 0
    assert len(read_bag(out)[0][IMAGE_TOPIC]) == 6


def test_imported_tum_bag_replays_and_evaluates(tum, tmp_path, da3_small_checkpoint, capsys):
    _, _, _, bag = tum
    config = tmp_path / "graph.yaml"
    config.write_text(yaml.safe_dump({"nodes": {"depth_node": {
        "executable": "depth_node",
        "remappings": {"image": IMAGE_TOPIC, "camera_info": CAMERA_INFO_TOPIC},
        "parameters": {"weights": str(da3_small_checkpoint), "process_res": 56, "window_size": 3,
                       "keyframe_every": 1, "estimated_frame": "da3_camera"}}}}))
    out = tmp_path / "out"
    assert main(["replay", str(bag), "--config", str(config), "--out", str(out), "--quiet"]) == 0
    numbers = tmp_path / "metrics.json"
    assert main(["eval", str(out), "--json", str(numbers), "--report", str(tmp_path / "report.html")]) == 0
    result = json.loads(numbers.read_text())
    rows = result["metrics"]
    groups = {row["group"] for row in rows}
    assert {"depth", "trajectory"} <= groups, (groups, result.get("skipped"))
    depth_frames = max(row["frames"] for row in rows if row["group"] == "depth")
    trajectory_frames = max(row["frames"] for row in rows if row["group"] == "trajectory")
    assert depth_frames == 6 and trajectory_frames == 6  # every imported frame paired with its ground truth


# -- 7-Scenes and ScanNet -----------------------------------------------------------------------------------

def rigid(k):
    angle = 0.2 * k
    matrix = np.eye(4)
    matrix[:3, :3] = [[math.cos(angle), 0, math.sin(angle)], [0, 1, 0], [-math.sin(angle), 0, math.cos(angle)]]
    matrix[:3, 3] = [0.1 * k, -0.05 * k, 0.3]
    return matrix


def test_seven_scenes_import(tmp_path):
    folder = tmp_path / "seq-01"
    folder.mkdir()
    depths = []
    for k in range(3):  # 640x480: the published calibration is for the Kinect's full size
        cv2.imwrite(str(folder / f"frame-{k:06d}.color.png"), colour(k, TW, TH)[:, :, ::-1])
        depth = RNG.integers(400, 4000, (TH, TW)).astype(np.uint16)
        depth[1, 1], depth[2, 2] = 65535, 0  # both mean no data in 7-Scenes
        cv2.imwrite(str(folder / f"frame-{k:06d}.depth.png"), depth)
        depths.append(depth)
        np.savetxt(folder / f"frame-{k:06d}.pose.txt", rigid(k), fmt="%.9e", delimiter="\t")
    out = tmp_path / "bag"
    assert main(["import", "frames", str(folder), str(out), "--rate", "30"]) == 0
    bag, _ = read_bag(out)
    stamps = [stamp_to_ns(m.header.stamp) for _, m in bag[IMAGE_TOPIC]]
    assert np.allclose(np.diff(stamps), 1e9 / 30, atol=1) and [t for t, _ in bag[GT_DEPTH_TOPIC]] == stamps
    np.testing.assert_allclose(np.reshape(bag[CAMERA_INFO_TOPIC][0][1].k, (3, 3)),
                               [[585, 0, 320], [0, 585, 240], [0, 0, 1]])
    for k, ((_, depth), (_, pose)) in enumerate(zip(bag[GT_DEPTH_TOPIC], bag[GT_POSE_TOPIC])):
        metres = image_to_numpy(depth)
        assert np.isnan(metres[1, 1]) and np.isnan(metres[2, 2])
        valid = (depths[k] > 0) & (depths[k] < 65535)
        np.testing.assert_allclose(metres[valid], depths[k][valid] / 1000.0, rtol=1e-6)  # millimetres
        assert pose.header.frame_id == WORLD_FRAME
        np.testing.assert_allclose(pose_to_matrix(pose.pose), rigid(k), atol=1e-9)  # camera-to-world as given


def test_scannet_import_keeps_depth_size_and_its_intrinsics(tmp_path, capsys):
    folder = tmp_path / "scene0000_00"
    for sub in ("color", "depth", "pose", "intrinsic"):
        (folder / sub).mkdir(parents=True)
    for k in range(3):
        cv2.imwrite(str(folder / "color" / f"{k}.jpg"), colour(k)[:, :, ::-1])
        cv2.imwrite(str(folder / "depth" / f"{k}.png"), np.full((H // 2, W // 2), 1500 + k, np.uint16))
        pose = rigid(k) if k != 1 else np.full((4, 4), -np.inf)  # ScanNet marks lost tracking with -inf
        np.savetxt(folder / "pose" / f"{k}.txt", pose)
    k_colour = np.array([[30.0, 0, 15.5, 0], [0, 30.0, 11.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    np.savetxt(folder / "intrinsic" / "intrinsic_color.txt", k_colour)
    np.savetxt(folder / "intrinsic" / "intrinsic_depth.txt", np.diag([15.0, 15.0, 1, 1]) + np.array(
        [[0, 0, 7.5, 0], [0, 0, 5.5, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))
    out = tmp_path / "bag"
    assert main(["import", "frames", str(folder), str(out)]) == 0
    assert "imported 3 frames (3 with depth, 2 with pose)" in capsys.readouterr().out
    bag, _ = read_bag(out)
    info = bag[GT_CAMERA_INFO_TOPIC][0][1]
    assert (info.width, info.height) == (W // 2, H // 2)
    np.testing.assert_allclose(np.reshape(info.k, (3, 3))[:2], [[15, 0, 7.5], [0, 15, 5.5]])
    np.testing.assert_allclose(np.reshape(bag[CAMERA_INFO_TOPIC][0][1].k, (3, 3))[0], [30, 0, 15.5])
    np.testing.assert_allclose(image_to_numpy(bag[GT_DEPTH_TOPIC][2][1]), 1.502, rtol=1e-6)
    pose_stamps = [t for t, _ in bag[GT_POSE_TOPIC]]
    image_stamps = [t for t, _ in bag[IMAGE_TOPIC]]
    assert pose_stamps == [image_stamps[0], image_stamps[2]]


def test_frames_bad_input(tmp_path, capsys):
    assert main(["import", "frames", str(tmp_path), str(tmp_path / "bag")]) == 2
    assert "neither a 7-Scenes sequence" in capsys.readouterr().err
    folder = tmp_path / "seq"
    folder.mkdir()
    for k in range(3):
        size = (H, W) if k != 1 else (H + 2, W)
        cv2.imwrite(str(folder / f"frame-{k:06d}.color.png"), np.zeros(size + (3,), np.uint8))
        cv2.imwrite(str(folder / f"frame-{k:06d}.depth.png"), np.full(size, 1000, np.uint16))
        np.savetxt(folder / f"frame-{k:06d}.pose.txt", np.eye(4))
    (folder / "frame-000002.depth.png").write_bytes(b"\x89PNG broken")
    assert main(["import", "frames", str(folder), str(tmp_path / "bag"), "--intrinsics", "30,30,15.5,11.5"]) == 0
    assert "imported 1 frames" in capsys.readouterr().out  # one size mismatch, one unreadable depth: counted
    assert main(["import", "frames", str(folder), str(tmp_path / "bag2"), "--intrinsics", "1,2"]) == 2


# -- images and video ---------------------------------------------------------------------------------------

def test_image_folder_in_natural_order_at_the_given_rate(tmp_path, capsys):
    folder = tmp_path / "shots"
    folder.mkdir()
    for k in (1, 2, 10):
        cv2.imwrite(str(folder / f"img{k}.png"), colour(k)[:, :, ::-1])
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "bag"
    assert main(["import", "images", str(folder), str(out), "--rate", "4", "--fov", "90"]) == 0
    bag, _ = read_bag(out)
    for index, (k, (_, image)) in enumerate(zip((1, 2, 10), bag[IMAGE_TOPIC])):
        np.testing.assert_array_equal(image_to_numpy(image), colour(k))
        assert stamp_to_ns(image.header.stamp) - stamp_to_ns(bag[IMAGE_TOPIC][0][1].header.stamp) == index * 250_000_000
    np.testing.assert_allclose(np.reshape(bag[CAMERA_INFO_TOPIC][0][1].k, (3, 3))[0], [W / 2, 0, (W - 1) / 2])
    assert not any(topic.startswith("/gt/") for topic in bag)
    assert main(["import", "images", str(tmp_path / "missing"), str(tmp_path / "b2")]) == 2


def test_video_file_at_its_own_rate(tmp_path, capsys):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (W, H))
    assert writer.isOpened()
    for k in range(3):
        writer.write(np.ascontiguousarray(colour(k)[:, :, ::-1]))
    writer.release()
    out = tmp_path / "bag"
    assert main(["import", "video", str(path), str(out)]) == 0
    bag, _ = read_bag(out)
    stamps = [t for t, _ in bag[IMAGE_TOPIC]]
    assert len(stamps) == 3 and np.diff(stamps).tolist() == [200_000_000, 200_000_000]
    first = image_to_numpy(bag[IMAGE_TOPIC][0][1]).astype(int)
    assert np.abs(first - colour(0)).mean() < 12  # JPEG-compressed, same picture, RGB order
    assert CAMERA_INFO_TOPIC not in bag  # no intrinsics given
    (tmp_path / "fake.mp4").write_bytes(b"no video here")
    assert main(["import", "video", str(tmp_path / "fake.mp4"), str(tmp_path / "b2")]) == 2
    assert "cannot be opened" in capsys.readouterr().err
