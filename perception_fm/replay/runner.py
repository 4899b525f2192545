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

Where things are: reading bags (rosbag2 MCAP/sqlite3, ROS 1 .bag) and writing them is replay/bag_io.py
(ROS 1 conversion in replay/ros1.py); each node offline in replay/nodes.py on the base class of
replay/node_base.py; feeding the graph's nodes message by message in replay/stepping.py; the all-or-nothing
output directory in replay/output.py; the progress line in replay/progress.py; the report in replay/report.py.
This module runs them in order.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from perception_fm.graph import Graph
from perception_fm.replay.bag_io import BagReader, BagReadError, BagWriter
from perception_fm.replay.node_base import MARKER_ARRAY, Output, ReplayError, ReplayNode
from perception_fm.replay.nodes import (REPLAY_NODES, BodyReplay, ConceptReplay, DepthReplay, InstancesReplay,
                                        ObjectMeshReplay, SpeechReplay)
from perception_fm.replay.output import write_atomically
from perception_fm.replay.progress import Progress
from perception_fm.replay.report import REPORT_FILE, ReplayReport, save_report
from perception_fm.replay.stepping import GraphStep
from perception_fm.ros.tf import TfBuffer

__all__ = ["MARKER_ARRAY", "REPLAY_NODES", "REPORT_FILE", "BodyReplay", "ConceptReplay", "DepthReplay",
           "InstancesReplay", "ObjectMeshReplay", "Output", "ReplayError", "ReplayNode", "ReplayReport",
           "SpeechReplay", "replay"]

_Progress = Progress  # the name tests and older callers use


def replay(input_bag: str | Path, graph: Graph, output_bag: str | Path, *, progress: bool = True,
           overwrite: bool = False) -> ReplayReport:
    """Run `graph`'s nodes over `input_bag`, write `output_bag` (MCAP) and its report; return the report.

    The bag is written under a temporary name beside `output_bag` (.NAME.partial) and renamed when complete,
    so an interrupted or killed run never leaves something that looks like a finished output or blocks the
    next run (a leftover .partial is removed). An existing `output_bag` is an error unless `overwrite`."""
    output_bag = Path(output_bag)
    return write_atomically(output_bag, overwrite,
                            lambda partial: _replay_into(input_bag, graph, partial, output_bag, progress),
                            ReplayError)


def _replay_into(input_bag, graph: Graph, output_bag: Path, final_bag: Path, progress: bool) -> ReplayReport:
    """replay() writing into `output_bag` (the temporary directory); the report names `final_bag`."""
    started = time.perf_counter()
    tf = TfBuffer(cache_s=3600.0, max_samples=100_000)
    with BagReader(input_bag) as reader:
        step = GraphStep(graph, reader.topics, tf)
        warnings = step.warnings
        if reader.streaming:
            warnings.append(f"the bag has no index ({reader._reader.reason}): read as a stream up to its end or "
                            "its first damage")
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        step.connect()
        image_topics = step.image_topics
        bar = Progress(sum(reader.count(topic) for topic in image_topics), progress)
        unknown: dict = {}
        messages_in, bag_error, clock_ns = 0, None, 0
        with BagWriter(output_bag) as writer:
            step.writer = writer
            try:
                for item in reader.messages(unknown=unknown):
                    messages_in += 1
                    clock_ns = max(clock_ns, item.timestamp_ns)
                    if item.message is None:  # a type not installed here: passed through untouched
                        writer.write_raw(item)
                        continue
                    step.deliver(item)
                    if item.topic in image_topics:
                        bar.step()
            except BagReadError as error:
                bag_error = str(error)
                print(f"\nerror: {error}; the output holds everything before it", file=sys.stderr)
            step.flush(clock_ns, final=True)  # what still waits for inputs the bag did not have
            bar.close()
            outputs = dict(writer.counts)
    report = ReplayReport(
        input_bag=str(input_bag), output_bag=str(final_bag), nodes=[node.report() for node in step.nodes],
        messages_in=messages_in, outputs=outputs, wall_s=time.perf_counter() - started,
        unknown_types={topic: list(value) for topic, value in unknown.items()}, warnings=warnings,
        bag_error=bag_error,
    )
    save_report(report, output_bag, unknown)
    return report
