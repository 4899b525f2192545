"""speech_node: spoken commands in, concept commands out ("segment the red cup and the chair" → "red cup, chair").

Audio comes from the `audio` topic (perception_fm/AudioData: S16LE or F32LE, any rate and channel count) or,
with source:=microphone, from the default input device (sounddevice + PortAudio). A voice-activity detector
(perception_fm.speech.vad) cuts it into utterances in the subscription callback; each utterance waits in a
bounded queue (max_queued_utterances; a burst beyond it drops the oldest, counted as stale) for the worker,
which resamples it to the model's rate, transcribes it and turns the transcript into commands
(perception_fm.speech.commands).

Publishes (relative names; remap them):
  concepts (std_msgs/String), one message per recognised command, in the concept node's grammar:
    "red cup, chair" add, "-chair" remove, "=mug" replace the set, "=" clear it
  transcript (std_msgs/String), the text of every utterance (empty when the model heard no words);
    "[not understood] <text>" when it was no command of the grammar or too unsure to act on (then no
    command is published: a removal, replacement or clear needs destructive_min_confidence)
Parameters: perception_fm.speech.params.SPEECH_PARAMS (`ros2 param describe` shows each one's description).

Default model: pocketsphinx, because it works offline out of the box (its English model ships in the PyPI
wheel) and, constrained to the command grammar over `phrase_list`, it is reliable for commands on a CPU.
model:=whisper (transformers, GPU fp16) transcribes free speech far better; it needs its weights
downloaded once (weights:=openai/whisper-small.en by default).
"""
from __future__ import annotations

if __name__ == "__main__":  # python -m: stop quietly on SIGINT/SIGTERM from here on, even while importing
    from perception_fm.nodes.launcher import launch

    raise SystemExit(launch("speech_node"))  # imports this module again, as perception_fm.nodes.speech_node

import sys
import threading

import numpy as np
from std_msgs.msg import String

from perception_fm.errors import BadInputError
from perception_fm.graph import NODE_TYPES
from perception_fm.hookspecs import Task
from perception_fm.msg import AudioData
from perception_fm.nodes.node_base import ModelNode, run_node
from perception_fm.ros.qos import qos_profile
from perception_fm.speech.audio import decode_audio
from perception_fm.speech.listener import listen
from perception_fm.speech.microphone import MicrophoneError, MicrophoneSource
from perception_fm.speech.params import (MODEL_EXTRA_PARAMS, SPEECH_PARAMS, TOPIC_AUDIO, TOPIC_CONCEPTS,
                                         TOPIC_TRANSCRIPT, parse_phrase_list)
from perception_fm.speech.vad import EnergyVad, Utterance, vad_config_from

AUDIO_QUEUE_DEPTH = 100  # audio chunks the subscription keeps (a gap in the audio breaks an utterance)
OUTPUT_DEPTH = 10  # transcripts: text for people and logs; the newest matter
# Commands on `concepts` are user intent. concept_node keeps every one (keep-all reliable subscription), but a
# keep-last writer overwrites commands DDS has not delivered yet when a burst of utterances (or a slow, loaded
# subscriber) outpaces the link: 1,000 commands is minutes of speech, and a few kB of text.
CONCEPTS_DEPTH = 1000
WARMUP_S = 0.5


