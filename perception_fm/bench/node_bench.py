"""perception-fm bench node: a node as a robot runs it (its own process, images over DDS), measured the way
Isaac ROS benchmarks its graphs:

- peak throughput: the highest input rate at which fewer than 5 % of the frames are dropped (the node's
  latest-frame policy sheds load beyond what the model sustains), found by trying rates in turn;
- latency at a fixed input rate (30 Hz by default): output receive time minus input publish time on this
  machine's clock, p50/p95, and the node's own overhead per frame (that latency minus the model's time as the
  node reports it in depth/info);
- that overhead split by stage, from the node's own per-frame times (publish_stage_times, ~/stage_times):
  receive (publish -> the node's callback: serialisation, DDS, the executor), pairing (waiting for the
  camera_info of the stamp), queue (waiting in the latest-frame slot while the model works on an earlier
  frame: a slow model's time, not overhead), decode, prepare (resize/normalise; inside the model's reported
  time), postprocess (cloud), encode (messages), publish, and deliver (the rest: depth/info to this process).
  `overhead` is latency - model time (prepare + predict) as before; `overhead_excl_queue` leaves the slot wait
  out too.

Images are 640x480 frames of the synthetic sample; the model has random weights unless --weights is given
(timings do not depend on the values). This process publishes the images as a camera driver would, with
perception_fm's Fast DDS transport setting (see perception_fm/__init__.py) unless the environment sets its own:
FASTDDS_BUILTIN_TRANSPORTS=DEFAULT measures with Fast DDS's defaults, on both sides. Figures, not tests.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np


# The bench's own ROS domains (the tests take 1-100; Fast DDS's port scheme allows up to 232).
PRIVATE_DOMAINS = range(150, 231)


def _percentiles(values) -> dict:
    values = np.asarray(values, float)
    if not len(values):
        return {"p50_ms": float("nan"), "p95_ms": float("nan")}
    return {"p50_ms": float(np.percentile(values, 50)), "p95_ms": float(np.percentile(values, 95))}


class _Harness:
    """A probe node in this process publishing images and timing the node's depth outputs."""

    def __init__(self, frames, output_type=None, output_topic: str = "/depth/info", camera_info: bool = False,
                 diagnostics: bool = False, stage_times_topic: str = "", also_subscribe=(),
                 domain_id: int | None = None):
        """`output_type` on `output_topic` (default DepthInfo on /depth/info) is the node's per-frame output; it
        must carry the input's header stamp and an `inference_ms`. With `camera_info`, a CameraInfo (the sample's
        K) goes to /bench/camera_info before each image, with its stamp. With `diagnostics`, the latest
        /diagnostics key/values of each status are kept in self.diagnostics (status name -> dict). With
        `stage_times_topic`, the node's per-frame stage times (depth_io.stage_times_message) are kept by stamp.
        `also_subscribe`: (type, topic) pairs subscribed to and counted in self.counts, as a viewer would (a
        node builds some outputs only while they have subscribers). `domain_id`: the ROS domain (default: the
        environment's)."""
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image

        from perception_fm.msg import DepthInfo
        from perception_fm.ros.image_codec import numpy_to_image

        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node("node_bench", context=self.context)
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self.publisher = self.node.create_publisher(Image, "/bench/image", qos)
        self.camera_info = None
        if camera_info:
            from perception_fm.replay.synthetic import SampleConfig, intrinsics
            from perception_fm.ros.camera_info import make_camera_info

            height, width = frames[0].shape[:2]
            self.camera_info = make_camera_info(intrinsics(SampleConfig(width=width, height=height)), width, height)
            self.info_publisher = self.node.create_publisher(CameraInfo, "/bench/camera_info", qos)
        self.sent: dict[int, float] = {}
        self.received: dict[int, tuple[float, float]] = {}  # stamp -> (receive time, model ms)
        self.lock = threading.Lock()
        self.node.create_subscription(output_type or DepthInfo, output_topic, self._on_info, QoSProfile(depth=100))
        self.diagnostics: dict[str, dict] = {}
        self.diagnostics_received = 0
        self.stages: dict[int, dict[str, float]] = {}  # stamp -> the node's ms per stage (stage_times_topic)
        self.counts: dict[str, int] = {}
        for msg_type, topic in also_subscribe:
            self.counts[topic] = 0
            self.node.create_subscription(msg_type, topic, lambda _, topic=topic: self._count(topic),
                                          QoSProfile(depth=10))
        if stage_times_topic:
            self.node.create_subscription(DiagnosticArray, stage_times_topic, self._on_stage_times,
                                          QoSProfile(depth=100))
        if diagnostics:
            self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, QoSProfile(depth=50))
        self.messages = [numpy_to_image(frame, "rgb8") for frame in frames]
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._spinning = True
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        while self._spinning and self.context.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def _on_diagnostics(self, message):
        with self.lock:
            for status in message.status:
                self.diagnostics[status.name] = {kv.key: kv.value for kv in status.values}
            self.diagnostics_received += 1

    def _count(self, topic: str) -> None:
        with self.lock:
            self.counts[topic] += 1

    def _on_stage_times(self, message):
        stamp = message.header.stamp.sec * 10**9 + message.header.stamp.nanosec
        with self.lock:
            self.stages[stamp] = {kv.key: float(kv.value) for status in message.status for kv in status.values}

    def publish(self, index: int) -> None:
        """Frame `index` (cycling through the frames) stamped now, its camera_info first where there is one."""
        from builtin_interfaces.msg import Time

        message = self.messages[index % len(self.messages)]
        stamp = time.time_ns()
        message.header.stamp = Time(sec=stamp // 10**9, nanosec=stamp % 10**9)
        if self.camera_info is not None:
            self.camera_info.header.stamp = message.header.stamp
            self.info_publisher.publish(self.camera_info)
        with self.lock:
            self.sent[stamp] = time.perf_counter()
        self.publisher.publish(message)

    def _on_info(self, message):
        stamp = message.header.stamp.sec * 10**9 + message.header.stamp.nanosec
        with self.lock:
            self.received[stamp] = (time.perf_counter(), float(message.inference_ms))

    def run(self, rate_hz: float, seconds: float) -> dict:
        with self.lock:
            self.sent.clear()
            self.received.clear()
            self.stages.clear()
        period, count = 1.0 / rate_hz, max(int(rate_hz * seconds), 1)
        start = time.perf_counter()
        for i in range(count):
            target = start + i * period
            time.sleep(max(0.0, target - time.perf_counter()))
            self.publish(i)
        time.sleep(2.0)  # the last frames drain
        with self.lock:
            done = [s for s in self.sent if s in self.received]
            latencies = {s: (self.received[s][0] - self.sent[s]) * 1e3 for s in done}
            overheads = {s: latencies[s] - self.received[s][1] for s in done}
            staged = {s: self.stages[s] for s in done if s in self.stages}
        result = {"rate_hz": rate_hz, "sent": count, "processed": len(done), "drop_ratio": 1 - len(done) / count,
                  **_percentiles(list(latencies.values())), "overhead": _percentiles(list(overheads.values()))}
        if staged:
            names = list(next(iter(staged.values())))
            stages = {name: _percentiles([times[name] for times in staged.values()]) for name in names}
            # the rest of the latency: depth/info from the node to this process (DDS + this executor)
            stages["deliver"] = _percentiles([latencies[s] - sum(times.values()) for s, times in staged.items()])
            result["stages"] = stages
            result["overhead_excl_queue"] = _percentiles([overheads[s] - times.get("queue", 0.0)
                                                          for s, times in staged.items()])
        return result

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.publisher.get_subscription_count() > 0:
                result = self.run(2.0, 1.0)
                if result["processed"]:
                    return True
            time.sleep(0.5)
        return False

    def close(self):
        import rclpy

        self._spinning = False
        self._thread.join(timeout=5)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def run(model: str = "da3-small", process_res: int = 280, rates=(1, 2, 5, 10, 15, 20, 30), seconds: float = 5.0,
        latency_rate: float = 30.0, weights: str = "", device: str = "auto", all_outputs: bool = False,
        domain_id: int | None = None) -> dict:
    """`all_outputs`: subscribe to depth, confidence and points too, as RViz showing them would (the node
    computes its cloud only while /points has a subscriber). `domain_id`: the ROS domain of the node and the
    probe; default a random one in PRIVATE_DOMAINS, so that no other bench's node answers these images and a
    robot's graph on the default domain neither disturbs the figures nor sees the bench's topics."""
    import random

    from sensor_msgs.msg import Image, PointCloud2

    from perception_fm.bench.common import sample_frames

    frames = sample_frames(8)
    weight_args = ["-p", f"weights:={weights}"] if weights else ["-p", "random_weights:=true"]
    command = [sys.executable, "-m", "perception_fm.nodes.depth_node", "--ros-args", "-p", f"model:={model}",
               "-p", f"process_res:={process_res}", "-p", f"device:={device}", "-p", "input_qos:=reliable",
               "-p", "publish_stage_times:=true", "-r", "image:=/bench/image", *weight_args]
    if domain_id is None:
        domain_id = random.SystemRandom().choice(PRIVATE_DOMAINS)
    node = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "ROS_DOMAIN_ID": str(domain_id)})
    viewer = [(Image, "/depth/image"), (Image, "/depth/confidence"), (PointCloud2, "/points")] if all_outputs else []
    harness = _Harness(frames, stage_times_topic="/depth_node/stage_times", also_subscribe=viewer,
                       domain_id=domain_id)
    try:
        if not harness.wait_ready(300):
            raise RuntimeError("the depth node produced no output within 300 s")
        sweep = []
        for rate in rates:
            result = harness.run(rate, seconds)
            sweep.append(result)
            print(f"  {rate:5.1f} Hz: {result['processed']}/{result['sent']} frames, "
                  f"drops {100 * result['drop_ratio']:.0f} %, latency p50 {result['p50_ms']:.0f} ms, "
                  f"overhead p50 {result['overhead']['p50_ms']:.1f} ms", flush=True)
        sustained = [r["rate_hz"] for r in sweep if r["drop_ratio"] < 0.05]
        latency = harness.run(latency_rate, seconds)
    finally:
        harness.close()
        node.terminate()
        node.wait(timeout=20)
    return {"node": "depth_node", "model": model, "process_res": process_res, "weights": weights or "random-init",
            "image": f"{frames[0].shape[1]}x{frames[0].shape[0]} rgb8", "all_outputs_subscribed": all_outputs,
            "ros_domain_id": domain_id,
            "fastdds_builtin_transports": os.environ.get("FASTDDS_BUILTIN_TRANSPORTS", ""),
            "ros_automatic_discovery_range": os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", ""),
            "load_average_1min": round(os.getloadavg()[0], 1),
            "peak_throughput_hz": max(sustained) if sustained else 0.0, "sweep": sweep,
            "latency_at_rate": latency}


