"""The speech node's parameters (besides MODEL_PARAMS); the graph config checks the same table."""
from __future__ import annotations

from perception_fm.nodes.params import Param
from perception_fm.ros.qos import PROFILES
from perception_fm.speech.listener import DESTRUCTIVE_MIN_CONFIDENCE, MIN_CONFIDENCE
from perception_fm.speech.vad import VadConfig

_VAD = VadConfig()
SOURCES = ("topic", "microphone")

TOPIC_AUDIO = "audio"
TOPIC_CONCEPTS = "concepts"
TOPIC_TRANSCRIPT = "transcript"

SPEECH_PARAMS = (
    # model-specific (a change reloads the model)
    Param("language", "en", "Language spoken (Whisper: a language code for multilingual checkpoints; the "
                            "English-only ones and pocketsphinx's bundled model take en). Command parsing is "
                            "English."),
    # what to listen for
    Param("phrase_list", "", "Objects the operator may name, comma-separated (e.g. \"red cup, chair, person\"). "
                             "pocketsphinx: recognition is constrained to the command grammar over them (without "
                             "a list it dictates freely, poorly); whisper: they bias the decoder prompt."),
    Param("min_confidence", MIN_CONFIDENCE,
          "Transcripts the model is less confident of give no command (0 = all do; models without a "
          "confidence always pass). pocketsphinx: the least word posterior of the command's verbs and objects; "
          "whisper: exp(mean token log-probability).", min=0.0, max=1.0),
    Param("destructive_min_confidence", DESTRUCTIVE_MIN_CONFIDENCE,
          "An utterance with a command that removes, replaces or clears concepts is acted on only at this "
          "confidence or above; below, it is published on `transcript` as \"[not understood] ...\" and nothing "
          "changes (a misheard \"ignore the person\" is worse than none).", min=0.0, max=1.0),
    # audio source
    Param("source", "topic", "topic: perception_fm/AudioData on `audio`; microphone: the default input device "
                             "through sounddevice (needs PortAudio).", choices=SOURCES, read_only=True),
    Param("input_qos", "sensor_data", "QoS of the audio subscription (sensor_data matches best-effort and "
                                      "reliable publishers).", choices=PROFILES, read_only=True),
    Param("microphone_device", "", "sounddevice input device (name or index); empty = the default.",
          read_only=True),
    Param("microphone_rate", 16000, "Sample rate asked of the microphone (Hz); 0 = the device's default.",
          min=0, max=384000, read_only=True),
    # voice activity detection
    Param("vad_threshold_db", _VAD.threshold_db, "Speech: this many dB above the running noise floor.",
          min=1.0, max=60.0),
    Param("vad_min_level_db", _VAD.min_level_db, "Speech: at least this loud (dBFS).", min=-120.0, max=0.0),
    Param("vad_onset", _VAD.onset_s, "Seconds of speech that start an utterance.", min=0.0, max=2.0),
    Param("vad_hangover", _VAD.hangover_s, "Seconds of silence that end an utterance.", min=0.05, max=5.0),
    Param("vad_pre_roll", _VAD.pre_roll_s, "Seconds of audio kept before the detected start.", min=0.0, max=2.0),
    Param("min_utterance", _VAD.min_utterance_s, "Utterances with less speech (s) are ignored.", min=0.0, max=10.0),
    Param("max_utterance", _VAD.max_utterance_s, "Utterances are cut at this length (s).", min=0.5, max=30.0),
    Param("max_queued_utterances", 4, "Utterances waiting for the model, at most; beyond, the oldest is dropped "
                                      "(counted as stale).", min=1, max=64, read_only=True),
    # outputs
    Param("output_qos", "reliable", "QoS of `transcript`. `concepts` (commands) is always reliable with a "
                                    "1000-message queue, latched when this is transient_local.",
          choices=PROFILES, read_only=True),
)
# A change of these reloads the model: a phrase list the model cannot use at all is then a model error
# (ERROR on /diagnostics until the list is fixed), not a silently ignored parameter. Reloading pocketsphinx
# takes a fraction of a second; utterances said meanwhile wait in the queue.
MODEL_EXTRA_PARAMS = ("language", "phrase_list")


def parse_phrase_list(text: str) -> tuple[str, ...]:
    """"red cup, chair , ,person" → ("red cup", "chair", "person"), duplicates removed, order kept."""
    phrases = (" ".join(part.split()).lower() for part in str(text).split(","))
    return tuple(dict.fromkeys(p for p in phrases if p))
