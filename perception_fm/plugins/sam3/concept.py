"""A SAM 3 concept ready for detection. Its own module so that the dependency between the plugin's modules runs
one way: model.py (the SegmentationModel) -> session.py (one stream) -> concept.py; the session never imports
the model."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(eq=False)
class EncodedConcept:
    """A validated, tokenized concept; its text embedding is computed on first use (in the thread that runs
    the model) and cached here."""

    text: str
    input_ids: Any  # (1, L) int64 on the model's device
    attention_mask: Any  # (1, L) int64
    tokens: int  # tokens including the start and end tokens
    owner: int  # id() of the model that made it
    embedding: Any = None  # (1, L, D) text features once computed
