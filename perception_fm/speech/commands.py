"""Transcripts → concept commands, by rules (no language model, nothing to download).

    "segment the red cup and the chair"      add      red cup, chair
    "track all people"                       add      people
    "stop tracking the chair" / "forget the chair" / "remove the chair" / "don't track the chair"
                                             remove   chair
    "only track the mug" / "track only the mug" / "track the mug instead"
                                             replace  mug
    "stop tracking everything" / "clear"     clear
    "track the mug and forget the chair"     add mug, then remove chair (two commands)

A clause is: fillers and politeness ("um", "okay robot", "can you please"), a verb phrase from the tables
below, and a list of noun phrases joined by "and", "or", commas, "as well as", ...; each noun phrase is kept
as said, lower-cased, without its determiners and quantifiers ("all the", "every", "two", ...) and without
trailing fillers ("please", "for me", "in the image"). Anything else ("what a nice day", "stop", a bare
"red cup", "track it", "segment everything") is no command: parse_commands returns [] and parse_command
None. "just" before the verb is a filler ("just track the mug" adds), after it it means "only" ("track just
the mug" replaces). A removal without an object ("stop tracking", "forget") clears the set.

The `concepts` topic grammar (perception_fm.pipelines.concepts) is what to_concepts_message writes:
"red cup, chair" adds, "-chair" removes, "=mug" replaces the whole set, "=" clears it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from perception_fm.pipelines.concepts import ADD as CONCEPT_ADD
from perception_fm.pipelines.concepts import REMOVE as CONCEPT_REMOVE
from perception_fm.pipelines.concepts import SET as CONCEPT_SET
from perception_fm.pipelines.concepts import ConceptCommand, format_concepts_message, normalize
from perception_fm.speech import intents
from perception_fm.speech.intents import ADD, CLEAR, DESTRUCTIVE, INTENT_BY_NAME, REMOVE, REPLACE, plural

OPERATIONS = (ADD, REMOVE, REPLACE, CLEAR)
__all__ = ["ADD", "REMOVE", "REPLACE", "CLEAR", "DESTRUCTIVE", "OPERATIONS", "Command", "parse_commands",
           "parse_command", "to_concepts_message", "canonical_phrases"]


@dataclass(frozen=True)
class Command:
    operation: str  # ADD, REMOVE, REPLACE or CLEAR
    phrases: tuple[str, ...] = ()  # empty for CLEAR

    def __post_init__(self):
        if self.operation not in OPERATIONS:
            raise ValueError(f"operation must be one of {OPERATIONS}, got {self.operation!r}")
        if self.operation == CLEAR and self.phrases:
            raise ValueError("a clear command has no phrases")
        if self.operation != CLEAR and not self.phrases:
            raise ValueError(f"a {self.operation} command needs at least one phrase")

    def to_concept_command(self) -> ConceptCommand:
        """The same command in the concept pipeline's terms (replace and clear are both a SET)."""
        operation = {ADD: CONCEPT_ADD, REMOVE: CONCEPT_REMOVE, REPLACE: CONCEPT_SET, CLEAR: CONCEPT_SET}
        return ConceptCommand(operation[self.operation], tuple(self.phrases))


def to_concepts_message(command: Command) -> str:
    """The std_msgs/String for the `concepts` topic: "a, b" add, "-a, -b" remove, "=a, b" replace, "=" clear.
    Commas inside a phrase would split it, so they are dropped."""
    cleaned = tuple(p for p in (normalize(phrase.replace(",", " ").lstrip("=-")) for phrase in command.phrases) if p)
    if command.operation != CLEAR and not cleaned:
        raise ValueError(f"no phrase left in {command}")
    return format_concepts_message(ConceptCommand(command.to_concept_command().operation, cleaned))


# ----------------------------------------------------------------------------------------------------------
# Vocabulary. Every entry is a phrase of lower-case words; longer phrases are matched first. The intents'
# verbs and fillers come from perception_fm.speech.intents (the table the recogniser's grammar is built from);
# the lists here add the forms only a free-speech recogniser writes (PARSER_ONLY in the module docstring of
# intents).

