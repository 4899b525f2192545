"""The speech task: an utterance (mono float32 PCM) in, its transcript out. Turning transcripts into concept
commands ("segment the red cup" -> add "red cup") is perception_fm's, not the model's."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class SpeechCapabilities:
    sample_rate: int  # Hz the model expects; callers resample
    phrase_list: bool = False  # can be constrained to a list of expected phrases


@dataclass
class Transcript:
    text: str
    confidence: float | None = None  # in [0, 1] where the model gives one
    timings_ms: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class SpeechModel(Protocol):
    name: str
    weights: str
    device: str
    capabilities: SpeechCapabilities

    def transcribe(self, audio: np.ndarray, phrases: Sequence[str] | None = None) -> Transcript:
        """Transcribe one utterance: mono float32 in [-1, 1] at capabilities.sample_rate. `phrases`, where
        supported, biases or constrains recognition to expected phrases."""
