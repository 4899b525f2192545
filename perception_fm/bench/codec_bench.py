"""Per-frame cost of the depth node's message path, ours against a naive per-element one.

One frame: decode an rgb8 Image to numpy RGB, encode the depth map as a 32FC1 Image, unproject the valid depth
pixels with a pinhole K and encode them with their colours as an XYZRGB PointCloud2, then publish the RGB
image, the depth image and the cloud with rclpy (a real node in its own context, nobody subscribed).

The naive path does the same work the way a demo wrapper without cv_bridge often does: Python loops over
pixels building lists, struct.pack per point, lists assigned to msg.data. It is timed on a frame or two only.

    python -m perception_fm.bench.codec_bench [--frames 50] [--width 640] [--height 480] [--tune-malloc]

Long runs with glibc's default malloc settings slip into phases of page faulting (see tune_malloc).
"""
from __future__ import annotations

import argparse
import struct
import time

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image, PointCloud2, PointField

from perception_fm.core.memory import tune_malloc
from perception_fm.geometry.camera import select_pixels, unproject_depth
from perception_fm.ros.cloud_codec import pointcloud2_to_xyzrgb, xyzrgb_to_pointcloud2
from perception_fm.ros.image_codec import image_to_rgb8, numpy_to_image

STAGES = ("decode_rgb", "encode_depth", "unproject", "encode_cloud", "publish")


def synthetic_frame(width: int, height: int, seed: int = 0):
    """An RGB image, a depth map (metres, about 5 % invalid pixels: zeros and NaNs) and its pinhole K."""
    rng = np.random.default_rng(seed)
    u = np.arange(width, dtype=np.float32)[None, :]
    v = np.arange(height, dtype=np.float32)[:, None]
    depth = (1.5 + 0.5 * np.sin(u / 40.0) + v / height).astype(np.float32)
    holes = rng.random((height, width))
    depth[holes < 0.04] = 0.0
    depth[holes > 0.99] = np.nan
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    focal = 0.9 * width
    K = np.array([[focal, 0.0, (width - 1) / 2], [0.0, focal, (height - 1) / 2], [0.0, 0.0, 1.0]])
    return rgb, depth, K


# -- the naive path -------------------------------------------------------------------------------------------

def naive_decode_rgb8(msg: Image) -> np.ndarray:
    data, step = msg.data, msg.step
    rows = []
    for v in range(msg.height):
        row = []
        for u in range(msg.width):
            i = v * step + 3 * u
            row.append([data[i], data[i + 1], data[i + 2]])
        rows.append(row)
    return np.array(rows, dtype=np.uint8)


def naive_depth_image(depth: np.ndarray, header) -> Image:
    msg = Image()
    msg.header = header
    msg.height, msg.width = depth.shape
    msg.encoding, msg.is_bigendian, msg.step = "32FC1", 0, depth.shape[1] * 4
    data = []
    for v in range(depth.shape[0]):
        for u in range(depth.shape[1]):
            data.extend(struct.pack("<f", float(depth[v, u])))
    msg.data = data
    return msg


def naive_cloud(depth: np.ndarray, rgb: np.ndarray, K: np.ndarray, header) -> PointCloud2:
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    data = []
    count = 0
    for v in range(depth.shape[0]):
        for u in range(depth.shape[1]):
            z = float(depth[v, u])
            if not z > 0:
                continue
            x = (u - cx) / fx * z
            y = (v - cy) / fy * z
            r, g, b = (int(c) for c in rgb[v, u])
            packed = struct.unpack("<f", struct.pack("<I", (r << 16) | (g << 8) | b))[0]
            data.extend(struct.pack("<ffff", x, y, z, packed))
            count += 1
    msg = PointCloud2()
    msg.header = header
    msg.height, msg.width = 1, count
    msg.fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                  for i, n in enumerate(("x", "y", "z", "rgb"))]
    msg.is_bigendian, msg.point_step, msg.row_step = False, 16, 16 * count
    msg.is_dense = True
    msg.data = data
    return msg


# -- the run --------------------------------------------------------------------------------------------------

def _same_output(depth_a: Image, depth_b: Image, cloud_a: PointCloud2, cloud_b: PointCloud2) -> bool:
    """Both paths made the same messages: depth bytes identical, cloud points equal to float32 rounding (the
    naive path computes in float64), colours identical."""
    points_a, colors_a = pointcloud2_to_xyzrgb(cloud_a)
    points_b, colors_b = pointcloud2_to_xyzrgb(cloud_b)
    return (depth_a.data == depth_b.data and points_a.shape == points_b.shape
            and np.allclose(points_a, points_b, rtol=1e-6, atol=1e-6) and np.array_equal(colors_a, colors_b))


