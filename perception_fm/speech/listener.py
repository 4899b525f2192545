"""An utterance → what was heard: transcript, and the concept commands it gives. Shared by speech_node and the
offline replay, so both turn the same audio into the same `concepts` messages.

Never the opposite intent: a transcript the model is unsure of changes nothing. Any command needs the model's
confidence to reach min_confidence; an utterance with a command that removes, replaces or clears needs
destructive_min_confidence (higher), because acting on a misheard "ignore the person" (said: "track every
person") is worse than not acting. A rejected utterance, and speech that is no command of the recogniser's
grammar (confidence 0), is published on `transcript` as "[not understood] <what was heard>" and counted as
not_understood; no command of it is published.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from perception_fm.speech.audio import resample
from perception_fm.speech.commands import DESTRUCTIVE, Command, parse_commands, to_concepts_message
from perception_fm.speech.vad import Utterance

NO_WORDS, NOT_UNDERSTOOD, NO_COMMAND, COMMANDS = "no_words", "not_understood", "no_command", "commands"
LOW_CONFIDENCE = NOT_UNDERSTOOD  # the former name of the outcome
NOT_UNDERSTOOD_PREFIX = "[not understood] "
# Defaults of the node's min_confidence and destructive_min_confidence, chosen from `perception-fm bench speech`
# (PocketSphinx's least word posterior, 168 utterances, en-us voices, 20 and 10 dB SNR): of commands heard
# right, 94 % of adds reach 0.2 and 73 % of removals/replacements/clears reach 0.5; a track/find heard as a
# removal scored 0.24, and out-of-grammar speech forced into an add 0.14-0.20, so both are rejected.
MIN_CONFIDENCE = 0.2
DESTRUCTIVE_MIN_CONFIDENCE = 0.5


@dataclass(frozen=True)
class Heard:
    text: str  # the transcript, stripped ("" when the model heard no words)
    confidence: float | None
    outcome: str  # NO_WORDS, NOT_UNDERSTOOD, NO_COMMAND or COMMANDS
    commands: tuple[Command, ...]  # the commands to act on (none unless outcome is COMMANDS)
    inference_ms: float
    rejected: tuple[Command, ...] = ()  # commands parsed from a transcript too unsure to act on

    @property
    def transcript_message(self) -> str:
        """What goes on the `transcript` topic: the text, marked when it was not understood."""
        return NOT_UNDERSTOOD_PREFIX + self.text if self.outcome == NOT_UNDERSTOOD else self.text

    @property
    def concepts_messages(self) -> list[str]:
        """One `concepts` topic message per command, in the concept node's grammar."""
        return [to_concepts_message(command) for command in self.commands]

    def describe(self, duration_s: float) -> str:
        """One log line."""
        if self.outcome == NO_WORDS:
            return f"heard {duration_s:.1f} s of sound, no words"
        said = f"heard {self.text!r}" + ("" if self.confidence is None else f" (confidence {self.confidence:.2f})")
        if self.outcome == NOT_UNDERSTOOD:
            if not self.rejected:
                return f"{said}: not understood (no command of the grammar), nothing changes"
            return f"{said}: not understood (too unsure to " + "; ".join(
                f"{c.operation} {list(c.phrases)}" for c in self.rejected) + "), nothing changes"
        if self.outcome == NO_COMMAND:
            return f"{said}: no command"
        return f"{said}: " + "; ".join(f"{c.operation} {list(c.phrases)} → concepts {to_concepts_message(c)!r}"
                                       for c in self.commands)


def listen(model, utterance: Utterance, phrases: tuple[str, ...] | None, min_confidence: float,
           destructive_min_confidence: float = DESTRUCTIVE_MIN_CONFIDENCE) -> Heard:
    """Transcribe `utterance` with `model` (phrases: the phrase list, for models that take one), parse commands
    from the transcript (objects said in the plural name their listed concept) and keep them only if the
    model is confident enough: min_confidence for any command, destructive_min_confidence for an utterance
    holding one that removes, replaces or clears. Models that give no confidence (None) are not gated."""
    audio = resample(utterance.audio, utterance.sample_rate, model.capabilities.sample_rate)
    started = time.perf_counter()
    transcript = model.transcribe(audio, phrases if (phrases and model.capabilities.phrase_list) else None)
    inference_ms = transcript.timings_ms.get("transcribe", (time.perf_counter() - started) * 1e3)
    text = transcript.text.strip()
    confidence = transcript.confidence
    if not text:
        return Heard(text, confidence, NO_WORDS, (), inference_ms)
    commands = tuple(parse_commands(text, phrases))
    if confidence is not None and confidence <= 0.0:  # the recogniser says: no command of its grammar
        return Heard(text, confidence, NOT_UNDERSTOOD, (), inference_ms, commands)
    if not commands:
        return Heard(text, confidence, NO_COMMAND, (), inference_ms)
    if confidence is not None:
        needed = min_confidence
        if any(command.operation in DESTRUCTIVE for command in commands):
            needed = max(needed, destructive_min_confidence)
        if confidence < needed:
            return Heard(text, confidence, NOT_UNDERSTOOD, (), inference_ms, commands)
    return Heard(text, confidence, COMMANDS, commands, inference_ms)
