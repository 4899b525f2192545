"""Evaluation of a camera rig's replay: every camera on its own (the single-camera evaluation with that
camera's topics) and the fused cloud against the ground-truth geometry.

Cameras are found by their ground truth: a bag with /gt/<camera>/depth topics (as `perception-fm sample --rig N`
writes: /gt/cam0/depth, ...) is a rig's. Per camera the evaluator reads the prediction topics under the camera's
namespace (/<camera>/.../depth/image, depth/info, instances; its image_raw and camera_info beside them) and the
ground truth /gt/<camera>/depth, camera_pose, instances (+ the shared /gt/instance_labels).

Fused cloud (`points_fused`, XYZRGB in the rig's frame): each point is taken into every camera (TF rig frame <-
camera optical frame, from the bag's /tf_static) and compared with that camera's ground-truth depth at the pixel
it falls on (the nearest pixel centre); its error is the smallest over the cameras that see it (a point on a
surface occluded in one camera is on the surface another camera saw). Rows: median and mean of |z - z_gt| /
z_gt over points, and the share of points within `fscore_threshold_m` of the ground-truth surface along the
ray. Clouds are matched to the ground truth by stamp (within max_time_diff_s); bounded memory (a few pending
stamps).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from perception_fm.eval.config import EvalConfig, EvalError, EvalTopics
from perception_fm.eval.result import EvalResult, MetricRow

GT_DEPTH = re.compile(r"^/gt/([^/]+)/depth$")
FUSED_TOPIC = "/points_fused"
MAX_PENDING = 16  # clouds / ground-truth stamps kept while their counterpart has not come


def rig_cameras(topics: dict[str, str]) -> list[str]:
    """The cameras with ground-truth depth in the bag (sorted), [] for a single-camera bag."""
    return sorted(match.group(1) for topic in topics if (match := GT_DEPTH.match(topic)))


def cameras_without_truth(out_topics: dict[str, str], cameras: list[str]) -> list[str]:
    """Cameras with predicted depth (/<camera>/.../depth/image) but no /gt/<camera>/depth: they cannot be
    evaluated, and the fused cloud is scored only against the others' ground truth."""
    predicted = {topic.split("/")[1] for topic in out_topics
                 if topic.endswith("/depth/image") and topic.count("/") >= 3}
    return sorted(predicted - set(cameras) - {"gt"})


def camera_topics(camera: str, out_topics: dict[str, str], base: EvalTopics | None = None) -> EvalTopics:
    """The evaluator's topics for one camera of the rig."""
    base = base or EvalTopics()
    depth = sorted(t for t in out_topics if t.startswith(f"/{camera}/") and t.endswith("/depth/image"))
    namespace = depth[0][:-len("/depth/image")] if depth else f"/{camera}"
    return replace(base, depth=f"{namespace}/depth/image", depth_info=f"{namespace}/depth/info",
                   instances=f"{namespace}/instances", rgb=f"{namespace}/image_raw",
                   rgb_compressed=f"{namespace}/image_raw/compressed", camera_info=f"{namespace}/camera_info",
                   camera_path=f"{namespace}/camera_path", gt_depth=f"/gt/{camera}/depth",
                   gt_pose=f"/gt/{camera}/camera_pose", gt_instances=f"/gt/{camera}/instances")


@dataclass
class RigEvalResult:
    cameras: dict[str, EvalResult]
    fused: list[MetricRow] = field(default_factory=list)
    fused_skipped: str = ""  # why there are no fused rows
    without_truth: list[str] = field(default_factory=list)  # cameras predicted but without ground truth

    def table(self) -> str:
        blocks = [f"== camera {camera} ==\n{result.table()}" for camera, result in self.cameras.items()]
        if self.fused:
            lines = [f"  {row.name:<40} {row.value:10.4f} {row.unit:<3} ({row.frames} clouds)" for row in self.fused]
            blocks.append("== fused cloud ==\n" + "\n".join(lines))
        else:
            blocks.append(f"== fused cloud ==\n  skipped: {self.fused_skipped}")
        return "\n\n".join(blocks)

    def to_dict(self) -> dict:
        return {"cameras": {camera: result.to_dict() for camera, result in self.cameras.items()},
                "fused": [row.to_dict() for row in self.fused], "fused_skipped": self.fused_skipped,
                "without_truth": list(self.without_truth)}


