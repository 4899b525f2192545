"""The one table of spoken intents: what people say to add, remove, replace or clear concepts.

Both consumers are generated from it:
  - perception_fm.speech.grammar builds the recogniser's grammar (JSGF for PocketSphinx) from INTENTS: every
    verb phrase of an intent in every one of its sentence forms, with the LEAD/TRAIL fillers, DETERMINERS and
    JOINERS below, over the node's phrase list (and the plurals of its phrases);
  - perception_fm.speech.commands builds its parser's vocabulary from the same INTENTS plus PARSER_ONLY, the
    forms a free-speech recogniser (Whisper) may write but the grammar leaves out because every alternative in
    a grammar is one more chance for a small acoustic model to mishear.
tests/test_speech_commands.py samples every intent's sentences from the grammar and checks that the parser
reads each one as that same intent, so the two cannot drift apart.

Sentence forms use "{verb}" and "{objects}" as slots; a form without "{objects}" is a whole command (clear).
"""
from __future__ import annotations

from dataclasses import dataclass

ADD, REMOVE, REPLACE, CLEAR = "add", "remove", "replace", "clear"
# Intents that take something away from the operator's set: acted on only when recognition is confident.
DESTRUCTIVE = (REMOVE, REPLACE, CLEAR)


@dataclass(frozen=True)
class Intent:
    name: str
    verbs: tuple[str, ...]  # verb phrases, lower case
    forms: tuple[str, ...]  # sentence forms over "{verb}" and "{objects}"


INTENTS = (
    Intent(ADD, verbs=(
        "segment", "track", "find", "detect", "highlight", "follow", "locate", "look for", "search for",
        "show me", "show", "where is", "where are", "start tracking", "keep track of", "watch", "spot",
        "point out", "pay attention to", "focus on", "add",
    ), forms=("{verb} {objects}",)),
    Intent(REMOVE, verbs=(
        "stop tracking", "stop segmenting", "stop following", "stop looking for", "stop detecting",
        "stop highlighting", "stop watching", "forget", "forget about", "ignore", "drop", "remove", "delete",
        "do not track", "do not segment", "do not follow", "no longer track", "untrack", "get rid of",
    ), forms=("{verb} {objects}",)),
    # "only" / "just" after the verb or "only" before it, or "instead" after the objects: the set becomes
    # the objects. ("just track the mug" stays an add: "just" before a verb is a filler.)
    Intent(REPLACE, verbs=(
        "segment", "track", "find", "detect", "follow", "highlight", "look for", "show me", "focus on", "watch",
    ), forms=("only {verb} {objects}", "{verb} only {objects}", "{verb} just {objects}", "{verb} {objects} only",
              "{verb} {objects} instead", "now only {verb} {objects}")),
    # Not bare "reset": short speech that was no command ("play some music") was heard as "reset too" with a
    # word posterior of 0.6-0.9 (bench speech), too sure to be caught; "reset all/everything" is long enough.
    # The parser still takes "reset" from free-speech recognisers.
    Intent(CLEAR, verbs=(
        "clear", "clear all", "clear everything", "clear the list", "reset all", "reset everything", "start over",
        "stop everything", "stop all", "stop tracking everything", "stop tracking all", "stop segmenting everything",
        "forget everything", "forget all", "remove everything", "remove all", "track nothing", "stop all tracking",
        "ignore everything", "drop everything",
    ), forms=("{verb}",)),
)
INTENT_BY_NAME = {intent.name: intent for intent in INTENTS}

# Short vowel-like words ("or", "an", "and" as a lead) match background noise and trailing breath on
# synthetic and real speech ("stop tracking the chair" was heard as "... the chair or"), so the spoken forms
# below leave them out; the parser still understands them (its own lists in commands.py).
# Said before a command ("can you please segment ...", "I want you to find ...").
LEAD = ("please", "can you", "could you", "would you", "will you", "can you please", "could you please",
        "would you please", "please can you", "i want you to", "i would like you to", "i need you to",
        "okay robot", "hey robot", "robot", "now", "okay", "also", "go ahead and")
# Said after a command.
TRAIL = ("please", "now", "too", "as well", "thank you", "thanks", "for me", "again", "for me please",
         "in the image", "from now on", "anymore", "any more")
# Before each object; quantifiers included ("every bottle", "all the bottles").
DETERMINERS = ("the", "a", "all", "all the", "all of the", "every", "each", "any", "some", "this", "that",
               "these", "those", "my", "both", "both the", "any of the", "each of the")
# Between objects.
JOINERS = ("and", "as well as", "and also")

def plural(phrase: str) -> str:
    """The plural of an object phrase, by English spelling rules on its last word ("red cup" → "red cups",
    "person" → "people", "box" → "boxes", "battery" → "batteries")."""
    words = phrase.split()
    if not words:
        return phrase
    last = words[-1]
    irregular = {"person": "people", "man": "men", "woman": "women", "child": "children", "mouse": "mice",
                 "foot": "feet", "tooth": "teeth", "knife": "knives", "shelf": "shelves", "leaf": "leaves",
                 "sheep": "sheep", "fish": "fish", "glasses": "glasses", "scissors": "scissors"}
    if last in irregular.values():  # already plural ("people")
        return phrase
    if last in irregular:
        last = irregular[last]
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        last += "es"
    elif last.endswith("y") and len(last) > 1 and last[-2] not in "aeiou":
        last = last[:-1] + "ies"
    else:
        last += "s"
    return " ".join(words[:-1] + [last])