def stage_table(result: dict) -> str:
    """The per-stage split of one run as printed lines (p50 / p95 ms)."""
    stages = result.get("stages")
    if not stages:
        return "  (no stage times: the node did not publish ~/stage_times)"
    lines = [f"  {name:<12} p50 {value['p50_ms']:7.2f}  p95 {value['p95_ms']:7.2f} ms" for name, value in stages.items()]
    excluded = result["overhead_excl_queue"]
    lines.append(f"  overhead (latency - prepare - predict - queue): p50 {excluded['p50_ms']:.2f} "
                 f"p95 {excluded['p95_ms']:.2f} ms")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="perception-fm bench node", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="da3-small")
    parser.add_argument("--process-res", type=int, default=280)
    parser.add_argument("--rates", default="1,2,5,10,15,20,30", help="input rates to try, Hz")
    parser.add_argument("--seconds", type=float, default=5.0, help="per rate")
    parser.add_argument("--latency-rate", type=float, default=30.0)
    parser.add_argument("--weights", default="")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--all-outputs", action="store_true",
                        help="also subscribe to depth, confidence and points (as RViz would): the cloud is built")
    parser.add_argument("--domain", type=int, default=None,
                        help=f"ROS domain of the node and the probe (default: a random one in "
                             f"{PRIVATE_DOMAINS.start}-{PRIVATE_DOMAINS.stop - 1}, away from other graphs)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    result = run(args.model, args.process_res, [float(r) for r in args.rates.split(",")], args.seconds,
                 args.latency_rate, args.weights, args.device, args.all_outputs, args.domain)
    latency = result["latency_at_rate"]
    print(f"{result['node']} {result['model']} res {result['process_res']}: peak throughput "
          f"{result['peak_throughput_hz']:.1f} Hz (< 5 % drops); at {latency['rate_hz']:.0f} Hz input: "
          f"latency p50 {latency['p50_ms']:.0f} ms p95 {latency['p95_ms']:.0f} ms, node overhead p50 "
          f"{latency['overhead']['p50_ms']:.1f} ms, drops {100 * latency['drop_ratio']:.0f} %")
    print(f"stages at {latency['rate_hz']:.0f} Hz ({result['image']}, FASTDDS_BUILTIN_TRANSPORTS="
          f"{result['fastdds_builtin_transports'] or 'unset'}, all outputs subscribed: {result['all_outputs_subscribed']}"
          f", load average {result['load_average_1min']}):")
    print(stage_table(latency))
    if result["sweep"]:
        slowest = result["sweep"][0]
        print(f"stages at {slowest['rate_hz']:g} Hz:")
        print(stage_table(slowest))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