def evaluate_rig(out_bag: str | Path, gt: str | Path | None = None, config: EvalConfig | None = None,
                 fused_topic: str = FUSED_TOPIC) -> RigEvalResult:
    """Per-camera evaluation (perception_fm.eval.runner.evaluate on each camera's topics) and the fused
    cloud's rows. EvalError when the bag has no rig ground truth."""
    from perception_fm.eval.runner import evaluate
    from perception_fm.replay.bag_io import BagReader, BagReadError

    config = config or EvalConfig()
    try:
        with BagReader(out_bag) as reader:
            out_topics = dict(reader.topics)
        gt_topics = out_topics
        if gt is not None:
            with BagReader(gt) as reader:
                gt_topics = dict(reader.topics)
    except BagReadError as error:
        raise EvalError(str(error)) from error
    cameras = rig_cameras(gt_topics)
    if not cameras:
        raise EvalError("no /gt/<camera>/depth topics: not a camera rig's bag")
    results = {camera: evaluate(out_bag, gt, replace(config, topics=camera_topics(camera, out_topics, config.topics)))
               for camera in cameras}
    result = RigEvalResult(results, without_truth=cameras_without_truth(out_topics, cameras))
    if fused_topic not in out_topics:
        result.fused_skipped = f"no {fused_topic} in the output bag"
        return result
    result.fused, result.fused_skipped = _fused_rows(out_bag, gt, cameras, out_topics, config, fused_topic)
    return result


