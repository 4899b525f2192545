"""Each replayable node executable offline: depth_node, concept_node, object_mesh_node, body_node and
speech_node, as ReplayNode subclasses (perception_fm.replay.node_base) wrapping the live node's own frame
handler. REPLAY_NODES maps a graph config's `executable` to its class."""
from __future__ import annotations

from perception_fm.hookspecs import Task
from perception_fm.replay.bag_io import BagMessage
from perception_fm.replay.node_base import MARKER_ARRAY, Output, ReplayError, ReplayNode
from perception_fm.ros.tf import TF_STATIC_TOPIC, TF_TOPIC


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


def replay_node(node, tf) -> ReplayNode:
    """The graph node offline: REPLAY_NODES' class, or a camera rig's (perception_fm.replay.rig_nodes) when the
    node has `cameras`."""
    from perception_fm.replay.rig_nodes import RIG_REPLAY_NODES

    if node.executable in RIG_REPLAY_NODES and node.resolved_parameters().get("cameras"):
        return RIG_REPLAY_NODES[node.executable](node, tf)
    return REPLAY_NODES[node.executable](node, tf)
