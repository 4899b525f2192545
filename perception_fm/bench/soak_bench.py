"""perception-fm bench soak: feed a node for minutes as a robot would and watch what it keeps.

The node runs in its own process (depth_node by default: DA3-Small with random weights at a tiny resolution;
`--node concept` runs concept_node on the tiny SAM 3 test architecture, whose random weights are biased so
that objects stay tracked). Frames of the synthetic sample go to it over DDS at `--rate` Hz for `--minutes`
(depth_node also gets a camera_info per frame, stamped like its image). Meanwhile the node process's resident
memory is sampled every `--sample-s` seconds (psutil where installed, else /proc/<pid>/status).

Reported: the RSS slope in MB/min (least squares over the samples after `--warmup-s`, so model loading and
allocator warm-up do not count as a leak), frames sent / received by the node / processed, the node's drops
by reason (its /diagnostics counters over the soak), and latency (output receive time minus publish time, p50
and p95). Figures, not a test: a slope near 0 after warm-up is what a bounded node shows; what counts as a leak
depends on how long the robot runs. `--save` puts the result into bench/results/<device>.json as "soak".
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np


def rss_mb(pid: int) -> float:
    """Resident set size of process `pid` in MB (psutil if installed, else Linux's /proc)."""
    try:
        import psutil
    except ImportError:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024  # kB
        raise RuntimeError(f"no VmRSS in /proc/{pid}/status")
    return psutil.Process(pid).memory_info().rss / 2**20


def rss_slope(samples: list[tuple[float, float]], warmup_s: float) -> float:
    """MB per minute: least-squares slope of (seconds, MB) samples taken at or after `warmup_s`."""
    kept = np.array([(t, mb) for t, mb in samples if t >= warmup_s], float)
    if len(kept) < 2:
        return float("nan")
    slope_per_s = np.polyfit(kept[:, 0], kept[:, 1], 1)[0]
    return float(slope_per_s * 60.0)


class _Sampler(threading.Thread):
    """Samples a process's RSS every `period_s` until stopped: [(seconds since start, MB)]."""

    def __init__(self, pid: int, period_s: float):
        super().__init__(daemon=True)
        self.pid, self.period_s = pid, period_s
        self.samples: list[tuple[float, float]] = []
        self._stopping = threading.Event()

    def run(self):
        start = time.monotonic()
        while True:
            try:
                self.samples.append((time.monotonic() - start, rss_mb(self.pid)))
            except (OSError, RuntimeError):
                return  # the process has gone
            if self._stopping.wait(self.period_s):
                return

    def stop(self):
        self._stopping.set()
        self.join(timeout=10)


def _counters(diagnostics: dict, node_name: str) -> dict:
    for name, values in diagnostics.items():
        if node_name in name:
            return {k: int(v) for k, v in values.items()
                    if k in ("received", "processed", "dropped") or k.startswith("dropped_")}
    return {}


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"soak: {what} within {timeout:.0f} s")
        time.sleep(0.2)