# Verbs that add concepts (base form; the parser also knows their -ing forms for "stop tracking X").
ADD_VERBS = (
    "segment", "track", "find", "detect", "locate", "spot", "highlight", "follow", "watch", "identify",
    "recognise", "recognize", "outline", "label", "select", "look for", "search for", "show me", "show",
    "point out", "pick out", "keep track of", "keep an eye on", "pay attention to", "watch out for",
    "look out for", "focus on", "add", "include", "where is", "where are", "what about", "how about",
    *INTENT_BY_NAME[ADD].verbs, *INTENT_BY_NAME[REPLACE].verbs,
)
GERUNDS = {
    "segment": "segmenting", "track": "tracking", "find": "finding", "detect": "detecting", "locate": "locating",
    "spot": "spotting", "highlight": "highlighting", "follow": "following", "watch": "watching",
    "identify": "identifying", "recognise": "recognising", "recognize": "recognizing", "outline": "outlining",
    "label": "labelling", "select": "selecting", "look for": "looking for", "search for": "searching for",
    "show": "showing", "show me": "showing me", "point out": "pointing out", "pick out": "picking out",
    "keep track of": "keeping track of", "keep an eye on": "keeping an eye on", "focus on": "focusing on",
    "pay attention to": "paying attention to", "watch out for": "watching out for",
    "look out for": "looking out for",
}
# "start tracking X", "begin segmenting X", "keep tracking X" add too.
START_WORDS = ("start", "begin", "keep", "continue", "go on", "resume")
# Verbs that remove concepts. With nothing (or "everything") after them they clear the set.
REMOVE_VERBS = (
    "forget", "forget about", "remove", "delete", "drop", "ignore", "untrack", "discard", "disregard", "lose",
    "exclude", "get rid of", "cancel", "clear", "never mind", "leave out", "take away", "take out",
    "throw away", "no more", "not", *INTENT_BY_NAME[REMOVE].verbs,
)
# Words that, before an add verb's base or -ing form, make it a removal: "stop tracking", "do not segment".
NEGATIONS = ("stop", "quit", "cease", "do not", "no longer", "never", "not", "end", "halt", "give up",
             "you can stop", "you can forget", "stop to")
# Clear without objects: "clear", "reset", "start over".
CLEAR_PHRASES = ("clear", "reset", "start over", "start again", "forget it all", "clear it all", "never mind",
                 "stop it all", "stop all tracking", "stop all segmentation", "clear the list", "reset the list",
                 "clear all concepts", "clear the concepts", "remove all concepts", "clear the screen",
                 "stop everything", "stop all", *INTENT_BY_NAME[CLEAR].verbs)
# Remove verbs that clear the set when said without an object ("forget", "stop tracking").
CLEAR_ALONE = ("forget", "forget about", "remove", "delete", "drop", "discard", "cancel", "clear")
# Objects meaning "every concept": with a remove verb the set is cleared.
EVERYTHING = ("everything", "every thing", "all", "all of it", "all of them", "all objects", "all the objects",
              "all concepts", "all the concepts", "all things", "anything", "it all", "them all",
              "all of that", "everything else", "every object", "all items", "the lot", "whatever")
# "track nothing" clears.
NOTHING = ("nothing", "none", "no objects", "no object", "nothing at all")
# Before or after the objects: the command replaces the set.
ONLY_WORDS = ("only", "just", "exclusively", "solely", "nothing but", "nothing except", "nothing other than")
REPLACE_PREFIXES = ("switch to", "change to", "instead", "from now on", "now only", "only", "switch over to")
REPLACE_SUFFIXES = ("instead", "only", "and nothing else", "but nothing else", "and no other objects",
                    "alone", "exclusively", "instead of anything else")
# Said before the command: dropped ("um okay robot can you please segment ...").
LEADING_FILLERS = (
    "um", "umm", "uh", "uhh", "er", "erm", "hmm", "mm", "ah", "oh", "okay", "ok", "alright", "all right",
    "right", "so", "well", "hey", "hi", "hello", "robot", "computer", "please", "kindly", "now", "then",
    "and", "also", "again", "just", "yeah", "yes", "like", "actually", "first", "next", "finally", "next up",
    "can you", "could you", "would you", "will you", "can u", "could u", "i want you to", "i need you to",
    "i would like you to", "i would like to", "i want to", "i wanna", "i need to", "we need to", "we want to",
    "would you mind", "go ahead and", "try to", "please try to", "let us", "lets", "let's", "you should",
    "you can", "you may", "you could", "i said", "i mean", "you need to", "it is time to", "time to",
    "make sure to", "be sure to", "for me", "quickly", "immediately", "now please",
    "the robot should", "robot please", *intents.LEAD,
)
# Said after the objects: dropped.
TRAILING_FILLERS = (
    "please", "for me", "now", "right now", "thanks", "thank you", "thank you very much", "too", "as well",
    "again", "also", "anymore", "any more", "any longer", "from now on", "from here on", "then", "okay", "ok",
    "in the image", "in the picture", "in the scene", "in the frame", "in the video", "in view",
    "in the camera", "on the camera", "on camera", "on screen", "on the screen", "you see", "you can see",
    "that you see", "that you can see", "if you can", "if possible", "if you see any", "if you see them",
    "if you see it", "if there are any", "if there is one", "if any", "please and thank you", "robot",
    "here", "there", "over there", "over here", "around", "around here", "nearby", "in sight", "um", "uh",
    "er", "for now", "for a while", "will you", "would you", "can you", "could you", "okay robot", "so",
    "at all", "all of them", "everywhere", *intents.TRAIL,
)
# Joins noun phrases.
SEPARATORS = ("and also", "and then", "and", "or", "as well as", "plus", "along with", "together with",
              "also", "&", "nor", *intents.JOINERS)
