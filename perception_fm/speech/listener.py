"""An utterance → what was heard: transcript, and the concept commands it gives. Shared by speech_node and the
offline replay, so both turn the same audio into the same `concepts` messages."""
from __future__ import annotations

import time
from dataclasses import dataclass

from perception_fm.speech.audio import resample
from perception_fm.speech.commands import Command, parse_commands, to_concepts_message
from perception_fm.speech.vad import Utterance

NO_WORDS, LOW_CONFIDENCE, NO_COMMAND, COMMANDS = "no_words", "low_confidence", "no_command", "commands"


@dataclass(frozen=True)
class Heard:
    text: str  # the transcript, stripped ("" when the model heard no words)
    confidence: float | None
    outcome: str  # NO_WORDS, LOW_CONFIDENCE, NO_COMMAND or COMMANDS
    commands: tuple[Command, ...]
    inference_ms: float

    @property
    def concepts_messages(self) -> list[str]:
        """One `concepts` topic message per command, in the concept node's grammar."""
        return [to_concepts_message(command) for command in self.commands]

    def describe(self, duration_s: float) -> str:
        """One log line."""
        if self.outcome == NO_WORDS:
            return f"heard {duration_s:.1f} s of sound, no words"
        said = f"heard {self.text!r}" + ("" if self.confidence is None else f" (confidence {self.confidence:.2f})")
        if self.outcome == LOW_CONFIDENCE:
            return f"{said}: below min_confidence, ignored"
        if self.outcome == NO_COMMAND:
            return f"{said}: no command"
        return f"{said}: " + "; ".join(f"{c.operation} {list(c.phrases)} → concepts {to_concepts_message(c)!r}"
                                       for c in self.commands)


def listen(model, utterance: Utterance, phrases: tuple[str, ...] | None, min_confidence: float) -> Heard:
    """Transcribe `utterance` with `model` (phrases: the phrase list, for models that take one) and parse
    commands from the transcript unless it is empty or below `min_confidence`."""
    audio = resample(utterance.audio, utterance.sample_rate, model.capabilities.sample_rate)
    started = time.perf_counter()
    transcript = model.transcribe(audio, phrases if (phrases and model.capabilities.phrase_list) else None)
    inference_ms = transcript.timings_ms.get("transcribe", (time.perf_counter() - started) * 1e3)
    text = transcript.text.strip()
    if not text:
        return Heard(text, transcript.confidence, NO_WORDS, (), inference_ms)
    if transcript.confidence is not None and transcript.confidence < min_confidence:
        return Heard(text, transcript.confidence, LOW_CONFIDENCE, (), inference_ms)
    commands = tuple(parse_commands(text))
    return Heard(text, transcript.confidence, COMMANDS if commands else NO_COMMAND, commands, inference_ms)