def run(node: str = "depth", minutes: float = 10.0, rate_hz: float = 2.0, process_res: int = 112,
        sample_s: float = 5.0, warmup_s: float = 60.0, model: str = "da3-small") -> dict:
    from perception_fm.bench.common import sample_frames
    from perception_fm.bench.node_bench import _Harness, _percentiles

    frames = sample_frames(8)
    with contextlib.ExitStack() as stack:
        if node == "depth":
            node_name, weights = "depth_node", "random-init"
            command = ["-m", "perception_fm.nodes.depth_node", "--ros-args", "-p", f"model:={model}",
                       "-p", f"process_res:={process_res}", "-p", "random_weights:=true",
                       "-r", "camera_info:=/bench/camera_info"]
            output_type, output_topic, camera_info = None, "/depth/info", True
        else:
            from perception_fm.bench.sam3_tiny import TINY_IMAGE_SIZE, WEIGHTS_LABEL, save_tiny_checkpoint
            from perception_fm.msg import InstanceArray

            directory = save_tiny_checkpoint(stack.enter_context(tempfile.TemporaryDirectory(prefix="sam3-tiny-")))
            node_name, weights, model, process_res = "concept_node", WEIGHTS_LABEL, "sam3 (tiny)", TINY_IMAGE_SIZE
            command = ["-m", "perception_fm.nodes.concept_node", "--ros-args", "-p", f"weights:={directory}"]
            output_type, output_topic, camera_info = InstanceArray, "/instances", False
        command = [sys.executable, *command, "-p", "input_qos:=reliable", "-r", "image:=/bench/image"]
        # stderr to a file, not a pipe: a pipe nobody reads for minutes fills up and blocks the node
        log = stack.enter_context(tempfile.TemporaryFile(mode="w+"))
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=os.environ.copy())
        harness = _Harness(frames, output_type, output_topic, camera_info=camera_info, diagnostics=True)
        sampler = _Sampler(process.pid, sample_s)
        try:
            if node == "concept":
                from std_msgs.msg import String

                from rclpy.qos import QoSProfile, ReliabilityPolicy

                from perception_fm.ros.segmentation_io import TOPIC_CONCEPTS

                concepts = harness.node.create_publisher(String, "/" + TOPIC_CONCEPTS,
                                                         QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
                _wait(lambda: concepts.get_subscription_count() > 0, 300, "concept_node did not subscribe")
                concepts.publish(String(data="chair, table, lamp"))
            if not harness.wait_ready(300):
                raise RuntimeError(f"{node_name} produced no output within 300 s")
            # the readiness frames have drained (wait_ready waits for that): counters from a diagnostic published
            # after now are the baseline
            seen = harness.diagnostics_received
            _wait(lambda: harness.diagnostics_received > seen + 1 and _counters(harness.diagnostics, node_name), 60,
                  f"{node_name} published no /diagnostics")
            with harness.lock:
                harness.sent.clear()
                harness.received.clear()
                before = _counters(harness.diagnostics, node_name)
            sampler.start()
            period, count = 1.0 / rate_hz, max(int(rate_hz * minutes * 60), 1)
            start = time.perf_counter()
            last_progress = start
            for i in range(count):
                time.sleep(max(0.0, start + i * period - time.perf_counter()))
                harness.publish(i)
                if time.perf_counter() - last_progress >= 30:
                    last_progress = time.perf_counter()
                    rss = sampler.samples[-1][1] if sampler.samples else float("nan")
                    print(f"  {(last_progress - start) / 60:4.1f} min: {i + 1} frames sent, "
                          f"{len(harness.received)} outputs, RSS {rss:.0f} MB", flush=True)
            # the last frames drain: wait (up to two minutes) until two fresh diagnostics agree that the node has
            # received nothing more and accounted for every frame it received (processed or dropped). A frame
            # DDS never delivered (the publisher keeps only the latest) shows as sent but not received.
            seen, deadline, previous = harness.diagnostics_received, time.monotonic() + 120, None
            while time.monotonic() < deadline:
                time.sleep(0.5)
                with harness.lock:
                    if harness.diagnostics_received <= seen:
                        continue
                    seen, now = harness.diagnostics_received, _counters(harness.diagnostics, node_name)
                settled = now.get("processed", 0) + now.get("dropped", 0) >= now.get("received", 0)
                if settled and previous is not None and now.get("received") == previous.get("received"):
                    break
                previous = now
            sampler.stop()
            with harness.lock:
                after = _counters(harness.diagnostics, node_name)
                latencies = [(harness.received[s][0] - t) * 1e3 for s, t in harness.sent.items()
                             if s in harness.received]
                sent, outputs = len(harness.sent), len(latencies)
        finally:
            if sampler.is_alive():
                sampler.stop()
            harness.close()
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.seek(0)
            stderr = log.read()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    samples = sampler.samples
    return {
        "node": node_name, "model": model, "process_res": process_res, "weights": weights, "minutes": minutes,
        "rate_hz": rate_hz, "sample_s": sample_s, "warmup_s": warmup_s,
        "frames_sent": sent, "frames_received_by_node": delta.get("received", 0),
        "frames_processed": delta.get("processed", 0), "outputs_seen": outputs,
        "drops": {k[len("dropped_"):]: v for k, v in delta.items() if k.startswith("dropped_") and v},
        **_percentiles(latencies),
        "rss_samples": [[round(t, 1), round(mb, 1)] for t, mb in samples],
        "rss_first_mb": samples[0][1] if samples else float("nan"),
        "rss_last_mb": samples[-1][1] if samples else float("nan"),
        "rss_slope_mb_per_min": rss_slope(samples, warmup_s),
        "node_exit_code": process.returncode,
        "node_stderr_tracebacks": stderr.count("Traceback"),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="perception-fm bench soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--node", choices=("depth", "concept"), default="depth")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=2.0, help="input frames per second")
    parser.add_argument("--process-res", type=int, default=112, help="depth_node's process_res (multiple of 14)")
    parser.add_argument("--model", default="da3-small", help="depth_node's model")
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--warmup-s", type=float, default=60.0,
                        help="seconds of samples left out of the slope (model load, allocator and cache warm-up)")
    parser.add_argument("--json", help="also write the result to this file")
    parser.add_argument("--save", action="store_true", help="put the result into bench/results/<device>.json")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.sample_s <= 0:
        parser.error("--minutes, --rate and --sample-s must be positive")
    print(f"soak: {args.node}_node, {args.minutes:g} min at {args.rate:g} Hz", flush=True)
    result = run(args.node, args.minutes, args.rate, args.process_res, args.sample_s, args.warmup_s, args.model)
    drops = ", ".join(f"{k} {v}" for k, v in sorted(result["drops"].items())) or "none"
    print(f"{result['node']} ({result['model']} at {result['process_res']}, {result['weights']}), "
          f"{result['minutes']:g} min at {result['rate_hz']:g} Hz:")
    print(f"  RSS {result['rss_first_mb']:.0f} -> {result['rss_last_mb']:.0f} MB; slope "
          f"{result['rss_slope_mb_per_min']:+.2f} MB/min after {result['warmup_s']:.0f} s "
          f"({len(result['rss_samples'])} samples)")
    print(f"  frames: {result['frames_sent']} sent, {result['frames_received_by_node']} received by the node, "
          f"{result['frames_processed']} processed, {result['outputs_seen']} outputs seen; drops: {drops}")
    print(f"  latency p50 {result['p50_ms']:.0f} ms, p95 {result['p95_ms']:.0f} ms; node exit code "
          f"{result['node_exit_code']}, tracebacks on its stderr: {result['node_stderr_tracebacks']}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    if args.save:
        from perception_fm.bench.common import save_section

        print(f"wrote {save_section('soak', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