# Removed from the start of each noun phrase, repeatedly ("all of the two red cups" → "red cups").
DETERMINERS = (
    "the", "a", "an", "all", "all of", "every", "each", "each of", "any", "some", "some of", "this", "that",
    "these", "those", "my", "your", "our", "his", "her", "their", "its", "both", "both of", "either",
    "every single", "each and every", "any of", "one of", "a couple of", "a couple", "a few", "few",
    "several", "many", "lots of", "a lot of", "plenty of", "a bunch of", "bunch of", "more", "other",
    "another", "the other", "any other", "no", "one", "two", "three", "four", "five", "six", "seven", "eight",
    "nine", "ten", "eleven", "twelve", "twenty", "a pair of", "pair of", "the two", "the three", "a single",
    "single", "of", "those two", "all those", "all these", *intents.DETERMINERS,
)
# Not a concept on its own.
PRONOUNS = ("it", "them", "this", "that", "these", "those", "one", "ones", "something", "stuff", "things",
            "thing", "object", "objects", "item", "items", "there", "here", "him", "her", "they", "those ones",
            "that one", "this one", "the one")
NUMBER = re.compile(r"^\d+(?:[.,]\d+)?$")

# Spoken forms worth undoing before matching.
CONTRACTIONS = {
    "don't": "do not", "dont": "do not", "doesn't": "does not", "can't": "cannot", "won't": "will not",
    "i'd": "i would", "i'm": "i am", "let's": "let us", "what's": "what is", "where's": "where is",
    "wanna": "want to", "gonna": "going to", "you're": "you are", "it's": "it is", "that's": "that is",
    "there's": "there is", "we'd": "we would", "i'll": "i will", "you'll": "you will", "we're": "we are",
}


def _phrases(entries) -> list[tuple[str, ...]]:
    """Entries as word tuples, longest first (so "stop tracking" wins over "stop")."""
    return sorted({tuple(entry.split()) for entry in entries}, key=len, reverse=True)


_ADD = _phrases(ADD_VERBS)
_ADD_GERUNDS = _phrases(list(GERUNDS.values()) + list(ADD_VERBS))
_REMOVE = _phrases(REMOVE_VERBS)
_NEGATIONS = _phrases(NEGATIONS)
_START = _phrases(START_WORDS)
_CLEAR = {tuple(p.split()) for p in CLEAR_PHRASES}
_EVERYTHING = {tuple(p.split()) for p in EVERYTHING}
_NOTHING = {tuple(p.split()) for p in NOTHING}
_CLEAR_ALONE = {tuple(p.split()) for p in CLEAR_ALONE}
_ONLY = _phrases(ONLY_WORDS)
_REPLACE_PREFIXES = _phrases(REPLACE_PREFIXES)
_REPLACE_SUFFIXES = _phrases(REPLACE_SUFFIXES)
_LEADING = _phrases(LEADING_FILLERS)
_TRAILING = _phrases(TRAILING_FILLERS)
_SEPARATORS = _phrases(SEPARATORS)
_DETERMINERS = _phrases(DETERMINERS)
_PRONOUNS = {tuple(p.split()) for p in PRONOUNS}
_CLAUSE_JOINERS = _phrases(("and", "and then", "then", "but", "and also", "also", "after that", "and after that",
                            "and now", "now"))


# ----------------------------------------------------------------------------------------------------------
# Parsing


