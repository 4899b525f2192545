"""Camera rigs offline: depth_node and concept_node with `cameras` set, replayed through the live nodes' own rig
handlers (perception_fm.ros.depth_rig_io, perception_fm.ros.concept_rig_io) and the same camera grouping
(perception_fm.core.camera_group) on the bag's log time, as ReplayNode's pairers are. Each camera's frames
are its image topic's messages (depth: each first stamp-paired with its camera_info, as live); a group leaves
when every camera is in it or when bag time has passed its opening by rig_wait (the end of the bag releases
what is left). Outputs go to the topics the live node publishes."""
from __future__ import annotations

from perception_fm.core.camera_group import CameraGroup, CameraGrouper
from perception_fm.hookspecs import Task
from perception_fm.replay.bag_io import BagMessage
from perception_fm.replay.node_base import Output, ReplayError, ReplayNode
from perception_fm.ros.tf import stamp_to_ns


class RigReplay(ReplayNode):
    """The rig's grouping in a replayed node. Subclasses: `setup_rig()` (the handler, output topics),
    `pairs_camera_info`, `on_frame(group)`."""

    pairs_camera_info = False  # each camera's image waits for its camera_info of the same stamp (depth)

    def setup(self) -> None:
        from perception_fm.ros.depth_rig_io import parse_cameras

        self.streams = parse_cameras(self.values["cameras"])
        compressed = self.values.get("image_transport") == "compressed"
        self.camera_of = {self.graph_topic(f"{s.image_topic}/compressed" if compressed else s.image_topic): s.name
                          for s in self.streams}
        self.image_topic = next(iter(self.camera_of))  # the progress counts the first camera's frames
        self.info_topics = {self.graph_topic(s.camera_info_topic): s.name for s in self.streams} \
            if self.pairs_camera_info else {}
        self.grouper = CameraGrouper([s.name for s in self.streams], self.clock,
                                     tolerance_s=self.values["rig_tolerance"], wait_s=self.values["rig_wait"],
                                     on_event=self.count_event, on_drop=self.count_drop)
        self.camera_pairers = {}
        if self.pairs_camera_info:
            from perception_fm.ros import depth_io

            self.camera_pairers = {s.name: depth_io.depth_pairer(self.values, self.clock, on_event=self.count_event,
                                                                 on_drop=self.count_drop) for s in self.streams}
        self.setup_rig()

    def setup_rig(self) -> None:
        raise NotImplementedError

    def graph_topic(self, name: str) -> str:
        """A topic as the live node resolves it: absolute names as they are, relative ones in its namespace."""
        return name if name.startswith("/") else self.node.topic(name)

    def output_topic(self, stream, topic: str) -> str:
        return self.graph_topic(stream.output(topic))

    @property
    def inputs(self) -> set[str]:
        return set(self.camera_of) | set(self.info_topics)

    def check_bag(self, topics: dict[str, str]) -> list[str]:
        missing = [topic for topic in self.camera_of if topic not in topics]
        if missing:
            image_topics = sorted(t for t, typ in topics.items() if typ.startswith("sensor_msgs/msg/") and "Image" in typ)
            raise ReplayError(f"node {self.node.name!r}: camera image topics {', '.join(missing)} are not in the bag; "
                              f"image topics in the bag: {', '.join(image_topics) or 'none'} (see its 'cameras')")
        return [f"{self.node.name}: no {topic!r} in the bag: camera {camera} has no intrinsics"
                for topic, camera in self.info_topics.items() if topic not in topics]

    def expect_topics(self, available: set[str]) -> None:
        from perception_fm.ros.depth_io import CAMERA_INFO

        for topic, camera in self.info_topics.items():
            self.camera_pairers[camera].expect(CAMERA_INFO, topic in available)

    def handle(self, item: BagMessage) -> list[Output]:
        self.clock_ns = max(self.clock_ns, item.timestamp_ns)
        stamp = stamp_to_ns(item.message.header.stamp) if hasattr(item.message, "header") else 0
        groups: list[CameraGroup] = []
        camera = self.camera_of.get(item.topic)
        if camera is not None:
            self.frames += 1
            if self.pairs_camera_info:
                groups += self._group(camera, self.camera_pairers[camera].add_frame(stamp, item.message))
            else:
                groups += self.grouper.add(camera, stamp, item.message)
        elif item.topic in self.info_topics:
            from perception_fm.ros.depth_io import CAMERA_INFO

            camera = self.info_topics[item.topic]
            groups += self._group(camera, self.camera_pairers[camera].add(CAMERA_INFO, stamp, item.message))
        else:
            self.on_input(item)
        return [output for group in groups for output in self.frame(group)]

    def flush(self, clock_ns: int, final: bool = False) -> list[Output]:
        self.clock_ns = max(self.clock_ns, clock_ns)
        groups = [group for camera, pairer in self.camera_pairers.items()
                  for group in self._group(camera, pairer.poll(final))]
        groups += self.grouper.poll(final)
        return [output for group in groups for output in self.frame(group)]

    def _group(self, camera: str, released) -> list[CameraGroup]:
        return [group for paired in released for group in self.grouper.add(camera, paired.stamp_ns, paired)]


