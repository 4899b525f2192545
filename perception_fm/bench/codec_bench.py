"""Per-frame cost of the depth node's message path, ours against a naive per-element one.

One frame: decode an rgb8 Image to numpy RGB, encode the depth map as a 32FC1 Image, unproject the valid depth
pixels with a pinhole K and encode them with their colours as an XYZRGB PointCloud2, then publish the RGB
image, the depth image and the cloud with rclpy (a real node in its own context, nobody subscribed).

The naive path does the same work the way a demo wrapper without cv_bridge often does: Python loops over
pixels building lists, struct.pack per point, lists assigned to msg.data. It is timed on a frame or two only.

Three more comparisons stand behind figures quoted in the code (`--parts`, default all):

- markers: a MarkerArray of one 5,000-triangle mesh (15,000 points and colours) encoded as CDR bytes straight
  from numpy (ros/marker_codec.py) against building geometry_msgs/Point and std_msgs/ColorRGBA objects and
  serialising them with rclpy;
- select: the cloud's colours picked by geometry.camera.select_pixels against numpy's (H, W, 3)[mask];
- malloc: the message path for --malloc-frames frames in two fresh processes, glibc's malloc defaults against
  core.memory.tune_malloc(), with the page faults per frame (the effect tune_malloc is there for).

    perception-fm bench codec [--frames 50] [--width 640] [--height 480] [--parts path,markers,select,malloc]
                              [--tune-malloc] [--save]
"""
from __future__ import annotations

import argparse
import json
import resource
import struct
import subprocess
import sys
import tempfile
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
        faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        ours_ms = [ours(stage_ms)[0] for _ in range(frames)]
        minor_faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
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
        "ours_ms_mean": ours_mean, "ours_ms_p95": ours_p95, "minor_faults_per_frame": minor_faults / frames,
        "stages_ms": {name: float(np.mean(values)) for name, values in stage_ms.items()},
    }
    if naive_ms:
        naive_mean, naive_p95 = _stats(naive_ms)
        result.update(naive_frames=naive_frames, naive_ms_mean=naive_mean, naive_ms_p95=naive_p95,
                      speedup=naive_mean / ours_mean, outputs_match=bool(match))
    return result


