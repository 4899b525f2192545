"""The synthetic RGB-D sample: ground-truth consistency, determinism, and the rosbag2 bag written from it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from perception_fm.replay import synthetic as syn
from perception_fm.replay.synthetic import (
    SampleConfig,
    camera_link_to_world,
    camera_to_world,
    instance_labels,
    intrinsics,
    moving_instance_ids,
    object_poses,
    render_frame,
    render_sequence,
    stamp_ns,
    write_sample_bag,
)

SMALL = SampleConfig(width=64, height=48, frames=5)
GEOM = SampleConfig(width=96, height=72, frames=12)


@pytest.fixture(scope="module")
def geom_frames():
    return list(render_sequence(GEOM))


def _quat_to_matrix(x, y, z, w):
    n = np.sqrt(x * x + y * y + z * z + w * w)
    x, y, z, w = x / n, y / n, z / n, w / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _matrix(translation, quaternion):
    m = np.eye(4)
    m[:3, :3] = _quat_to_matrix(quaternion.x, quaternion.y, quaternion.z, quaternion.w)
    m[:3, 3] = (translation.x, translation.y, translation.z)
    return m


def _bilinear(image, u, v):
    """Bilinear sample of (H, W[, C]) at float pixel coordinates (pixel centres at integers)."""
    u0 = np.floor(u).astype(int)
    v0 = np.floor(v).astype(int)
    fu, fv = u - u0, v - v0
    if image.ndim == 3:
        fu, fv = fu[:, None], fv[:, None]
    img = image.astype(np.float64)
    return (
        img[v0, u0] * (1 - fu) * (1 - fv)
        + img[v0, u0 + 1] * fu * (1 - fv)
        + img[v0 + 1, u0] * (1 - fu) * fv
        + img[v0 + 1, u0 + 1] * fu * fv
    )


def _reproject(fa, fb):
    """Static pixels of frame a that are visible in frame b: predicted and observed depth / colour in b."""
    h, w = fa.depth.shape
    K = fa.K
    v, u = np.mgrid[0:h, 0:w]
    z = fa.depth.astype(np.float64)
    cam = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], axis=-1).reshape(-1, 3)
    world = cam @ fa.camera_to_world[:3, :3].T + fa.camera_to_world[:3, 3]
    w2b = np.linalg.inv(fb.camera_to_world)
    pb = world @ w2b[:3, :3].T + w2b[:3, 3]
    zb = pb[:, 2]
    ub = K[0, 0] * pb[:, 0] / zb + K[0, 2]
    vb = K[1, 1] * pb[:, 1] / zb + K[1, 2]
    inside = (zb > 0) & (ub >= 0) & (ub <= w - 1.001) & (vb >= 0) & (vb <= h - 1.001)
    moving = np.isin(fa.instances.reshape(-1), list(moving_instance_ids()))
    keep = np.flatnonzero(inside & ~moving)
    ub, vb, zb = ub[keep], vb[keep], zb[keep]
    u0, v0 = np.floor(ub).astype(int), np.floor(vb).astype(int)
    inst_a = fa.instances.reshape(-1)[keep]
    # all four neighbours in b show the same (static) instance as the pixel in a ...
    same = np.ones(len(keep), bool)
    for du in (0, 1):
        for dv in (0, 1):
            same &= fb.instances[v0 + dv, u0 + du] == inst_a
    # ... and the point is not hidden behind something else (z-buffer, loose tolerance)
    nearest = fb.depth[np.round(vb).astype(int), np.round(ub).astype(int)]
    visible = same & (np.abs(nearest - zb) < 0.05 * zb)
    # ... on one plane: inverse depth is affine in the pixel coordinates on a plane, so its bilinear "twist"
    # vanishes (cells across a fold, e.g. a room corner or a box edge, are left out)
    inv = 1.0 / fb.depth.astype(np.float64)
    twist = inv[v0, u0] - inv[v0, u0 + 1] - inv[v0 + 1, u0] + inv[v0 + 1, u0 + 1]
    visible &= np.abs(twist) < 1e-4 * inv[v0, u0]
    sel = np.flatnonzero(visible)
    observed = 1.0 / _bilinear(1.0 / fb.depth, ub[sel], vb[sel])
    rgb_b = _bilinear(fb.rgb, ub[sel], vb[sel])
    rgb_a = fa.rgb.reshape(-1, 3)[keep[sel]].astype(np.float64)
    # where the texture is locally smooth in a (3x3 range), resampling in b cannot change the colour much
    padded = np.pad(fa.rgb.astype(np.int16), ((1, 1), (1, 1), (0, 0)), mode="edge")
    windows = np.stack([padded[dv:dv + h, du:du + w] for dv in range(3) for du in range(3)])
    smooth = (windows.max(axis=0) - windows.min(axis=0)).max(axis=-1).reshape(-1)[keep[sel]] < 24
    return zb[sel], observed, rgb_a, rgb_b, smooth


@pytest.mark.parametrize("a,b", [(0, 3), (2, 9), (11, 5)])
def test_ground_truth_is_geometrically_consistent(geom_frames, a, b):
    predicted, observed, rgb_a, rgb_b, smooth = _reproject(geom_frames[a], geom_frames[b])
    n_pixels = GEOM.width * GEOM.height
    assert len(predicted) > 0.3 * n_pixels  # enough overlap for the test to mean something
    rel = np.abs(predicted - observed) / observed
    assert np.median(rel) < 1e-5
    assert np.mean(rel < 1e-3) > 0.995
    # colour is view-independent: same surface point, same colour (up to resampling at texture edges)
    diff = np.abs(rgb_a - rgb_b).max(axis=1)
    assert np.median(diff) < 4
    assert smooth.sum() > 0.1 * len(smooth)
    assert np.median(diff[smooth]) < 2
    assert np.mean(diff[smooth] < 8) > 0.97


def test_reprojection_check_detects_a_wrong_pose(geom_frames):
    """The consistency checks above fail when the ground-truth pose is off by a little."""
    fa, fb = geom_frames[0], geom_frames[3]
    forward = fb.camera_to_world.copy()
    forward[:3, 3] += 0.03 * forward[:3, 2]  # 3 cm along the optical axis
    wrong = syn.Frame(fb.index, fb.stamp_ns, fb.rgb, fb.depth, fb.instances, fb.K, forward)
    predicted, observed, _, _, _ = _reproject(fa, wrong)
    assert np.mean(np.abs(predicted - observed) / observed < 1e-3) < 0.5
    turned = fb.camera_to_world.copy()
    turned[:3, :3] = turned[:3, :3] @ syn._rot_y(np.radians(1.5))  # 1.5 degrees of pan, ~2.5 px here
    wrong = syn.Frame(fb.index, fb.stamp_ns, fb.rgb, fb.depth, fb.instances, fb.K, turned)
    _, _, rgb_a, rgb_b, smooth = _reproject(fa, wrong)
    diff = np.abs(rgb_a - rgb_b).max(axis=1)
    assert np.mean(diff[smooth] < 8) < 0.9


def test_depth_instances_and_intrinsics(geom_frames):
    K = intrinsics(GEOM)
    assert K[0, 2] == (GEOM.width - 1) / 2 and K[1, 2] == (GEOM.height - 1) / 2
    assert np.isclose(2 * np.degrees(np.arctan(GEOM.width / 2 / K[0, 0])), GEOM.fov_deg)
    labels = instance_labels(GEOM)
    assert labels[1] == "red ball" and 0 not in labels
    seen = set()
    for f in geom_frames:
        assert f.rgb.shape == (GEOM.height, GEOM.width, 3) and f.rgb.dtype == np.uint8
        assert f.depth.shape == (GEOM.height, GEOM.width) and f.depth.dtype == np.float32
        assert f.instances.dtype == np.uint16
        assert np.all(np.isfinite(f.depth)) and f.depth.min() > 0.1 and f.depth.max() < 10
        assert set(np.unique(f.instances)) <= {0, *labels}
        assert (f.instances == 0).mean() > 0.3  # the room is visible around the objects
        assert f.rgb.std() > 20  # textured, not flat
        seen |= set(np.unique(f.instances).tolist())
        assert np.array_equal(f.camera_to_world, camera_to_world(GEOM, f.index))
        rot = f.camera_to_world[:3, :3]
        assert np.allclose(rot @ rot.T, np.eye(3), atol=1e-12) and np.isclose(np.linalg.det(rot), 1)
    assert moving_instance_ids() <= seen
    assert len(moving_instance_ids()) >= 2


def test_optical_frame_conventions():
    c2w = camera_to_world(SMALL, 0)
    link = camera_link_to_world(SMALL, 0)
    # optical z (forward) is camera_link x; optical y (down) is camera_link -z
    assert np.allclose(c2w[:3, 2], link[:3, 0])
    assert np.allclose(c2w[:3, 1], -link[:3, 2])
    # the camera looks slightly down and is upright: image "down" points mostly to world -z
    assert c2w[2, 2] < 0 and c2w[2, 1] < -0.9
    # pixel below the centre sees something closer than the pixel above it (floor vs far wall)
    f = render_frame(SMALL, 0)
    assert f.depth[-1, SMALL.width // 2] < f.depth[0, SMALL.width // 2]


def test_camera_moves_and_turns():
    """The tour: a loop and a bit, turning, changing speed and height (a trivial trajectory cannot follow it;
    tests/test_eval_baselines.py measures by how much)."""
    config = SampleConfig(width=32, height=24)
    poses = [camera_link_to_world(config, i) for i in range(config.frames)]
    positions = np.array([p[:3, 3] for p in poses])
    steps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    assert 5.0 < steps.sum() < 7.0
    assert steps.max() < 3 * steps.mean()  # smooth
    assert steps.max() > 2.5 * steps.min()  # but not at one speed
    assert np.ptp(positions[:, 2]) > 0.4  # up and down
    yaws = np.degrees([np.arctan2(p[1, 0], p[0, 0]) for p in poses])
    assert 60 <= yaws.max() - yaws.min() <= 100
    # a loop: the direction of travel turns all the way round, and the path comes back past its start
    heading = np.unwrap(np.arctan2(np.diff(positions[:, 1]), np.diff(positions[:, 0])))
    assert np.degrees(heading[-1] - heading[0]) > 360
    later = positions[config.frames // 2:, :2]
    assert np.min(np.linalg.norm(later - positions[0, :2], axis=1)) < 0.15
    centred = positions - positions.mean(axis=0)
    singular = np.linalg.svd(centred, compute_uv=False)
    assert singular[1] > 0.5 * singular[0]  # far from a line
    inside = (positions > syn.ROOM_MIN + 0.3) & (positions < syn.ROOM_MAX - 0.3)
    assert inside.all()
    # frame 0 is where the earlier walk started (tests elsewhere rely on what it shows)
    np.testing.assert_allclose(poses[0][:3, 3], [-2.1, -0.7, 1.25], atol=1e-12)
    still = SampleConfig(width=32, height=24, camera_motion=0.0)
    assert all(np.array_equal(camera_link_to_world(still, i), poses[0]) for i in range(0, config.frames, 7))


def test_moving_objects_move_and_static_ones_do_not(geom_frames):
    first, last = geom_frames[0], geom_frames[-1]
    for iid, pose in first.object_to_world.items():
        moved = np.linalg.norm(last.object_to_world[iid][:3, 3] - pose[:3, 3])
        if iid in moving_instance_ids():
            assert moved > 0.3
        else:
            assert moved == 0 and np.array_equal(last.object_to_world[iid], pose)

    # measured from the rendered ground truth itself: the visible surface of each moving object moves
    def centroid(frame, iid):
        mask = frame.instances == iid
        v, u = np.nonzero(mask)
        z = frame.depth[mask].astype(np.float64)
        K = frame.K
        cam = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], axis=-1)
        return (cam @ frame.camera_to_world[:3, :3].T + frame.camera_to_world[:3, 3]).mean(axis=0)

    for iid in moving_instance_ids():
        frames = [f for f in geom_frames if (f.instances == iid).sum() > 10]
        assert len(frames) >= 2
        assert np.linalg.norm(centroid(frames[0], iid) - centroid(frames[-1], iid)) > 0.2
    # a static object's visible surface stays put (up to which side of it is seen)
    frames = [f for f in geom_frames if (f.instances == 4).sum() > 10]
    assert np.linalg.norm(centroid(frames[0], 4) - centroid(frames[-1], 4)) < 0.15


def test_rolling_ball_rolls_without_slipping():
    config = SampleConfig(frames=11)
    p0, p1 = object_poses(config, 4)[1], object_poses(config, 5)[1]
    distance = np.linalg.norm(p1[:3, 3] - p0[:3, 3])
    relative = p1[:3, :3] @ p0[:3, :3].T
    angle = np.arccos(np.clip((np.trace(relative) - 1) / 2, -1, 1))
    assert np.isclose(angle, distance / 0.15)
    assert np.isclose(p0[2, 3], 0.15)  # resting on the floor


def test_rendering_is_deterministic_and_seed_changes_only_appearance():
    a = render_frame(SMALL, 2)
    b = render_frame(SMALL, 2)
    for field in ("rgb", "depth", "instances", "K", "camera_to_world"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    other = render_frame(SampleConfig(width=64, height=48, frames=5, seed=7), 2)
    assert np.array_equal(a.depth, other.depth)
    assert np.array_equal(a.instances, other.instances)
    assert np.array_equal(a.camera_to_world, other.camera_to_world)
    room = a.instances == 0
    assert np.abs(a.rgb[room].astype(int) - other.rgb[room]).mean() > 3
    # the objects keep their colour (their concept names name it): the red ball stays red
    ball = other.instances == 1
    if ball.any():
        r, g, b_ = other.rgb[ball].astype(float).mean(axis=0)
        assert r > 2 * g and r > 2 * b_


def test_stamps_follow_rate():
    config = SampleConfig(rate_hz=15.0, start_ns=123)
    assert stamp_ns(config, 0) == 123
    assert stamp_ns(config, 3) == 123 + 200_000_000
    with pytest.raises(IndexError):
        render_frame(SMALL, SMALL.frames)


# -- bag -----------------------------------------------------------------------------------------------------

def _read_bag(path):
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    messages = {}
    with Reader(path) as reader:
        connections = {c.topic: c for c in reader.connections}
        for conn, timestamp, raw in reader.messages():
            msg = store.deserialize_cdr(raw, conn.msgtype)
            messages.setdefault(conn.topic, []).append((timestamp, msg))
    return connections, messages


def _stamp(header):
    return header.stamp.sec * 10**9 + header.stamp.nanosec


def test_bag_contents(tmp_path):
    config = SMALL
    summary = write_sample_bag(tmp_path / "bag", config)
    connections, messages = _read_bag(tmp_path / "bag")
    expected_types = {
        "/camera/color/image_raw": "sensor_msgs/msg/Image",
        "/camera/color/camera_info": "sensor_msgs/msg/CameraInfo",
        "/gt/depth": "sensor_msgs/msg/Image",
        "/gt/instances": "sensor_msgs/msg/Image",
        "/gt/camera_pose": "geometry_msgs/msg/PoseStamped",
        "/gt/instance_labels": "std_msgs/msg/String",
        "/tf": "tf2_msgs/msg/TFMessage",
        "/tf_static": "tf2_msgs/msg/TFMessage",
    }
    assert {t: c.msgtype for t, c in connections.items()} == expected_types
    counts = {t: len(m) for t, m in messages.items()}
    n = config.frames
    assert counts == {**{t: n for t in expected_types}, "/gt/instance_labels": 1, "/tf_static": 1}
    assert summary["topics"] == counts
    assert summary["duration_ns"] == stamp_ns(config, n - 1) - stamp_ns(config, 0)
    assert summary["duration_s"] == pytest.approx((n - 1) / config.rate_hz)
    durability = connections["/tf_static"].ext.offered_qos_profiles[0].durability
    assert durability.name == "TRANSIENT_LOCAL"

    expected_stamps = [config.start_ns + round(i * 1e9 / config.rate_hz) for i in range(n)]
    for topic in ("/camera/color/image_raw", "/camera/color/camera_info", "/gt/depth", "/gt/instances",
                  "/gt/camera_pose", "/tf"):
        log_times = [t for t, _ in messages[topic]]
        assert log_times == expected_stamps, topic
        headers = [m.transforms[0].header if topic == "/tf" else m.header for _, m in messages[topic]]
        assert [_stamp(h) for h in headers] == expected_stamps, topic
    assert np.allclose(np.diff(expected_stamps), 1e9 / config.rate_hz)

    labels = json.loads(messages["/gt/instance_labels"][0][1].data)
    assert {int(k): v for k, v in labels.items()} == instance_labels(config)

    (_, static_msg), = messages["/tf_static"]
    (static,) = static_msg.transforms
    assert (static.header.frame_id, static.child_frame_id) == ("camera_link", config.camera_frame)
    t_link_optical = _matrix(static.transform.translation, static.transform.rotation)
    assert np.allclose(t_link_optical, syn.T_LINK_OPTICAL, atol=1e-15)

    frames = list(render_sequence(config))
    for i, frame in enumerate(frames):
        image = messages["/camera/color/image_raw"][i][1]
        assert (image.encoding, image.height, image.width, image.step) == ("rgb8", 48, 64, 64 * 3)
        assert image.header.frame_id == config.camera_frame
        assert bytes(image.data) == frame.rgb.tobytes()

        depth = messages["/gt/depth"][i][1]
        assert (depth.encoding, depth.step, depth.is_bigendian) == ("32FC1", 64 * 4, 0)
        assert np.array_equal(np.frombuffer(bytes(depth.data), "<f4").reshape(48, 64), frame.depth)
        inst = messages["/gt/instances"][i][1]
        assert (inst.encoding, inst.step) == ("16UC1", 64 * 2)
        assert np.array_equal(np.frombuffer(bytes(inst.data), "<u2").reshape(48, 64), frame.instances)

        info = messages["/camera/color/camera_info"][i][1]
        assert (info.width, info.height, info.distortion_model) == (64, 48, "plumb_bob")
        assert np.array_equal(np.asarray(info.k).reshape(3, 3), frame.K)
        assert np.array_equal(np.asarray(info.p).reshape(3, 4)[:, :3], frame.K)
        assert not np.any(info.d) and not np.any(np.asarray(info.p).reshape(3, 4)[:, 3])

        pose_msg = messages["/gt/camera_pose"][i][1]
        assert pose_msg.header.frame_id == config.world_frame
        gt = _matrix(pose_msg.pose.position, pose_msg.pose.orientation)
        assert np.allclose(gt, frame.camera_to_world, atol=1e-12)

        (tf,) = messages["/tf"][i][1].transforms
        assert (tf.header.frame_id, tf.child_frame_id) == (config.world_frame, "camera_link")
        composed = _matrix(tf.transform.translation, tf.transform.rotation) @ t_link_optical
        assert np.allclose(composed, gt, atol=1e-12)


def test_bag_is_byte_identical_and_options(tmp_path):
    config = SampleConfig(width=32, height=24, frames=3)
    write_sample_bag(tmp_path / "a", config)
    write_sample_bag(tmp_path / "b", config)
    # the bag's own file name is recorded inside it (rosbag2 metadata); everything else is identical
    mcap_a = (tmp_path / "a" / "a.mcap").read_bytes().replace(b"a.mcap", b"b.mcap")
    assert mcap_a == (tmp_path / "b" / "b.mcap").read_bytes()
    metadata = (tmp_path / "a" / "metadata.yaml").read_text().replace("a.mcap", "b.mcap")
    assert metadata == (tmp_path / "b" / "metadata.yaml").read_text()

    summary = write_sample_bag(tmp_path / "c", config, compressed=True, with_tf=False)
    connections, messages = _read_bag(tmp_path / "c")
    assert "/tf" not in connections and "/tf_static" not in connections
    assert "/camera/color/image_raw" not in connections
    assert connections["/camera/color/image_raw/compressed"].msgtype == "sensor_msgs/msg/CompressedImage"
    assert summary["topics"]["/camera/color/image_raw/compressed"] == 3
    import cv2

    msg = messages["/camera/color/image_raw/compressed"][1][1]
    assert "jpeg" in msg.format
    decoded = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    assert np.abs(decoded.astype(int) - render_frame(config, 1).rgb).mean() < 8

    with pytest.raises(Exception):
        write_sample_bag(tmp_path / "a", config)  # never overwrites


def test_cli(tmp_path, capsys):
    out = tmp_path / "sample"
    assert syn.main([str(out), "--frames", "2", "--width", "32", "--height", "24"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["topics"]["/gt/depth"] == 2
    assert (out / "metadata.yaml").exists()
    assert syn.main([str(out), "--frames", "2", "--width", "32", "--height", "24"]) == 2  # refuses
    assert syn.main([str(out), "--frames", "3", "--width", "32", "--height", "24", "--no-tf", "--force"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["topics"]["/gt/depth"] == 3 and "/tf" not in summary["topics"]
    not_a_bag = tmp_path / "precious"
    not_a_bag.mkdir()
    (not_a_bag / "notes.txt").write_text("keep me")
    assert syn.main([str(not_a_bag), "--force"]) == 2
    assert (not_a_bag / "notes.txt").exists()