class DepthRigReplay(RigReplay):
    """depth_node with `cameras` offline: RigFrameHandler, TF from the bag's (and the graph's) transforms."""

    task = Task.DEPTH
    pairs_camera_info = True

    @property
    def extra_params(self) -> tuple[str, ...]:
        from perception_fm.ros.depth_io import MODEL_EXTRA_PARAMS

        return MODEL_EXTRA_PARAMS

    def setup_rig(self) -> None:
        from perception_fm.ros import depth_io
        from perception_fm.ros.depth_rig_io import TOPIC_POINTS_FUSED, RigFrameHandler

        self.handler = RigFrameHandler(
            self.model, self.values, self.streams,
            tf_lookup=lambda target, source, stamp, wait: self.tf.lookup(target, source, stamp),
            on_event=self.count_event)
        names = {"depth": depth_io.TOPIC_DEPTH, "confidence": depth_io.TOPIC_CONFIDENCE,
                 "info": depth_io.TOPIC_DEPTH_INFO, "camera_info": depth_io.TOPIC_DEPTH_CAMERA_INFO,
                 "points": depth_io.TOPIC_POINTS}
        self.camera_topics = {s.name: {key: self.output_topic(s, topic) for key, topic in names.items()}
                              for s in self.streams}
        self.topics = {f"{camera}/{key}": topic for camera, topics in self.camera_topics.items()
                       for key, topic in topics.items()}
        self.topics["points_fused"] = self.node.topic(TOPIC_POINTS_FUSED)

    def on_frame(self, group: CameraGroup):
        output, messages, fused = self.handler.handle(group)
        outputs = []
        for camera, camera_messages in messages.items():
            topics = self.camera_topics[camera]
            camera_messages.info.inference_ms = 0.0  # the output bag is the same on every run; timings: report
            outputs += [Output(topics["depth"], camera_messages.depth), Output(topics["info"], camera_messages.info)]
            optional = (("camera_info", camera_messages.camera_info), ("confidence", camera_messages.confidence),
                        ("points", camera_messages.points))
            outputs += [Output(topics[key], message) for key, message in optional if message is not None]
        if fused is not None:
            outputs.append(Output(self.topics["points_fused"], fused))
        return output.inference_ms, outputs


class ConceptRigReplay(RigReplay):
    """concept_node with `cameras` offline: RigSegmentationHandler; concepts from its parameter and from the
    bag's `concepts` topic, as the single-camera replay."""

    task = Task.SEGMENTATION

    @property
    def extra_params(self) -> tuple[str, ...]:
        from perception_fm.ros.segmentation_io import MODEL_EXTRA_PARAMS

        return MODEL_EXTRA_PARAMS

    def setup_rig(self) -> None:
        from perception_fm.ros import segmentation_io as io
        from perception_fm.ros.concept_rig_io import RigSegmentationHandler, check_rig_values

        check_rig_values(self.values)
        self.handler = RigSegmentationHandler(self.model, self.values, self.streams, on_event=self.count_event)
        self.concepts_topic = self.node.topic(io.TOPIC_CONCEPTS)
        self.camera_topics = {s.name: {key: self.output_topic(s, getattr(io, f"TOPIC_{key.upper()}"))
                                       for key in ("instances", "labels", "overlay")} for s in self.streams}
        self.topics = {f"{camera}/{key}": topic for camera, topics in self.camera_topics.items()
                       for key, topic in topics.items()}
        self.topics["instances"] = self.node.topic(io.TOPIC_INSTANCES)

    @property
    def inputs(self) -> set[str]:
        return super().inputs | {self.concepts_topic}

    def on_input(self, item: BagMessage) -> None:
        if item.topic == self.concepts_topic:  # counted as the single-camera replay counts them
            outcome = self.handler.concepts.apply_message(item.message.data)
            self.events["concept_messages_empty" if outcome.empty else "concept_messages_applied"] += 1
            self.events["bad_concept"] += len(outcome.refused)
            if outcome.empty or outcome.refused:
                self._error(f"concepts message at {item.timestamp_ns} ns: {outcome.summary()}")

    def on_frame(self, group: CameraGroup):
        result = self.handler.handle_group(group)
        if result is None:
            return None, []
        outputs = []
        for camera, messages in result.cameras.items():
            messages.instances.inference_ms = 0.0  # the output bag is the same on every run; timings: report
            topics = self.camera_topics[camera]
            outputs.append(Output(topics["instances"], messages.instances))
            outputs += [Output(topics[key], getattr(messages, key)) for key in ("labels", "overlay")
                        if getattr(messages, key) is not None]
        result.instances.inference_ms = 0.0
        outputs.append(Output(self.topics["instances"], result.instances))
        return result.inference_ms, outputs


RIG_REPLAY_NODES = {"depth_node": DepthRigReplay, "concept_node": ConceptRigReplay}
