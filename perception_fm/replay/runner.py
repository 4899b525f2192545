"""Offline replay: a bag through the nodes of a graph config, frame by frame, into an output bag.

Deterministic: messages are handled in the bag's log-time order, every frame is processed (no latest-frame
dropping, no wall clock), and outputs are written with the log time of the input that produced them. The
nodes' own frame handlers (perception_fm.ros.*_io) do the work, so outputs equal what the live nodes publish.
The output bag also holds every input message, so it opens on its own in RViz or Foxglove.

A node's outputs are delivered to the nodes of the graph that consume them at once (depth_node's depth reaches
concept_node before the frame itself does), and their TF joins the replay's TF buffer, as it would the live
graph's. Nodes driven by tracked instances (object_mesh_node, body_node) handle an InstanceArray once the image,
camera_info and depth of its stamp have arrived, or once bag time has passed the node's own wait for them
(depth_wait), whatever the order of the graph's nodes; their outputs get the log time at which they ran.
speech_node's frames are audio chunks: a spoken command reaches a
concept_node of the graph before the next image.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from perception_fm.core.stamp_pairing import StampPairer
from perception_fm.errors import BadInputError, PerceptionFmError
from perception_fm.graph import Graph, NodeConfig
from perception_fm.hookspecs import Task
from perception_fm.nodes.node_base import model_options
from perception_fm.plugin_manager import default_manager
from perception_fm.replay.bag_io import BagMessage, BagReader, BagReadError, BagWriter
from perception_fm.ros.tf import TF_STATIC_TOPIC, TF_TOPIC, TfBuffer, stamp_to_ns

REPORT_FILE = "replay_report.json"


class ReplayError(PerceptionFmError):
    pass


MARKER_ARRAY = "visualization_msgs/msg/MarkerArray"


@dataclass
class Output:
    topic: str
    message: object  # an rclpy message, or serialised bytes (then `msgtype` says what they are)
    latched: bool = False
    msgtype: str | None = None
    timestamp_ns: int | None = None  # log time; default: that of the bag message being delivered


class ReplayNode:
    """A node offline: its task's frame handler fed from the bag. Subclasses set `task` and implement
    `setup()`, `inputs` and `on_frame(frame) -> (inference_ms, outputs)`. A node whose frames wait for inputs
    of their stamp builds, in `setup()`, the pairer of its frame handler module (`self.pairer`, on the bag's
    clock `self.clock_ns`) and says which topics feed which of its inputs (`self.paired_topics`): the replay
    then pairs, waits and counts exactly as the live node does; `on_frame` gets the released
    perception_fm.core.stamp_pairing.Paired. Without a pairer `on_frame` gets the BagMessage."""

    task: Task
    idle_event: str | None = "skipped"  # counted for a frame on which the model did not run

    @property
    def extra_params(self) -> tuple[str, ...]:
        """Parameters passed to the model (the node's model_extra_params)."""
        return ()

    def __init__(self, node: NodeConfig, tf: TfBuffer):
        self.node = node
        self.tf = tf
        self.values = node.resolved_parameters()
        self.model = default_manager().create(self.task, self.values["model"],
                                              model_options(self.values, self.extra_params))
        compressed = self.values.get("image_transport") == "compressed"
        self.image_topic = node.topic("image/compressed" if compressed else "image")
        self.frames = 0
        self.drops: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.inference_ms: list[float] = []
        self.errors: list[str] = []
        self.clock_ns = 0  # the bag's log time: the clock of this node's pairer
        self.pairer: StampPairer | None = None
        self.paired_topics: dict[str, list[str]] = {}  # topic -> the pairer inputs it feeds
        self.setup()

    def clock(self) -> int:
        return self.clock_ns

    def count_event(self, name: str) -> None:
        self.events[name] += 1

    def count_drop(self, reason: str) -> None:
        self.drops[reason] += 1

    def feeds(self, input_name: str, topic: str) -> None:
        self.paired_topics.setdefault(topic, []).append(input_name)

    def setup(self) -> None:
        raise NotImplementedError

    @property
    def inputs(self) -> set[str]:
        return {self.image_topic, *self.paired_topics}

    @property
    def frame_topic(self) -> str:
        """The topic whose messages are this node's frames."""
        return self.image_topic

    @property
    def outputs(self) -> set[str]:
        return set(self.topics.values())

    def check_bag(self, topics: dict[str, str]) -> list[str]:
        """Raise ReplayError when the node's image topic is missing; return warnings."""
        if self.image_topic not in topics:
            image_topics = sorted(t for t, typ in topics.items() if typ.startswith("sensor_msgs/msg/") and "Image" in typ)
            raise ReplayError(f"node {self.node.name!r} reads {self.image_topic!r}, which is not in the bag; image "
                              f"topics in the bag: {', '.join(image_topics) or 'none'} (set remappings.image)")
        return []

    def expect_topics(self, available: set[str]) -> None:
        """The topics the bag or a node of the graph provides: the pairer waits for those inputs only."""
        if self.pairer is not None:
            for topic, names in self.paired_topics.items():
                for name in names:
                    self.pairer.expect(name, topic in available)

    def handle(self, item: BagMessage) -> list[Output]:
        self.clock_ns = max(self.clock_ns, item.timestamp_ns)
        released: list = []
        if item.topic == self.frame_topic:
            self.frames += 1
            if self.pairer is None:
                return self.frame(item)
            released += self.pairer.add_frame(stamp_to_ns(item.message.header.stamp), item.message)
        else:
            self.on_input(item)
        if self.pairer is not None:
            for name in self.paired_topics.get(item.topic, ()):  # one topic may feed two inputs
                released += self.pairer.add(name, stamp_to_ns(item.message.header.stamp), item.message)
        return [output for paired in released for output in self.frame(paired)]

    def flush(self, clock_ns: int, final: bool = False) -> list[Output]:
        """Outputs of deferred work that can run now: `clock_ns` is the log time of the bag message just
        delivered (or about to be), `final` says the bag has ended."""
        if self.pairer is None:
            return []
        self.clock_ns = max(self.clock_ns, clock_ns)
        return [output for paired in self.pairer.poll(final) for output in self.frame(paired)]

    def frame(self, item) -> list[Output]:
        try:
            inference_ms, outputs = self.on_frame(item)
        except BadInputError as error:
            self.drops[error.reason] += 1
            self._error(f"frame at {self.clock_ns} ns dropped ({error.reason}): {error}")
            return []
        except Exception as error:  # like the node: one bad frame never ends the run
            self.drops["error"] += 1
            self._error(f"frame at {self.clock_ns} ns failed: {type(error).__name__}: {error}")
            return []
        if inference_ms is None:
            if self.idle_event:
                self.events[self.idle_event] += 1
        else:
            self.inference_ms.append(inference_ms)
        return outputs

    def on_input(self, item: BagMessage) -> None:
        pass

    def on_frame(self, item) -> tuple[float | None, list[Output]]:
        raise NotImplementedError

    def _error(self, text: str) -> None:
        if len(self.errors) < 20:  # bounded: a long bad stretch must not fill memory
            self.errors.append(text)

    def report(self) -> dict:
        timings = np.array(self.inference_ms) if self.inference_ms else np.zeros(1)
        return {
            "node": self.node.name, "task": str(self.task), "model": self.model.name, "weights": self.model.weights,
            "device": self.model.device, "input": self.frame_topic, "frames": self.frames,
            "processed": len(self.inference_ms), "dropped": dict(self.drops), "events": dict(self.events),
            "inference_ms": {"mean": float(timings.mean()), "p50": float(np.percentile(timings, 50)),
                             "p95": float(np.percentile(timings, 95))},
            "parameters": _json_safe(self.values),
            "errors": self.errors,
        }


def _json_safe(values: dict) -> dict:
    """The node's configured parameters (every one, defaults filled in) as JSON values."""
    return {name: value if isinstance(value, (bool, int, float, str)) or value is None else str(value)
            for name, value in sorted(values.items())}


class DepthReplay(ReplayNode):
    """depth_node offline: the same pairer and DepthFrameHandler as the live node."""

    task = Task.DEPTH

    def setup(self) -> None:
        from perception_fm.ros import depth_io

        self.handler = depth_io.DepthFrameHandler(
            self.model, self.values,
            tf_lookup=lambda target, source, stamp, wait: self.tf.lookup(target, source, stamp),
            on_event=self.count_event)
        self.camera_info_topic = self.node.topic("camera_info")
        self.pairer = depth_io.depth_pairer(self.values, self.clock, on_event=self.count_event,
                                            on_drop=self.count_drop)
        self.feeds(depth_io.CAMERA_INFO, self.camera_info_topic)
        self.topics = {name: self.node.topic(getattr(depth_io, f"TOPIC_{name.upper()}"))
                       for name in ("depth", "confidence", "depth_info", "depth_camera_info", "points", "path")}
        self._processed_before = False

    @property
    def extra_params(self) -> tuple[str, ...]:
        from perception_fm.ros.depth_io import MODEL_EXTRA_PARAMS

        return MODEL_EXTRA_PARAMS

    def check_bag(self, topics: dict[str, str]) -> list[str]:
        warnings = super().check_bag(topics)
        if self.camera_info_topic not in topics:
            warnings.append(f"{self.node.name}: no {self.camera_info_topic!r} in the bag: no intrinsics (clouds "
                            "use predicted intrinsics where the model has them; metric models cannot run)")
        return warnings

    def on_frame(self, paired):
        from tf2_msgs.msg import TFMessage

        from perception_fm.ros.depth_io import CAMERA_INFO

        output, messages = self.handler.handle(paired.frame, paired.inputs[CAMERA_INFO])
        if output.new_sequence and self._processed_before:
            self.events["sequence_reset"] += 1
        self._processed_before = True
        # DepthInfo.inference_ms stays 0 in a replayed bag (see DepthInfo.msg): the output bag is the same
        # on every run; the timings are in the report
        messages.info.inference_ms = 0.0
        outputs = [Output(self.topics["depth"], messages.depth), Output(self.topics["depth_info"], messages.info)]
        optional = (("depth_camera_info", messages.camera_info), ("confidence", messages.confidence),
                    ("points", messages.points), ("path", messages.path))
        outputs += [Output(self.topics[name], message) for name, message in optional if message is not None]
        if messages.transform is not None:
            outputs.append(Output(TF_TOPIC, TFMessage(transforms=[messages.transform])))
        if messages.static_transforms:
            outputs.append(Output(TF_STATIC_TOPIC, TFMessage(transforms=messages.static_transforms), latched=True))
        return output.inference_ms, outputs


class ConceptReplay(ReplayNode):
    """concept_node offline: concepts from its parameter and from the bag's `concepts` topic; depth (use_depth)
    through the node's own depth pairer, from the bag or from a depth node of the same graph."""

    task = Task.SEGMENTATION

    def setup(self) -> None:
        from perception_fm.ros import segmentation_io as io

        self.io = io
        self.handler = io.SegmentationFrameHandler(self.model, self.values)
        self.concepts_topic = self.node.topic(io.TOPIC_CONCEPTS)
        self.depth_info_topic = self.node.topic("depth/info")
        self.pairer = io.depth_pairer(self.values, self.clock, on_event=self.count_event, on_drop=self.count_drop)
        if self.values["use_depth"]:
            self.feeds(io.DEPTH, self.node.topic(io.TOPIC_DEPTH))
            self.feeds(io.DEPTH_CAMERA_INFO, self.node.topic(io.TOPIC_DEPTH_CAMERA_INFO))
        self.depth_metric = False
        self.topics = {name: self.node.topic(getattr(io, f"TOPIC_{name.upper()}"))
                       for name in ("instances", "labels", "overlay", "markers")}

    @property
    def extra_params(self) -> tuple[str, ...]:
        from perception_fm.ros.segmentation_io import MODEL_EXTRA_PARAMS

        return MODEL_EXTRA_PARAMS

    @property
    def inputs(self) -> set[str]:
        depth_info = {self.depth_info_topic} if self.values["use_depth"] else set()
        return super().inputs | {self.concepts_topic} | depth_info

    def on_input(self, item: BagMessage) -> None:
        if item.topic == self.concepts_topic:  # counted and summarised as the live node does
            outcome = self.handler.concepts.apply_message(item.message.data)
            if outcome.empty:
                self.events["concept_messages_empty"] += 1
                self._error(f"concepts message at {item.timestamp_ns} ns: {outcome.summary()}")
                return
            self.events["concept_messages_applied"] += 1
            if outcome.refused:
                self.events["bad_concept"] += len(outcome.refused)
                self._error(f"concepts message at {item.timestamp_ns} ns: {outcome.summary()}")
        elif item.topic == self.depth_info_topic and self.values["use_depth"]:
            self.depth_metric = item.message.is_metric

    def on_frame(self, paired):
        depth = self.io.paired_depth(paired, self.depth_metric)
        result = self.handler.handle(paired.frame, depth)
        if result is None:
            return None, []
        _, messages = result
        inference_ms, messages.instances.inference_ms = messages.instances.inference_ms, 0.0
        outputs = [Output(self.topics["instances"], messages.instances)]
        for name in ("labels", "overlay", "markers"):
            message = getattr(messages, name)
            if message is not None:
                outputs.append(Output(self.topics[name], message))
        return inference_ms, outputs


class InstancesReplay(ReplayNode):
    """A node driven by tracked instances (InstanceArray, from the bag or a concept_node of the graph), each
    paired with the image, camera_info (and depth) of its stamp by the same pairer as the live node
    (perception_fm.ros.pairing.instances_pairer), on the bag's clock."""

    use_depth = False

    def setup(self) -> None:
        from perception_fm.ros import pairing

        self.instances_topic = self.node.topic("instances")
        self.camera_info_topic = self.node.topic("camera_info")
        self.setup_handler()
        self.pairer = pairing.instances_pairer(self.values, self.clock, use_depth=self.use_depth,
                                               on_event=self.count_event, on_drop=self.count_drop,
                                               tf_lookup=self.tf.lookup)
        self.feeds(pairing.IMAGE, self.image_topic)
        self.feeds(pairing.CAMERA_INFO, self.camera_info_topic)
        if self.use_depth:
            self.feeds(pairing.DEPTH, self.node.topic("depth/image"))
            self.feeds(pairing.DEPTH_CAMERA_INFO, self.node.topic("depth/camera_info"))

    def setup_handler(self) -> None:
        raise NotImplementedError

    @property
    def frame_topic(self) -> str:
        return self.instances_topic

    @property
    def inputs(self) -> set[str]:
        return super().inputs | {self.instances_topic}


class ObjectMeshReplay(InstancesReplay):
    """object_mesh_node offline: the same ObjectMeshHandler. A lift runs as soon as it is selected (the live
    node queues it for its worker), so every run lifts the same tracks from the same frames."""

    task = Task.OBJECT_MESH

    def setup_handler(self) -> None:
        from perception_fm.ros import object_mesh_io as io

        self.use_depth = self.values["use_depth"]
        self.handler = io.ObjectMeshHandler(self.model, self.values, on_event=self.count_event)
        self.topics = {"objects": self.node.topic(io.TOPIC_OBJECTS), "markers": self.node.topic(io.TOPIC_MARKERS)}

    @property
    def extra_params(self) -> tuple[str, ...]:
        from perception_fm.ros.object_mesh_io import MODEL_EXTRA_PARAMS

        return MODEL_EXTRA_PARAMS

    def on_frame(self, paired):
        from tf2_msgs.msg import TFMessage

        jobs = self.handler.select_paired(paired, self.tf.lookup)
        if not jobs:
            return None, []
        outputs, inference_ms = [], 0.0
        for job in jobs:  # as in the live node's worker: one failed lift loses nothing else
            try:
                lifted, messages = self.handler.run(job)
            except Exception as error:
                self.drops["lift_failed"] += 1
                self._error(f"object {job.id} at {self.clock_ns} ns not lifted: {type(error).__name__}: {error}")
                continue
            inference_ms += lifted.inference_ms
            messages.object.inference_ms = 0.0  # timings go to the report: the bag is the same on every run
            outputs += [Output(self.topics["objects"], messages.object),
                        Output(self.topics["markers"], messages.markers, latched=True, msgtype=MARKER_ARRAY),
                        Output(TF_STATIC_TOPIC, TFMessage(transforms=messages.transforms), latched=True)]
        return inference_ms, outputs


class BodyReplay(InstancesReplay):
    """body_node offline: the same BodyFrameHandler, on every array with people in it."""

    task = Task.BODY_MESH

    def setup_handler(self) -> None:
        from perception_fm.ros import body_io as io

        self.handler = io.BodyFrameHandler(self.model, self.values)
        self.topics = {"bodies": self.node.topic(io.TOPIC_BODIES), "markers": self.node.topic(io.TOPIC_MARKERS)}

    @property
    def extra_params(self) -> tuple[str, ...]:
        from perception_fm.ros.body_io import MODEL_EXTRA_PARAMS

        return MODEL_EXTRA_PARAMS

    def on_frame(self, paired):
        from tf2_msgs.msg import TFMessage

        inference_ms, messages = self.handler.handle_paired(paired)
        if messages is None:
            return None, []
        outputs = [Output(self.topics["bodies"], body) for body in messages.bodies]
        if messages.markers is not None:
            outputs.append(Output(self.topics["markers"], messages.markers, msgtype=MARKER_ARRAY))
        if messages.transforms:
            outputs.append(Output(TF_TOPIC, TFMessage(transforms=messages.transforms)))
        return inference_ms, outputs


class SpeechReplay(ReplayNode):
    """speech_node offline: the bag's audio chunks through the same voice-activity detector and listener. An
    utterance is transcribed when the chunk that ends it is delivered (the end of the bag ends the last one),
    so its `concepts` reach a concept_node of the graph before the next image. Frames are audio chunks."""

    task = Task.SPEECH
    idle_event = None  # most chunks end no utterance

    def setup(self) -> None:
        from perception_fm.speech.params import TOPIC_AUDIO, TOPIC_CONCEPTS, TOPIC_TRANSCRIPT, parse_phrase_list
        from perception_fm.speech.vad import EnergyVad, vad_config_from

        self.image_topic = None  # audio, not images
        self.audio_topic = self.node.topic(TOPIC_AUDIO)
        self.vad = EnergyVad(vad_config_from(self.values))
        self.phrases = parse_phrase_list(self.values["phrase_list"])
        self.topics = {"concepts": self.node.topic(TOPIC_CONCEPTS), "transcript": self.node.topic(TOPIC_TRANSCRIPT)}

    @property
    def extra_params(self) -> tuple[str, ...]:
        from perception_fm.speech.params import MODEL_EXTRA_PARAMS

        return MODEL_EXTRA_PARAMS

    @property
    def frame_topic(self) -> str:
        return self.audio_topic

    @property
    def inputs(self) -> set[str]:
        return {self.audio_topic}

    def check_bag(self, topics: dict[str, str]) -> list[str]:
        if self.audio_topic not in topics:
            audio = sorted(t for t, typ in topics.items() if typ == "perception_fm/msg/AudioData")
            raise ReplayError(f"node {self.node.name!r} reads {self.audio_topic!r}, which is not in the bag; audio "
                              f"topics in the bag: {', '.join(audio) or 'none'} (set remappings.audio)")
        warnings = []
        if self.values["source"] == "microphone":
            warnings.append(f"{self.node.name}: source is microphone; offline it listens to {self.audio_topic!r}")
        if self.phrases and not self.model.capabilities.phrase_list:
            warnings.append(f"{self.node.name}: {self.model.name} takes no phrase list; phrase_list is ignored")
        return warnings

    def on_frame(self, item: BagMessage):
        from perception_fm.speech.audio import decode_audio

        samples, rate = decode_audio(item.message)  # BadInputError: a counted drop
        before = (self.vad.stats.too_short, self.vad.stats.cut)
        utterances = self.vad.feed(samples, rate)
        for name, count in (("utterances_too_short", self.vad.stats.too_short - before[0]),
                            ("utterances_cut", self.vad.stats.cut - before[1])):
            if count:
                self.events[name] += count
        return self._listen(utterances)

    def flush(self, clock_ns: int, final: bool = False) -> list[Output]:
        if not final:
            return []
        _, outputs = self._listen(self.vad.flush())
        return outputs

    def _listen(self, utterances) -> tuple[float | None, list[Output]]:
        from std_msgs.msg import String

        from perception_fm.speech.listener import listen

        if not utterances:
            return None, []
        outputs, inference_ms = [], 0.0
        for utterance in utterances:
            heard = listen(self.model, utterance, self.phrases, self.values["min_confidence"],
                           self.values["destructive_min_confidence"])
            inference_ms += heard.inference_ms
            self.events[heard.outcome] += max(len(heard.commands), 1)
            outputs.append(Output(self.topics["transcript"], String(data=heard.transcript_message)))
            outputs += [Output(self.topics["concepts"], String(data=text)) for text in heard.concepts_messages]
        return inference_ms, outputs


REPLAY_NODES = {"depth_node": DepthReplay, "concept_node": ConceptReplay, "object_mesh_node": ObjectMeshReplay,
                "body_node": BodyReplay, "speech_node": SpeechReplay}


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


def _producers_first(nodes: list[ReplayNode]) -> list[ReplayNode]:
    """Nodes ordered so that a node producing a topic comes before the nodes consuming it (stable
    otherwise): e.g. depth_node before a concept_node using its depth, whatever the config's order."""
    ordered, remaining = [], list(nodes)
    while remaining:
        ready = [n for n in remaining
                 if not any(n.inputs & other.outputs for other in remaining if other is not n)]
        if not ready:
            raise ReplayError("the graph's nodes feed each other in a cycle: "
                              + ", ".join(n.node.name for n in remaining))
        ordered.append(ready[0])
        remaining.remove(ready[0])
    return ordered


class _Progress:
    """Progress on stderr: frames, frames/s, ETA. On a terminal one line redrawn 4 times a second; otherwise
    (CI logs, `| tee`, nohup) a plain line every PLAIN_PERIOD_S, so a long run never looks hung."""

    PLAIN_PERIOD_S = 5.0

    def __init__(self, total: int, enabled: bool, stream=None):
        self.stream = stream or sys.stderr
        self.total, self.enabled = total, enabled
        self.tty = self.stream.isatty()
        self.done, self.started, self._last = 0, time.perf_counter(), time.perf_counter()

    def step(self) -> None:
        self.done += 1
        if not self.enabled:
            return
        now = time.perf_counter()
        period = 0.25 if self.tty else self.PLAIN_PERIOD_S
        if now - self._last > period or (self.tty and self.done == self.total):
            self._last = now
            rate = self.done / max(now - self.started, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            text = f"frame {self.done}/{self.total}  {rate:5.1f} frames/s  ETA {eta:5.0f} s"
            self.stream.write(f"\r  {text} " if self.tty else f"replay: {text}\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")


def replay(input_bag: str | Path, graph: Graph, output_bag: str | Path, *, progress: bool = True,
           overwrite: bool = False) -> ReplayReport:
    """Run `graph`'s nodes over `input_bag`, write `output_bag` (MCAP) and its report; return the report.

    The bag is written under a temporary name beside `output_bag` (.NAME.partial) and renamed when complete,
    so an interrupted or killed run never leaves something that looks like a finished output or blocks the
    next run (a leftover .partial is removed). An existing `output_bag` is an error unless `overwrite`."""
    output_bag = Path(output_bag)
    if output_bag.exists() and not overwrite:
        raise ReplayError(f"output {str(output_bag)!r} exists; remove it, choose another path or overwrite it "
                          "(--overwrite)")
    partial = output_bag.with_name(f".{output_bag.name}.partial")
    _remove(partial)  # left by a run that was killed
    try:
        report = _replay_into(input_bag, graph, partial, output_bag, progress)
    except BaseException:
        _remove(partial)
        raise
    if output_bag.exists():  # overwrite: the old output goes only once the new one is complete
        old = output_bag.with_name(f".{output_bag.name}.old")
        _remove(old)
        output_bag.rename(old)
        partial.rename(output_bag)
        _remove(old)
    else:
        partial.rename(output_bag)
    return report


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _replay_into(input_bag, graph: Graph, output_bag: Path, final_bag: Path, progress: bool) -> ReplayReport:
    """replay() writing into `output_bag` (the temporary directory); the report names `final_bag`."""
    started = time.perf_counter()
    tf = TfBuffer(cache_s=3600.0, max_samples=100_000)
    with BagReader(input_bag) as reader:
        topics = reader.topics
        nodes = []
        for node in graph.nodes:
            if node.executable not in REPLAY_NODES:
                raise ReplayError(f"node {node.name!r} ({node.executable}) has no offline replay; replayable: "
                                  + ", ".join(REPLAY_NODES))
            nodes.append(REPLAY_NODES[node.executable](node, tf))
        warnings = [warning for node in nodes for warning in node.check_bag(topics)]
        for node in nodes:
            if node.frame_topic not in topics and not any(node.frame_topic in other.outputs for other in nodes):
                raise ReplayError(f"node {node.node.name!r} works on {node.frame_topic!r}, which neither the bag "
                                  "nor a node of the graph provides (add its producer to the graph or remap it)")
        if reader.streaming:
            warnings.append(f"the bag has no index ({reader._reader.reason}): read as a stream up to its end or "
                            "its first damage")
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        nodes = _producers_first(nodes)
        available = set(topics) | {topic for node in nodes for topic in node.outputs}
        for node in nodes:  # pairers wait for the inputs that will come, as a live node waits for publishers
            node.expect_topics(available)
        routes: dict[str, list] = {}
        for node in nodes:  # a node's outputs reach its consumers before the frame itself does
            for topic in node.inputs:
                routes.setdefault(topic, []).append(node)

        def emit(output: Output, timestamp_ns: int) -> None:
            timestamp_ns = output.timestamp_ns if output.timestamp_ns is not None else timestamp_ns
            writer.write(output.topic, output.message, timestamp_ns, latched=output.latched, msgtype=output.msgtype)
            if output.msgtype is not None:
                return  # serialised (markers): no node of ours consumes it
            if output.topic in (TF_TOPIC, TF_STATIC_TOPIC):
                tf.add(output.message, static=output.topic == TF_STATIC_TOPIC)
            dispatch(BagMessage(output.topic, "", timestamp_ns, output.message))

        def dispatch(item: BagMessage) -> None:
            for node in routes.get(item.topic, ()):
                for output in node.handle(item):
                    emit(output, item.timestamp_ns)

        def flush(clock_ns: int, final: bool = False) -> None:
            for _ in range(len(nodes)):  # deferred work may feed other deferred work: at most one round per node
                outputs = [output for node in nodes for output in node.flush(clock_ns, final)]
                if not outputs:
                    return
                for output in outputs:
                    emit(output, clock_ns)

        image_topics = {node.image_topic for node in nodes} & set(topics)
        bar = _Progress(sum(reader.count(topic) for topic in image_topics), progress)
        unknown: dict = {}
        messages_in, bag_error, clock_ns = 0, None, 0
        with BagWriter(output_bag) as writer:
            try:
                for item in reader.messages(unknown=unknown):
                    messages_in += 1
                    clock_ns = max(clock_ns, item.timestamp_ns)
                    if item.message is None:  # a type not installed here: passed through untouched
                        writer.write_raw(item)
                        continue
                    flush(item.timestamp_ns)  # work whose wait ended before this message
                    writer.write(item.topic, item.message, item.timestamp_ns, latched=item.topic == TF_STATIC_TOPIC)
                    if item.topic in (TF_TOPIC, TF_STATIC_TOPIC):
                        tf.add(item.message, static=item.topic == TF_STATIC_TOPIC)
                    dispatch(item)
                    flush(item.timestamp_ns)
                    if item.topic in image_topics:
                        bar.step()
            except BagReadError as error:
                bag_error = str(error)
                print(f"\nerror: {error}; the output holds everything before it", file=sys.stderr)
            flush(clock_ns, final=True)  # what still waits for inputs the bag did not have
            bar.close()
            outputs = dict(writer.counts)
    report = ReplayReport(
        input_bag=str(input_bag), output_bag=str(final_bag), nodes=[node.report() for node in nodes],
        messages_in=messages_in, outputs=outputs, wall_s=time.perf_counter() - started,
        unknown_types={topic: list(value) for topic, value in unknown.items()}, warnings=warnings,
        bag_error=bag_error,
    )
    for topic, (msgtype, count) in unknown.items():
        print(f"warning: {count} messages of {topic!r} passed through unread: type {msgtype} is not installed "
              "here", file=sys.stderr)
    (output_bag / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2))
    return report
