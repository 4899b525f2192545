"""Graph stepping: the graph's replay nodes fed one bag message at a time.

GraphStep builds a ReplayNode per graph node, checks the bag has what they read, orders producers before
consumers and routes every message (from the bag or from a node) to the nodes that read its topic. A node's
outputs are written at once and delivered to its consumers before the next bag message, as on the live graph;
TF from the bag and from the nodes joins the shared TF buffer."""
from __future__ import annotations

from perception_fm.graph import Graph
from perception_fm.replay.bag_io import BagMessage, BagWriter
from perception_fm.replay.node_base import Output, ReplayError, ReplayNode
from perception_fm.replay.nodes import REPLAY_NODES, replay_node
from perception_fm.ros.tf import TF_STATIC_TOPIC, TF_TOPIC, TfBuffer


def producers_first(nodes: list[ReplayNode]) -> list[ReplayNode]:
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


class GraphStep:
    """The graph's nodes over one bag. Construction builds and checks the nodes (ReplayError when one cannot
    run on this bag; `warnings` lists what they will miss); `connect()` orders and routes them; then
    `deliver()` each bag message and `flush(final=True)` at the end, with `writer` set."""

    def __init__(self, graph: Graph, topics: dict[str, str], tf: TfBuffer):
        self.topics, self.tf = topics, tf
        self.writer: BagWriter | None = None
        nodes = []
        for node in graph.nodes:
            if node.executable not in REPLAY_NODES:
                raise ReplayError(f"node {node.name!r} ({node.executable}) has no offline replay; replayable: "
                                  + ", ".join(REPLAY_NODES))
            nodes.append(replay_node(node, tf))
        self.warnings = [warning for node in nodes for warning in node.check_bag(topics)]
        for node in nodes:
            if node.frame_topic not in topics and not any(node.frame_topic in other.outputs for other in nodes):
                raise ReplayError(f"node {node.node.name!r} works on {node.frame_topic!r}, which neither the bag "
                                  "nor a node of the graph provides (add its producer to the graph or remap it)")
        self.nodes = nodes
        self.routes: dict[str, list[ReplayNode]] = {}

    def connect(self) -> None:
        self.nodes = producers_first(self.nodes)
        available = set(self.topics) | {topic for node in self.nodes for topic in node.outputs}
        for node in self.nodes:  # pairers wait for the inputs that will come, as a live node waits for publishers
            node.expect_topics(available)
        for node in self.nodes:  # a node's outputs reach its consumers before the frame itself does
            for topic in node.inputs:
                self.routes.setdefault(topic, []).append(node)

    @property
    def image_topics(self) -> set[str]:
        """The bag's topics that are some node's images (the progress counts them)."""
        return {node.image_topic for node in self.nodes} & set(self.topics)

    def deliver(self, item: BagMessage) -> None:
        """One bag message: deferred work whose wait ended before it, the message itself (written through,
        TF recorded), the nodes reading it, and what that made ready."""
        self.flush(item.timestamp_ns)
        self.writer.write(item.topic, item.message, item.timestamp_ns, latched=item.topic == TF_STATIC_TOPIC)
        if item.topic in (TF_TOPIC, TF_STATIC_TOPIC):
            self.tf.add(item.message, static=item.topic == TF_STATIC_TOPIC)
        self.dispatch(item)
        self.flush(item.timestamp_ns)

    def emit(self, output: Output, timestamp_ns: int) -> None:
        timestamp_ns = output.timestamp_ns if output.timestamp_ns is not None else timestamp_ns
        self.writer.write(output.topic, output.message, timestamp_ns, latched=output.latched, msgtype=output.msgtype)
        if output.msgtype is not None:
            return  # serialised (markers): no node of ours consumes it
        if output.topic in (TF_TOPIC, TF_STATIC_TOPIC):
            self.tf.add(output.message, static=output.topic == TF_STATIC_TOPIC)
        self.dispatch(BagMessage(output.topic, "", timestamp_ns, output.message))

    def dispatch(self, item: BagMessage) -> None:
        for node in self.routes.get(item.topic, ()):
            for output in node.handle(item):
                self.emit(output, item.timestamp_ns)

    def flush(self, clock_ns: int, final: bool = False) -> None:
        for _ in range(len(self.nodes)):  # deferred work may feed other deferred work: at most one round per node
            outputs = [output for node in self.nodes for output in node.flush(clock_ns, final)]
            if not outputs:
                return
            for output in outputs:
                self.emit(output, clock_ns)
