"""A graph node offline: the base class every replayed node derives from (perception_fm.replay.nodes), and the
Output a node's frame produces. A node's frames go through the same frame handler and stamp pairer as the
live node's (perception_fm.ros.*_io), on the bag's clock; drops, events and errors are counted for the report."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from perception_fm.core.stamp_pairing import StampPairer
from perception_fm.errors import BadInputError, PerceptionFmError
from perception_fm.graph import NodeConfig
from perception_fm.hookspecs import Task
from perception_fm.nodes.node_base import model_options
from perception_fm.plugin_manager import default_manager
from perception_fm.replay.bag_io import BagMessage
from perception_fm.ros.tf import TfBuffer, stamp_to_ns


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