def tokenize(text: str) -> list[list[str]]:
    """Sentences (split at . ! ? ;) of lower-case words; commas are kept as "," tokens."""
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")
    sentences = []
    for sentence in re.split(r"[.!?;:]+(?:\s|$)|[!?;]+", text):
        sentence = re.sub(r"[\"()\[\]{}<>*_#/\\|~^]", " ", sentence)
        sentence = re.sub(r"\s*,\s*", " , ", sentence)
        sentence = sentence.replace("&", " & ")
        words = []
        for word in sentence.split():
            word = word.strip("'-.")
            if not word:
                continue
            words.extend(CONTRACTIONS.get(word, word).split())
        if words:
            sentences.append(words)
    return sentences


def _starts_with(words: list[str], options) -> int:
    """Length of the longest option that `words` starts with (0: none)."""
    for option in options:
        if tuple(words[:len(option)]) == option:
            return len(option)
    return 0


def _ends_with(words: list[str], options) -> int:
    for option in options:
        if len(words) >= len(option) and tuple(words[len(words) - len(option):]) == option:
            return len(option)
    return 0


def _strip_leading(words: list[str]) -> list[str]:
    while words:
        if words[0] == ",":
            words = words[1:]
            continue
        n = _starts_with(words, _LEADING)
        if not n:
            break
        words = words[n:]
    return words


def _strip_trailing(words: list[str]) -> list[str]:
    while words:
        if words[-1] == ",":
            words = words[:-1]
            continue
        n = _ends_with(words, _TRAILING)
        if not n:
            break
        words = words[:-n]
    return words


def _verb(words: list[str]) -> tuple[str | None, int]:
    """The operation of the verb phrase `words` starts with, and its length in words. A removal said
    without objects clears the set only if it is a negated add verb ("stop tracking") or in CLEAR_ALONE."""
    # "stop tracking", "do not segment", "no longer follow", "you can stop looking for"
    n = _starts_with(words, _NEGATIONS)
    if n:
        m = _starts_with(words[n:], _ADD_GERUNDS)
        if m:
            return REMOVE, n + m
        k = _starts_with(words[n:], _START)  # "do not keep tracking"
        if k:
            m = _starts_with(words[n + k:], _ADD_GERUNDS)
            if m:
                return REMOVE, n + k + m
    # "start tracking", "keep segmenting"
    n = _starts_with(words, _START)
    if n:
        m = _starts_with(words[n:], _ADD_GERUNDS)
        if m:
            return ADD, n + m
    n = _starts_with(words, _REMOVE)
    if n:
        return REMOVE, n
    n = _starts_with(words, _ADD_GERUNDS)  # "segment", also "tracking the mug" (after "switch to")
    if n:
        return ADD, n
    return None, 0


def _split_objects(words: list[str]) -> list[list[str]]:
    items, current = [], []
    i = 0
    while i < len(words):
        if words[i] == ",":
            items.append(current)
            current = []
            i += 1
            continue
        n = _starts_with(words[i:], _SEPARATORS)
        if n:  # also right after a comma: "the keyboard, and the mouse"
            if current:
                items.append(current)
            current = []
            i += n
            continue
        current.append(words[i])
        i += 1
    items.append(current)
    return items


def _clean_phrase(words: list[str]) -> list[str]:
    words = _strip_trailing(list(words))
    changed = True
    while words and changed:
        changed = False
        n = _starts_with(words, _DETERMINERS)
        if n and n < len(words):
            words = words[n:]
            changed = True
        elif NUMBER.match(words[0]) and len(words) > 1:
            words = words[1:]
            changed = True
    if len(words) == 1 and (NUMBER.match(words[0]) or words[0] in ("the", "a", "an", "and", "or", "of")):
        return []
    if tuple(words) in _PRONOUNS:
        return []
    return words


def _objects(words: list[str]) -> tuple[str, list[str]]:
    """("everything" | "nothing" | "phrases" | "none" | "pronoun", phrases) for the object part of a clause;
    "pronoun": there were words, but no concept in them ("it", "them", "the one")."""
    words = _strip_trailing(words)
    if not words:
        return "none", []
    key = tuple(w for w in words if w != ",")
    if key in _EVERYTHING or key[:1] == ("everything",):
        return "everything", []
    if key in _NOTHING:
        return "nothing", []
    phrases = []
    for item in _split_objects(words):
        cleaned = _clean_phrase(item)
        if not cleaned:
            continue
        text = " ".join(cleaned)
        if text not in phrases:
            phrases.append(text)
    return ("phrases", phrases) if phrases else ("pronoun", [])