def _stats(samples_ms: list[float]) -> tuple[float, float]:
    values = np.asarray(samples_ms)
    return float(values.mean()), float(np.percentile(values, 95))


def run(frames: int = 50, width: int = 640, height: int = 480, naive_frames: int = 2) -> dict:
    """Time `frames` frames of our path and `naive_frames` of the naive one; ms per frame."""
    rgb, depth, K = synthetic_frame(width, height)
    rgb_msg = numpy_to_image(rgb, "rgb8")  # what the subscription delivers
    rgb_msg.header.frame_id = "camera_optical_frame"
    header = rgb_msg.header

    context = Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("codec_bench", context=context)
        qos = QoSProfile(depth=1)
        publishers = (node.create_publisher(Image, "codec_bench/image", qos),
                      node.create_publisher(Image, "codec_bench/depth", qos),
                      node.create_publisher(PointCloud2, "codec_bench/points", qos))

        def ours(stage_ms: dict | None):
            t0 = time.perf_counter()
            image = image_to_rgb8(rgb_msg)
            t1 = time.perf_counter()
            depth_msg = numpy_to_image(depth, "32FC1", header)
            t2 = time.perf_counter()
            points, mask = unproject_depth(depth, K)  # the depth pipeline's own cloud path
            colors = select_pixels(image, mask)
            t3 = time.perf_counter()
            cloud_msg = xyzrgb_to_pointcloud2(points, colors, header)
            t4 = time.perf_counter()
            for publisher, msg in zip(publishers, (rgb_msg, depth_msg, cloud_msg)):
                publisher.publish(msg)
            t5 = time.perf_counter()
            if stage_ms is not None:
                for name, start, end in zip(STAGES, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5)):
                    stage_ms[name].append((end - start) * 1e3)
            return (t5 - t0) * 1e3, depth_msg, cloud_msg

        def naive():
            t0 = time.perf_counter()
            image = naive_decode_rgb8(rgb_msg)
            depth_msg = naive_depth_image(depth, header)
            cloud_msg = naive_cloud(depth, image, K, header)
            for publisher, msg in zip(publishers, (rgb_msg, depth_msg, cloud_msg)):
                publisher.publish(msg)
            return (time.perf_counter() - t0) * 1e3, depth_msg, cloud_msg

        for _ in range(3):  # warm-up: allocator, DDS writers
            ours(None)
        stage_ms = {name: [] for name in STAGES}
        ours_ms = [ours(stage_ms)[0] for _ in range(frames)]
        naive_ms, match = [], True
        for _ in range(naive_frames):
            elapsed, naive_depth, naive_points = naive()
            naive_ms.append(elapsed)
            _, our_depth, our_points = ours(None)
            match = match and _same_output(naive_depth, our_depth, naive_points, our_points)
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)

    ours_mean, ours_p95 = _stats(ours_ms)
    result = {
        "frames": frames, "width": width, "height": height, "points": int(np.count_nonzero(depth > 0)),
        "ours_ms_mean": ours_mean, "ours_ms_p95": ours_p95,
        "stages_ms": {name: float(np.mean(values)) for name, values in stage_ms.items()},
    }
    if naive_ms:
        naive_mean, naive_p95 = _stats(naive_ms)
        result.update(naive_frames=naive_frames, naive_ms_mean=naive_mean, naive_ms_p95=naive_p95,
                      speedup=naive_mean / ours_mean, outputs_match=bool(match))
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--naive-frames", type=int, default=2, help="0 skips the naive path")
    parser.add_argument("--tune-malloc", action="store_true", help="apply tune_malloc() first (glibc)")
    args = parser.parse_args(argv)
    tuned = tune_malloc() if args.tune_malloc else False
    result = run(args.frames, args.width, args.height, args.naive_frames)
    result["malloc_tuned"] = tuned
    print(f"codec bench: {result['width']}x{result['height']}, {result['points']} valid points per cloud"
          f"{', malloc tuned' if tuned else ''}")
    print(f"{'path':<8}{'frames':>8}{'mean ms':>12}{'p95 ms':>12}")
    print(f"{'ours':<8}{result['frames']:>8}{result['ours_ms_mean']:>12.3f}{result['ours_ms_p95']:>12.3f}")
    if "naive_ms_mean" in result:
        print(f"{'naive':<8}{result['naive_frames']:>8}{result['naive_ms_mean']:>12.1f}"
              f"{result['naive_ms_p95']:>12.1f}")
        print(f"speed-up {result['speedup']:.0f}x; outputs identical: {result['outputs_match']}")
    print("ours by stage (mean ms): " + ", ".join(f"{k} {v:.3f}" for k, v in result["stages_ms"].items()))
    return result


if __name__ == "__main__":
    main()