def mesh(triangles: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A closed-looking random mesh: `triangles` faces over triangles // 2 vertices, colours per vertex."""
    rng = np.random.default_rng(seed)
    vertices = rng.normal(size=(max(triangles // 2, 3), 3))
    faces = rng.integers(0, len(vertices), (triangles, 3))
    colors = rng.integers(0, 256, (len(vertices), 3), dtype=np.uint8)
    return vertices[faces.reshape(-1)], (np.concatenate([colors, np.full((len(colors), 1), 255, np.uint8)], 1)
                                         [faces.reshape(-1)].astype(np.float32) / 255.0)


def run_markers(triangles: int = 5000, repeats: int = 5) -> dict:
    """ms to make the serialised MarkerArray of one mesh marker: from numpy (ours) and through message objects."""
    from geometry_msgs.msg import Point
    from rclpy.serialization import serialize_message
    from std_msgs.msg import ColorRGBA
    from visualization_msgs.msg import Marker, MarkerArray

    from perception_fm.ros.marker_codec import TRIANGLE_LIST, MarkerSpec, encode_marker_array

    points, colors = mesh(triangles)
    spec = MarkerSpec(frame_id="map", stamp=(1, 2), ns="mesh", id=1, type=TRIANGLE_LIST, points=points,
                      colors=colors)

    def through_objects() -> bytes:
        marker = Marker(ns=spec.ns, id=spec.id, type=spec.type)
        marker.header.frame_id = spec.frame_id
        marker.header.stamp.sec, marker.header.stamp.nanosec = spec.stamp
        marker.pose.orientation.w = 1.0
        marker.scale.x = marker.scale.y = marker.scale.z = 1.0
        marker.color = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)
        marker.points = [Point(x=x, y=y, z=z) for x, y, z in points.tolist()]
        marker.colors = [ColorRGBA(r=r, g=g, b=b, a=a) for r, g, b, a in colors.tolist()]
        return serialize_message(MarkerArray(markers=[marker]))

    def timed(function) -> tuple[float, bytes]:
        samples, data = [], b""
        for _ in range(repeats + 1):  # the first is a warm-up
            started = time.perf_counter()
            data = function()
            samples.append((time.perf_counter() - started) * 1e3)
        return float(np.median(samples[1:])), data

    numpy_ms, ours = timed(lambda: encode_marker_array([spec]))
    objects_ms, theirs = timed(through_objects)
    return {"triangles": triangles, "points": len(points), "repeats": repeats, "numpy_ms": numpy_ms,
            "objects_ms": objects_ms, "bytes_identical": ours == theirs}


def run_select(width: int = 640, height: int = 480, repeats: int = 20) -> dict:
    """ms to pick the colours of the valid depth pixels: select_pixels against numpy's boolean indexing."""
    rgb, depth, _ = synthetic_frame(width, height)
    mask = depth > 0

    def timed(function) -> tuple[float, np.ndarray]:
        samples, picked = [], None
        for _ in range(repeats + 2):
            started = time.perf_counter()
            picked = function()
            samples.append((time.perf_counter() - started) * 1e3)
        return float(np.median(samples[2:])), picked

    ours_ms, ours = timed(lambda: select_pixels(rgb, mask))
    numpy_ms, theirs = timed(lambda: rgb[mask])
    return {"width": width, "height": height, "pixels": int(mask.sum()), "repeats": repeats,
            "select_pixels_ms": ours_ms, "numpy_mask_ms": numpy_ms, "identical": bool(np.array_equal(ours, theirs))}


def run_malloc(frames: int = 1000, width: int = 640, height: int = 480, rounds: int = 2) -> dict:
    """The message path in fresh processes (tune_malloc cannot be undone within one), defaults and tuned in
    turn for `rounds` rounds (alternating, so that a change in the machine's load hits both); per variant the
    median over rounds of each process's mean, p95 and page faults per frame."""
    runs: dict[str, list] = {"default": [], "tuned": []}
    for _ in range(rounds):
        for name, extra in (("default", []), ("tuned", ["--tune-malloc"])):
            with tempfile.NamedTemporaryFile(suffix=".json") as handle:
                subprocess.run([sys.executable, "-m", "perception_fm.bench.codec_bench", "--parts", "path",
                                "--frames", str(frames), "--width", str(width), "--height", str(height),
                                "--naive-frames", "0", "--json", handle.name, *extra],
                               check=True, stdout=subprocess.DEVNULL)
                runs[name].append(json.loads(open(handle.name).read())["codec"])
    result = {"frames": frames, "rounds": rounds}
    for name, results in runs.items():
        result[name] = {key: float(np.median([r[key] for r in results]))
                        for key in ("ours_ms_mean", "ours_ms_p95", "minor_faults_per_frame")}
        result[name]["malloc_tuned"] = all(r["malloc_tuned"] for r in results)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--naive-frames", type=int, default=2, help="0 skips the naive path")
    parser.add_argument("--tune-malloc", action="store_true", help="apply tune_malloc() first (glibc)")
    parser.add_argument("--parts", default="path,markers,select,malloc",
                        help="which comparisons: path (the message path), markers, select, malloc")
    parser.add_argument("--malloc-frames", type=int, default=1000, help="frames per process of the malloc part")
    parser.add_argument("--triangles", type=int, default=5000, help="mesh size of the markers part")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--save", action="store_true", help="put the results into bench/results/<device>.json")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - {"path", "markers", "select", "malloc"}
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    results = {}
    if "path" in parts:
        tuned = tune_malloc() if args.tune_malloc else False
        result = run(args.frames, args.width, args.height, args.naive_frames)
        result["malloc_tuned"] = tuned
        results["codec"] = result
        print(f"codec bench: {result['width']}x{result['height']}, {result['points']} valid points per cloud"
              f"{', malloc tuned' if tuned else ''}")
        print(f"{'path':<8}{'frames':>8}{'mean ms':>12}{'p95 ms':>12}")
        print(f"{'ours':<8}{result['frames']:>8}{result['ours_ms_mean']:>12.3f}{result['ours_ms_p95']:>12.3f}")
        if "naive_ms_mean" in result:
            print(f"{'naive':<8}{result['naive_frames']:>8}{result['naive_ms_mean']:>12.1f}"
                  f"{result['naive_ms_p95']:>12.1f}")
            print(f"speed-up {result['speedup']:.0f}x; outputs identical: {result['outputs_match']}")
        print("ours by stage (mean ms): " + ", ".join(f"{k} {v:.3f}" for k, v in result["stages_ms"].items()))
        print(f"page faults per frame: {result['minor_faults_per_frame']:.0f}")
    if "markers" in parts:
        markers = results["markers"] = run_markers(args.triangles)
        print(f"MarkerArray, one {markers['triangles']}-triangle mesh ({markers['points']} points and colours): "
              f"from numpy {markers['numpy_ms']:.2f} ms, through message objects {markers['objects_ms']:.1f} ms "
              f"({markers['objects_ms'] / markers['numpy_ms']:.0f}x); bytes identical: {markers['bytes_identical']}")
    if "select" in parts:
        select = results["select_pixels"] = run_select(args.width, args.height)
        print(f"colours of {select['pixels']} valid pixels of {select['width']}x{select['height']}: select_pixels "
              f"{select['select_pixels_ms']:.2f} ms, numpy (H, W, 3)[mask] {select['numpy_mask_ms']:.2f} ms "
              f"({select['numpy_mask_ms'] / select['select_pixels_ms']:.1f}x); identical: {select['identical']}")
    if "malloc" in parts:
        malloc = results["malloc"] = run_malloc(args.malloc_frames, args.width, args.height)
        for name in ("default", "tuned"):
            row = malloc[name]
            print(f"malloc {name:<8}: {malloc['frames']} frames x {malloc['rounds']} processes, median of means {row['ours_ms_mean']:.2f} ms, p95 "
                  f"{row['ours_ms_p95']:.2f} ms, {row['minor_faults_per_frame']:.0f} page faults per frame")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    if args.save:
        from perception_fm.bench.common import save_section

        for section, data in results.items():
            path = save_section(section, data)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    main()