class SpeechNode(ModelNode):
    task = Task.SPEECH
    default_model = NODE_TYPES["speech_node"].default_model  # "pocketsphinx"
    params = SPEECH_PARAMS
    model_extra_params = MODEL_EXTRA_PARAMS

    @property
    def queue_size(self) -> int:  # read by ModelNode.__init__ once the parameters are declared
        return int(getattr(self, "values", {}).get("max_queued_utterances", 4))

    def __init__(self, **kwargs):
        super().__init__("speech_node", **kwargs)
        self._vad_lock = threading.Lock()
        self._vad_config = vad_config_from(self.values)
        self._vad = EnergyVad(self._vad_config)
        self.phrases: tuple[str, ...] = ()
        output_qos = qos_profile(self.values["output_qos"], depth=OUTPUT_DEPTH)
        # always reliable (latched when output_qos asks for it): a best-effort writer would lose commands and
        # would not even match concept_node's reliable subscription
        concepts_qos = qos_profile("transient_local" if self.values["output_qos"] == "transient_local"
                                   else "reliable", depth=CONCEPTS_DEPTH)
        self._concepts = self.create_publisher(String, TOPIC_CONCEPTS, concepts_qos)
        self._transcripts = self.create_publisher(String, TOPIC_TRANSCRIPT, output_qos)
        self._microphone: MicrophoneSource | None = None
        self._microphone_open = False
        if self.values["source"] == "microphone":
            self._microphone = MicrophoneSource(self.feed_audio, device=self.values["microphone_device"],
                                                sample_rate=self.values["microphone_rate"])
            # opened once now so that a missing PortAudio or device ends the process at start (exit 1), then
            # closed: the node listens only while active (inputs_opened)
            self._microphone.start()  # MicrophoneError: sounddevice/PortAudio missing, no device, ...
            self._microphone.stop()
        else:
            self.create_subscription(AudioData, TOPIC_AUDIO, self._on_audio,
                                     qos_profile(self.values["input_qos"], depth=AUDIO_QUEUE_DEPTH))
        self.start()

    # -- audio in (subscription callback or PortAudio thread): voice activity only, never the model ---------

    def _on_audio(self, message: AudioData) -> None:
        try:
            samples, rate = decode_audio(message)
        except BadInputError as error:
            self.stats.drop(error.reason)
            self._log_drop(error.reason, f"dropped an audio chunk ({error.reason}): {error}")
            return
        self.feed_audio(samples, rate)

    def feed_audio(self, samples: np.ndarray, sample_rate: int) -> None:
        """Mono float32 samples into the voice-activity detector; finished utterances go to the worker. Not
        listening unless active (the microphone's blocks before the first activation are ignored)."""
        if not self._publish_gate.active:
            return
        self.stats.event("audio_chunks")
        with self._vad_lock:
            before = (self._vad.stats.too_short, self._vad.stats.cut)
            utterances = self._vad.feed(samples, sample_rate)
            too_short, cut = self._vad.stats.too_short - before[0], self._vad.stats.cut - before[1]
        for _ in range(too_short):
            self.stats.event("utterances_too_short")
        for _ in range(cut):
            self.stats.event("utterances_cut")
            self.get_logger().warn(f"an utterance reached max_utterance ({self._vad_config.max_utterance_s} s) "
                                   "and was cut", throttle_duration_sec=5.0)
        for utterance in utterances:
            self.submit(utterance)

    # -- worker thread --------------------------------------------------------------------------------------

    def reconfigure_with(self, model) -> None:
        config = vad_config_from(self.values)  # ValueError for inconsistent values
        phrases = parse_phrase_list(self.values["phrase_list"])
        if phrases and not model.capabilities.phrase_list:
            self.get_logger().warn(f"{self.model_name()} takes no phrase list; phrase_list is ignored")
        if phrases and model.capabilities.phrase_list:
            # builds (and checks) the grammar or prompt now rather than on the first command
            model.transcribe(np.zeros(int(WARMUP_S * model.capabilities.sample_rate), np.float32), phrases)
        elif self.model_name() == "pocketsphinx":
            self.get_logger().warn("no phrase_list: pocketsphinx dictates freely with its general language model, "
                                   "which is poor; give the objects to listen for in phrase_list")
        if config != self._vad_config:
            with self._vad_lock:
                self._vad = EnergyVad(config, self._vad.sample_rate)
                self._vad_config = config
        self.phrases = phrases

    def process(self, utterance: Utterance) -> float:
        heard = listen(self.model, utterance, self.phrases, self.values["min_confidence"],
                       self.values["destructive_min_confidence"])
        self._transcripts.publish(String(data=heard.transcript_message))
        for message in heard.concepts_messages:
            self._concepts.publish(String(data=message))
        for _ in heard.commands or (None,):  # "commands" counts commands; the other outcomes count utterances
            self.stats.event(heard.outcome)
        self.get_logger().info(heard.describe(utterance.duration_s))
        return heard.inference_ms

    def inputs_opened(self) -> None:
        """Activate: the microphone opens (it was opened and closed at start, to fail early)."""
        if self._microphone is not None and not self._microphone_open:
            self._microphone.start()  # MicrophoneError: activate fails, the node stays inactive
            self._microphone_open = True
            self.get_logger().info(f"listening to microphone {self.values['microphone_device'] or '(default)'} "
                                   f"at {self._microphone.sample_rate} Hz")

    def inputs_closed(self) -> None:
        """Deactivate: the device is released, and an utterance cut short is not finished later."""
        if self._microphone is not None and self._microphone_open:
            self._microphone.stop()
            self._microphone_open = False
        with self._vad_lock:
            self._vad = EnergyVad(self._vad_config, self._vad.sample_rate)

    def destroy_node(self) -> None:
        if self._microphone is not None:
            self._microphone.stop()
        super().destroy_node()


def main(args=None) -> int:
    try:
        return run_node(SpeechNode, args)
    except MicrophoneError as error:
        import rclpy

        print(f"speech_node: {error}", file=sys.stderr)
        rclpy.try_shutdown()
        return 1

