"""The concepts a segmentation stream looks for, and the `concepts` topic grammar.

Grammar of a std_msgs/String on `concepts` (what the speech node publishes; typed by operators too):
  "red cup, chair"     add these concepts
  "-chair"             remove a concept (phrases prefixed with "-" inside a list are removed: "mug, -chair")
  "=red cup, chair"    replace every concept by these
  "="                  remove every concept
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any, Callable

ADD, REMOVE, SET = "add", "remove", "set"


def normalize(phrase: str) -> str:
    """Concepts compare case- and space-insensitively: "Red  Mug " is "red mug"."""
    return re.sub(r"\s+", " ", phrase).strip().lower()


@dataclass(frozen=True)
class ConceptCommand:
    operation: str  # ADD, REMOVE or SET
    phrases: tuple[str, ...]


def parse_concepts_message(text: str) -> list[ConceptCommand]:
    """Commands in one `concepts` message (grammar above), in order."""
    text = text.strip()
    if text.startswith("="):
        return [ConceptCommand(SET, tuple(p for p in (normalize(x) for x in text[1:].split(",")) if p))]
    commands = []
    for part in text.split(","):
        part = part.strip()
        if part.startswith("-"):
            phrase = normalize(part[1:])
            if phrase:
                commands.append(ConceptCommand(REMOVE, (phrase,)))
        elif normalize(part):
            commands.append(ConceptCommand(ADD, (normalize(part),)))
    return commands


def format_concepts_message(command: ConceptCommand) -> str:
    """The `concepts` message for a command (inverse of parse_concepts_message)."""
    if command.operation == SET:
        return "=" + ", ".join(command.phrases)
    if command.operation == REMOVE:
        return ", ".join("-" + phrase for phrase in command.phrases)
    return ", ".join(command.phrases)


@dataclass(frozen=True)
class Concept:
    prompt_id: int
    text: str
    encoded: Any  # the model's encoding (SegmentationModel.encode_concept)


class ConceptSet:
    """Active concepts with ids that are never reused: a removed then re-added phrase gets a new id, so
    nothing downstream can confuse the old tracks with the new ones. Thread-safe (services and topic
    callbacks change it while the worker reads it). `encode` validates and encodes a phrase; it raises
    BadInputError("concept", ...) for empty or over-long phrases, and then nothing changes."""

    def __init__(self, encode: Callable[[str], Any], max_concepts: int = 64):
        self._encode = encode
        self._max = max_concepts
        self._concepts: dict[str, Concept] = {}
        self._next_id = 1
        self._lock = threading.Lock()
        self.version = 0  # bumped on every change

    def add(self, phrases) -> list[Concept]:
        phrases = [normalize(p) for p in phrases]
        with self._lock:
            new = [p for p in dict.fromkeys(phrases) if p not in self._concepts]
            if len(self._concepts) + len(new) > self._max:
                raise ValueError(f"at most {self._max} concepts at once; {len(self._concepts)} active, "
                                 f"{len(new)} more asked")
            encoded = {p: self._encode(p) for p in new}  # all validated before anything changes
            for phrase in new:
                self._concepts[phrase] = Concept(self._next_id, phrase, encoded[phrase])
                self._next_id += 1
            self.version += bool(new)
            return [self._concepts[p] for p in phrases]

    def remove(self, phrases) -> list[Concept]:
        with self._lock:
            removed = [self._concepts.pop(p) for p in (normalize(x) for x in phrases) if p in self._concepts]
            self.version += bool(removed)
            return removed

    def set(self, phrases) -> list[Concept]:
        """Replace everything by `phrases` (kept phrases keep their ids)."""
        wanted = list(dict.fromkeys(normalize(p) for p in phrases))
        with self._lock:
            new = [p for p in wanted if p not in self._concepts]
            if len(wanted) > self._max:
                raise ValueError(f"at most {self._max} concepts at once; {len(wanted)} asked")
            encoded = {p: self._encode(p) for p in new}
            for phrase in [p for p in self._concepts if p not in wanted]:
                del self._concepts[phrase]
            for phrase in new:
                self._concepts[phrase] = Concept(self._next_id, phrase, encoded[phrase])
                self._next_id += 1
            self.version += 1
            return [self._concepts[p] for p in wanted]

    def apply(self, command: ConceptCommand) -> None:
        {ADD: self.add, REMOVE: self.remove, SET: self.set}[command.operation](command.phrases)

    def snapshot(self) -> dict[int, Concept]:
        with self._lock:
            return {concept.prompt_id: concept for concept in self._concepts.values()}

    def __len__(self) -> int:
        with self._lock:
            return len(self._concepts)