def _fused_rows(out_bag, gt, cameras, out_topics, config: EvalConfig, fused_topic: str):
    from perception_fm.replay.bag_io import BagReader
    from perception_fm.ros.camera_info import camera_info_to_intrinsics
    from perception_fm.ros.cloud_codec import pointcloud2_to_xyzrgb
    from perception_fm.ros.image_codec import image_to_numpy
    from perception_fm.ros.tf import TF_STATIC_TOPIC, TfBuffer, stamp_to_ns

    info_topics = {camera_topics(camera, out_topics).camera_info: camera for camera in cameras}
    depth_topics = {f"/gt/{camera}/depth": camera for camera in cameras}
    tf = TfBuffer(cache_s=3600.0)
    intrinsics: dict[str, np.ndarray] = {}
    frames: dict[str, str] = {}  # camera -> its optical frame (from the ground-truth depth's header)
    truth: dict[str, dict[int, np.ndarray]] = {camera: {} for camera in cameras}
    pending: list[tuple[int, str, np.ndarray]] = []  # (stamp, cloud frame, points)
    tolerance = int(config.max_time_diff_s * 1e9)
    errors: list[np.ndarray] = []
    distances: list[np.ndarray] = []

    def depth_at(camera, stamp):
        near = [s for s in truth[camera] if abs(s - stamp) <= tolerance]
        return truth[camera][min(near, key=lambda s: abs(s - stamp))] if near else None

    def ready(stamp) -> bool:
        return all(depth_at(camera, stamp) is not None for camera in cameras)

    def score(stamp, cloud_frame, points) -> None:
        best_rel = np.full(len(points), np.inf)
        best_abs = np.full(len(points), np.inf)
        for camera in cameras:
            depth, K = depth_at(camera, stamp), intrinsics.get(camera)
            pose = tf.lookup(cloud_frame, frames.get(camera, ""), stamp) if camera in frames else None
            if depth is None or K is None or pose is None:
                continue
            local = (points - pose[:3, 3]) @ pose[:3, :3]  # rig -> camera: R^T (p - t)
            z = local[:, 2]
            with np.errstate(divide="ignore", invalid="ignore"):
                # pixel centres at integer coordinates (perception_fm.geometry.camera.pixel_rays): the nearest
                u = np.rint(K[0, 0] * local[:, 0] / z + K[0, 2])
                v = np.rint(K[1, 1] * local[:, 1] / z + K[1, 2])
            u = np.nan_to_num(u, nan=-1.0, posinf=-1.0, neginf=-1.0).astype(np.int64)
            v = np.nan_to_num(v, nan=-1.0, posinf=-1.0, neginf=-1.0).astype(np.int64)
            height, width = depth.shape
            inside = (z > 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
            gt_z = np.full(len(points), np.nan)
            gt_z[inside] = depth[v[inside], u[inside]]
            valid = inside & np.isfinite(gt_z) & (gt_z > config.min_depth)
            if config.max_depth is not None:
                valid &= gt_z <= config.max_depth
            gap = np.where(valid, np.abs(z - gt_z), np.inf)
            best_abs = np.minimum(best_abs, gap)
            best_rel = np.minimum(best_rel, np.where(valid, gap / np.where(valid, gt_z, 1.0), np.inf))
        seen = np.isfinite(best_rel)
        if seen.any():
            errors.append(best_rel[seen])
            distances.append(best_abs[seen])

    with BagReader(out_bag) as out_reader:
        readers = [out_reader] + ([BagReader(gt)] if gt is not None else [])
        try:
            streams = [r.messages({fused_topic, TF_STATIC_TOPIC, *info_topics, *depth_topics}) for r in readers]
            import heapq

            for item in heapq.merge(*streams, key=lambda m: m.timestamp_ns):
                if item.topic == TF_STATIC_TOPIC:
                    tf.add(item.message, static=True)
                elif item.topic in info_topics:
                    intrinsics.setdefault(info_topics[item.topic], camera_info_to_intrinsics(item.message).K)
                elif item.topic in depth_topics:
                    camera = depth_topics[item.topic]
                    frames.setdefault(camera, item.message.header.frame_id)
                    truth[camera][stamp_to_ns(item.message.header.stamp)] = image_to_numpy(item.message).astype(
                        np.float64)
                    while len(truth[camera]) > MAX_PENDING:
                        truth[camera].pop(min(truth[camera]))
                else:
                    points, _ = pointcloud2_to_xyzrgb(item.message)
                    pending.append((stamp_to_ns(item.message.header.stamp), item.message.header.frame_id,
                                    points.astype(np.float64)))
                    if len(pending) > MAX_PENDING:  # its ground truth is late: scored with what there is
                        score(*pending.pop(0))
                for entry in [entry for entry in pending if ready(entry[0])]:
                    pending.remove(entry)
                    score(*entry)
            for entry in pending:
                score(*entry)
        finally:
            for reader in readers[1:]:
                reader.close()
    if not errors:
        return [], "no fused point fell on any camera's ground-truth depth (TF, camera_info or stamps missing?)"
    rel, gaps = np.concatenate(errors), np.concatenate(distances)
    clouds = len(errors)
    threshold = config.fscore_threshold_m
    rows = [
        MetricRow("fused", "fused AbsRel (median over points)", float(np.median(rel)), unit="", frames=clouds,
                  lower_is_better=True, note="nearest ground-truth surface over the cameras"),
        MetricRow("fused", "fused AbsRel (mean over points)", float(np.mean(rel)), unit="", frames=clouds,
                  primary=False, lower_is_better=True),
        MetricRow("fused", f"fused points within {threshold:g} m", float(np.mean(gaps <= threshold)), unit="",
                  frames=clouds, lower_is_better=False),
    ]
    return rows, ""


def main_rig(args, config: EvalConfig) -> int | None:
    """`perception-fm eval` on a rig's bag (None: not a rig's, the single-camera evaluation applies): the
    table per camera and the fused rows; --json writes {cameras: {camera: ...}, fused: [...]}, --report one
    HTML report per camera (PATH with the camera's name before its suffix)."""
    import json
    import sys

    from perception_fm.replay.bag_io import BagReader, BagReadError

    try:
        with BagReader(args.gt or args.out_bag) as reader:
            if not rig_cameras(reader.topics):
                return None
    except BagReadError:
        return None  # the single-camera path reports it
    try:
        result = evaluate_rig(args.out_bag, args.gt, config)
    except EvalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if any(r.provenance.get("random_init") for r in result.cameras.values()):
        print("WARNING: RANDOM-INIT WEIGHTS: the model was not trained; these numbers only check the plumbing",
              file=sys.stderr)
    print(result.table())
    for camera in result.without_truth:  # was left out without a word
        print(f"skipped ({camera}): not evaluated: its predictions have no ground truth /gt/{camera}/depth; the "
              f"fused cloud is scored against {', '.join(result.cameras)} only", file=sys.stderr)
    for camera, camera_result in result.cameras.items():
        for line in camera_result.skipped:
            print(f"skipped ({camera}): {line}", file=sys.stderr)
        for line in camera_result.warnings:
            print(f"warning ({camera}): {line}", file=sys.stderr)
    if args.report:
        from perception_fm.eval.report import write_report

        path = Path(args.report)
        for camera, camera_result in result.cameras.items():
            written = write_report(camera_result, path.with_name(f"{path.stem}.{camera}{path.suffix or '.html'}"),
                                   title=f"perception_fm evaluation: camera {camera}")
            print(f"wrote {written}")
    if args.json:
        path = Path(args.json)
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True)
        path.write_text(json.dumps(result.to_dict(), indent=2, allow_nan=False, ensure_ascii=False), encoding="utf-8")
        print(f"wrote {path}")
    return 0