def _parse_clause(words: list[str]) -> Command | None:
    words = _strip_trailing(_strip_leading(list(words)))
    if not words:
        return None
    if tuple(words) in _CLEAR:
        return Command(CLEAR)
    replace = False
    n = _starts_with(words, _REPLACE_PREFIXES)
    if n:
        replace, words = True, _strip_leading(words[n:])
    operation, n = _verb(words)
    if operation is None:
        if not replace:
            return None
        operation = ADD  # "switch to the mug", "only the mug"
    verb, rest = tuple(words[:n]), words[n:]
    m = _starts_with(rest, _ONLY)
    if m:  # "track only the mug", "track nothing but the mug"
        replace, rest = True, rest[m:]
    rest = _strip_trailing(rest)
    m = _ends_with(rest, _REPLACE_SUFFIXES)
    if m and len(rest) > m:  # "track the mug instead", "track the mug and nothing else"
        replace, rest = True, rest[:-m]
    kind, phrases = _objects(rest)
    if operation == REMOVE:
        if replace:
            return None
        if kind == "everything" or (kind == "none" and (verb in _CLEAR_ALONE or _starts_with(words, _NEGATIONS))):
            return Command(CLEAR)
        return Command(REMOVE, tuple(phrases)) if kind == "phrases" else None
    if kind == "nothing":
        return Command(CLEAR)
    if kind != "phrases":
        return None
    return Command(REPLACE if replace else ADD, tuple(phrases))


def _clauses(words: list[str]) -> list[list[str]]:
    """Split a sentence where a joiner ("and", "then", ",", "but") is followed by a new command, e.g. "track
    the mug and forget the chair". A part that does not parse on its own is joined back to the one before,
    so "find the phone and watch" keeps "watch" as an object."""
    pieces: list[tuple[list[str], list[str]]] = []  # (joiner words, clause words)
    start, joiner = 0, []
    i = 1
    while i < len(words):
        n = 1 + _starts_with(words[i + 1:], _CLAUSE_JOINERS) if words[i] == "," else \
            _starts_with(words[i:], _CLAUSE_JOINERS)
        if n:
            rest = _strip_leading(words[i + n:])
            if _verb(rest)[0] is not None or _starts_with(rest, _REPLACE_PREFIXES) or tuple(rest) in _CLEAR:
                pieces.append((joiner, words[start:i]))
                start, joiner = i + n, words[i:i + n]
                i += n
                continue
        i += 1
    pieces.append((joiner, words[start:]))
    clauses: list[list[str]] = []
    for joiner, clause in pieces:
        if clauses and _parse_clause(clause) is None:
            clauses[-1] = clauses[-1] + joiner + clause
        else:
            clauses.append(clause)
    return clauses


MAX_WORDS = 200  # a transcript is cut there (a hallucinating model can produce pages)


def canonical_phrases(phrases, concepts) -> tuple[str, ...]:
    """Each phrase as the concept of `concepts` (the node's phrase list) it names: a plural maps to its listed
    singular ("bottles" → "bottle", "people" → "person" unless "people" is itself listed); any other phrase
    stays as said. Duplicates that result are dropped, order kept."""
    listed = {concept: concept for concept in concepts}
    by_plural = {plural(concept): concept for concept in concepts}
    return tuple(dict.fromkeys(listed.get(phrase) or by_plural.get(phrase) or phrase for phrase in phrases))


def parse_commands(transcript: str, concepts=None) -> list[Command]:
    """Every command in a transcript, in the order said ([] when it holds none). With `concepts` (the phrase
    list), objects said in the plural name their listed concept (canonical_phrases)."""
    commands = []
    budget = MAX_WORDS
    for sentence in tokenize(transcript):
        sentence, budget = sentence[:budget], budget - len(sentence)
        if not sentence:
            break
        for clause in _clauses(sentence):
            command = _parse_clause(clause)
            if command is not None:
                commands.append(command)
    if concepts:
        return [Command(c.operation, canonical_phrases(c.phrases, concepts)) for c in commands]
    return commands


def parse_command(transcript: str, concepts=None) -> Command | None:
    """The command a transcript holds, or None if it holds none. A transcript with several commands ("track
    the mug and forget the chair") gives the first one; use parse_commands for all."""
    commands = parse_commands(transcript, concepts)
    return commands[0] if commands else None
