"""Offline replay: a bag through the nodes of a graph config, frame by frame, into an output bag.

Deterministic: messages are handled in the bag's log-time order, every frame is processed (no latest-frame
dropping, no wall clock), and outputs are written with the log time of the input that produced them. The
nodes' own frame handlers (perception_fm.ros.*_io) do the work, so outputs equal what the live nodes publish.
The output bag also holds every input message, so it opens on its own in RViz or Foxglove.
"""
from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from perception_fm.errors import BadInputError, PerceptionFmError
from perception_fm.graph import Graph, NodeConfig
from perception_fm.hookspecs import Task
from perception_fm.nodes.node_base import model_options
from perception_fm.plugin_manager import default_manager
from perception_fm.replay.bag_io import BagMessage, BagReader, BagReadError, BagWriter
from perception_fm.ros.tf import TF_STATIC_TOPIC, TF_TOPIC, TfBuffer

REPORT_FILE = "replay_report.json"


class ReplayError(PerceptionFmError):
    pass


@dataclass
class Output:
    topic: str
    message: object
    latched: bool = False


class DepthReplay:
    """depth_node offline: the same DepthFrameHandler as the live node, fed from the bag."""

    def __init__(self, node: NodeConfig, tf: TfBuffer):
        from perception_fm.ros import depth_io

        self.node = node
        self.values = node.resolved_parameters()
        name = self.values["model"] or "da3-small"
        self.model = default_manager().create(Task.DEPTH, name, model_options(self.values, ("process_res", "pose_method")))
        self.events: Counter[str] = Counter()
        self.handler = depth_io.DepthFrameHandler(
            self.model, self.values, tf_lookup=lambda target, source, stamp, wait: tf.lookup(target, source, stamp),
            on_event=lambda name: self.events.update([name]))
        compressed = self.values["image_transport"] == "compressed"
        self.image_topic = node.topic("image/compressed" if compressed else "image")
        self.camera_info_topic = node.topic("camera_info")
        self.topics = {name: node.topic(getattr(depth_io, f"TOPIC_{name.upper()}"))
                       for name in ("depth", "confidence", "depth_info", "depth_camera_info", "points", "path")}
        self.camera_info = None
        self.frames = 0
        self.drops: Counter[str] = Counter()
        self.inference_ms: list[float] = []
        self.errors: list[str] = []

    @property
    def inputs(self) -> set[str]:
        return {self.image_topic, self.camera_info_topic}

    def check_bag(self, topics: dict[str, str]) -> list[str]:
        """Errors that make the replay pointless, and warnings, given the bag's topics."""
        if self.image_topic not in topics:
            image_topics = sorted(t for t, typ in topics.items() if typ.startswith("sensor_msgs/msg/") and "Image" in typ)
            raise ReplayError(f"node {self.node.name!r} reads {self.image_topic!r}, which is not in the bag; image "
                              f"topics in the bag: {', '.join(image_topics) or 'none'} (set remappings.image)")
        warnings = []
        if self.camera_info_topic not in topics:
            warnings.append(f"{self.node.name}: no {self.camera_info_topic!r} in the bag: no intrinsics (clouds "
                            "use predicted intrinsics where the model has them; metric models cannot run)")
        return warnings

    def handle(self, item: BagMessage) -> list[Output]:
        if item.topic == self.camera_info_topic:
            self.camera_info = item.message
            return []
        self.frames += 1
        try:
            output, messages = self.handler.handle(item.message, self.camera_info)
        except BadInputError as error:
            self.drops[error.reason] += 1
            self._error(f"frame at {item.timestamp_ns} ns dropped ({error.reason}): {error}")
            return []
        except Exception as error:  # like the node: one bad frame never ends the run
            self.drops["error"] += 1
            self._error(f"frame at {item.timestamp_ns} ns failed: {type(error).__name__}: {error}")
            return []
        self.inference_ms.append(output.inference_ms)
        messages.info.inference_ms = 0.0  # timings go to the report: the bag is the same on every run
        if output.new_sequence and self.frames > 1:
            self.events["sequence_reset"] += 1
        from tf2_msgs.msg import TFMessage

        outputs = [Output(self.topics["depth"], messages.depth), Output(self.topics["depth_info"], messages.info)]
        optional = (("depth_camera_info", messages.camera_info), ("confidence", messages.confidence),
                    ("points", messages.points), ("path", messages.path))
        outputs += [Output(self.topics[name], message) for name, message in optional if message is not None]
        if messages.transform is not None:
            outputs.append(Output(TF_TOPIC, TFMessage(transforms=[messages.transform])))
        if messages.static_transforms:
            outputs.append(Output(TF_STATIC_TOPIC, TFMessage(transforms=messages.static_transforms), latched=True))
        return outputs

    def _error(self, text: str) -> None:
        if len(self.errors) < 20:  # bounded: a long bad stretch must not fill memory
            self.errors.append(text)

    def report(self) -> dict:
        timings = np.array(self.inference_ms) if self.inference_ms else np.zeros(1)
        return {
            "node": self.node.name, "task": "depth", "model": self.model.name, "weights": self.model.weights,
            "device": self.model.device, "input": self.image_topic, "frames": self.frames,
            "processed": len(self.inference_ms), "dropped": dict(self.drops), "events": dict(self.events),
            "inference_ms": {"mean": float(timings.mean()), "p50": float(np.percentile(timings, 50)),
                             "p95": float(np.percentile(timings, 95))},
            "errors": self.errors,
        }


