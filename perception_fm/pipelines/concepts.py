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
from dataclasses import dataclass, field
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

    def apply_message(self, text: str) -> "MessageOutcome":
        """Apply every command of one `concepts` message in order; a refused phrase (too long, over
        max_concepts) is reported in the outcome and the rest still apply. Never raises for bad input."""
        outcome = MessageOutcome(text)
        commands = parse_concepts_message(text)
        outcome.empty = not commands
        for command in commands:
            before = self._texts()
            try:
                self.apply(command)
            except ValueError as error:  # BadInputError included: nothing of this command changed
                reason = str(error)
                for phrase in command.phrases or ("",):
                    outcome.refused.append((phrase, reason.replace(phrase, _short(phrase)) if phrase else reason))
                continue
            after = self._texts()
            outcome.added += [p for p in after if p not in before]
            outcome.removed += [p for p in before if p not in after]
            if command.operation == REMOVE:
                outcome.not_active += [p for p in command.phrases if p not in before]
        outcome.active = len(self)
        return outcome

    def _texts(self) -> list[str]:
        with self._lock:
            return list(self._concepts)

    def snapshot(self) -> dict[int, Concept]:
        with self._lock:
            return {concept.prompt_id: concept for concept in self._concepts.values()}

    def __len__(self) -> int:
        with self._lock:
            return len(self._concepts)


GRAMMAR = "'a, b' adds, '-a' removes, '=a, b' replaces everything, '=' clears"


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _listed(items: list[str], shown: int = 3) -> str:
    more = f", … {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(_short(item) for item in items[:shown]) + more


@dataclass
class MessageOutcome:
    """What one `concepts` message did, for its one log line and the node's counters."""

    text: str
    empty: bool = False  # the message held no command (blank, only commas, a lone "-")
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    not_active: list[str] = field(default_factory=list)  # asked to be removed, but were not active
    refused: list[tuple[str, str]] = field(default_factory=list)  # (phrase, why)
    active: int = 0  # concepts active afterwards

    def summary(self) -> str:
        """One line, bounded in length whatever the message (a few phrases and reasons shown, then counts)."""
        head = f"concepts message {_short(self.text, 60)!r}"
        if self.empty:
            return f"{head} holds no command; ignored (grammar: {GRAMMAR})"
        parts = []
        if self.added:
            parts.append(f"added {len(self.added)} ({_listed(self.added)})")
        if self.removed:
            parts.append(f"removed {len(self.removed)} ({_listed(self.removed)})")
        if self.not_active:
            parts.append(f"not active, nothing to remove: {_listed(self.not_active)}")
        if self.refused:
            reasons: dict[str, list[str]] = {}
            for phrase, reason in self.refused:
                reasons.setdefault(_short(reason, 160), []).append(phrase)
            shown = [f"{len(phrases)}× {reason}" for reason, phrases in list(reasons.items())[:2]]
            if len(reasons) > 2:
                shown.append(f"{len(reasons) - 2} other reasons")
            parts.append(f"refused {len(self.refused)} ({'; '.join(shown)})")
        if not parts:
            parts.append("no change")
        return f"{head}: {'; '.join(parts)}; {self.active} active"