REPLAY_NODES = {"depth_node": DepthReplay}


@dataclass
class ReplayReport:
    input_bag: str
    output_bag: str
    nodes: list[dict]
    messages_in: int
    outputs: dict[str, int]
    wall_s: float
    unknown_types: dict[str, list] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    bag_error: str | None = None

    def to_dict(self) -> dict:
        return self.__dict__.copy()


class _Progress:
    """One status line on stderr: frames, frames/s, ETA. Silent when stderr is not a terminal."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled and sys.stderr.isatty()
        self.done, self.started, self._last = 0, time.perf_counter(), 0.0

    def step(self) -> None:
        self.done += 1
        now = time.perf_counter()
        if self.enabled and (now - self._last > 0.25 or self.done == self.total):
            self._last = now
            rate = self.done / max(now - self.started, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            sys.stderr.write(f"\r  frame {self.done}/{self.total}  {rate:5.1f} frames/s  ETA {eta:5.0f} s ")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def replay(input_bag: str | Path, graph: Graph, output_bag: str | Path, *, progress: bool = True) -> ReplayReport:
    """Run `graph`'s nodes over `input_bag`, write `output_bag` (MCAP) and its report; return the report."""
    output_bag = Path(output_bag)
    if output_bag.exists():
        raise ReplayError(f"output {str(output_bag)!r} exists; remove it or choose another path")
    started = time.perf_counter()
    tf = TfBuffer(cache_s=3600.0, max_samples=100_000)
    with BagReader(input_bag) as reader:
        topics = reader.topics
        nodes = []
        for node in graph.nodes:
            if node.executable not in REPLAY_NODES:
                raise ReplayError(f"node {node.name!r} ({node.executable}) has no offline replay")
            nodes.append(REPLAY_NODES[node.executable](node, tf))
        warnings = [warning for node in nodes for warning in node.check_bag(topics)]
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        routes: dict[str, list] = {}
        for node in nodes:
            for topic in node.inputs:
                routes.setdefault(topic, []).append(node)
        frames = sum(reader.count(node.image_topic) for node in nodes)
        bar = _Progress(frames, progress)
        unknown: dict = {}
        messages_in, bag_error = 0, None
        with BagWriter(output_bag) as writer:
            try:
                for item in reader.messages(unknown=unknown):
                    messages_in += 1
                    writer.write(item.topic, item.message, item.timestamp_ns, latched=item.topic == TF_STATIC_TOPIC)
                    if item.topic in (TF_TOPIC, TF_STATIC_TOPIC):
                        tf.add(item.message, static=item.topic == TF_STATIC_TOPIC)
                    for node in routes.get(item.topic, ()):
                        for output in node.handle(item):
                            writer.write(output.topic, output.message, item.timestamp_ns, latched=output.latched)
                        if item.topic == node.image_topic:
                            bar.step()
            except BagReadError as error:
                bag_error = str(error)
                print(f"\nerror: {error}; the output holds everything before it", file=sys.stderr)
            bar.close()
            outputs = dict(writer.counts)
    report = ReplayReport(
        input_bag=str(input_bag), output_bag=str(output_bag), nodes=[node.report() for node in nodes],
        messages_in=messages_in, outputs=outputs, wall_s=time.perf_counter() - started,
        unknown_types={topic: list(value) for topic, value in unknown.items()}, warnings=warnings,
        bag_error=bag_error,
    )
    for topic, (msgtype, count) in unknown.items():
        print(f"warning: skipped {count} messages of {topic!r}: type {msgtype} is not installed here", file=sys.stderr)
    (output_bag / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2))
    return report
