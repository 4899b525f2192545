"""The spoken command grammar for recognisers that take one (PocketSphinx's JSGF search).

A recogniser constrained to a grammar hears only sentences of it, which makes a small offline model
reliable for robot commands: "[can you] segment the red cup and the chair [please]", "stop tracking the
chair", "only track the mug", "clear". Its verbs, fillers and determiners are a subset of what
perception_fm.speech.commands understands (the tests check that every sentence of it parses), and its
objects are the phrase list the node is given.

The same grammar is also a regular expression over words (`CommandGrammar.accepts`): a grammar search that
never reaches the end of a sentence reports its best partial path ("segment the red"); such hypotheses are
rejected rather than acted on.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence


# ----------------------------------------------------------------------------------------------------------
# A tiny grammar algebra: each node writes itself as JSGF and as a regex over " word" tokens.


class Node:
    def jsgf(self) -> str:
        raise NotImplementedError

    def regex(self) -> str:
        raise NotImplementedError

    def sample(self, rng: random.Random) -> list[str]:
        raise NotImplementedError


@dataclass(frozen=True)
class Words(Node):
    text: str

    def jsgf(self) -> str:
        return self.text

    def regex(self) -> str:
        return "".join(" " + re.escape(word) for word in self.text.split())

    def sample(self, rng):
        return self.text.split()


@dataclass(frozen=True)
class Ref(Node):
    """A named rule: <name> in JSGF; its body inlined in the regex."""
    name: str
    body: Node

    def jsgf(self) -> str:
        return f"<{self.name}>"

    def regex(self) -> str:
        return self.body.regex()

    def sample(self, rng):
        return self.body.sample(rng)


@dataclass(frozen=True)
class Seq(Node):
    items: tuple[Node, ...]

    def jsgf(self) -> str:
        return " ".join(item.jsgf() for item in self.items)

    def regex(self) -> str:
        return "".join(item.regex() for item in self.items)

    def sample(self, rng):
        return [word for item in self.items for word in item.sample(rng)]


@dataclass(frozen=True)
class Alt(Node):
    options: tuple[Node, ...]

    def jsgf(self) -> str:
        return "(" + " | ".join(option.jsgf() for option in self.options) + ")"

    def regex(self) -> str:
        return "(?:" + "|".join(option.regex() for option in self.options) + ")"

    def sample(self, rng):
        return rng.choice(self.options).sample(rng)


@dataclass(frozen=True)
class Opt(Node):
    item: Node

    def jsgf(self) -> str:
        return f"[{self.item.jsgf()}]"

    def regex(self) -> str:
        return f"(?:{self.item.regex()})?"

    def sample(self, rng):
        return self.item.sample(rng) if rng.random() < 0.5 else []


@dataclass(frozen=True)
class Star(Node):
    item: Node

    def jsgf(self) -> str:
        return f"({self.item.jsgf()})*"

    def regex(self) -> str:
        return f"(?:{self.item.regex()})*"

    def sample(self, rng):
        return [word for _ in range(rng.choice((0, 0, 1, 1, 2))) for word in self.item.sample(rng)]


def seq(*items) -> Node:
    nodes = tuple(Words(i) if isinstance(i, str) else i for i in items)
    return nodes[0] if len(nodes) == 1 else Seq(nodes)


def alt(*options) -> Node:
    nodes = tuple(dict.fromkeys(Words(o) if isinstance(o, str) else o for o in options))
    if not nodes:
        raise ValueError("an alternative with no option")
    return nodes[0] if len(nodes) == 1 else Alt(nodes)


# ----------------------------------------------------------------------------------------------------------
# The command grammar

# Chosen for recognition, not coverage: every alternative is a chance to mishear. Short vowel-like words
# ("or", "and" as a lead, "an") matched background noise and broke sentences on synthetic speech, so they
# are left out; commands.py still understands them from recognisers without a grammar.
LEAD = ("please", "can you", "could you", "can you please", "could you please", "okay robot", "hey robot",
        "robot", "now")
TRAIL = ("please", "now", "too", "as well", "thank you")
ADD = ("segment", "track", "find", "detect", "highlight", "follow", "look for", "search for", "show me",
       "start tracking", "where is")
REPLACE_VERBS = ("segment", "track", "find", "detect", "follow")
REMOVE = ("stop tracking", "stop segmenting", "stop following", "stop looking for", "forget", "forget about",
          "remove", "ignore", "do not track", "no longer track")
CLEAR = ("clear", "clear all", "clear everything", "forget everything", "stop tracking everything",
         "stop tracking", "remove everything", "track nothing", "stop segmenting")
DETERMINERS = ("the", "a", "all", "all the", "every", "each", "this", "these", "those", "my", "both", "both the")
JOINERS = ("and", "as well as")


def clean_phrase(phrase: str) -> str:
    """A phrase as grammar words: lower case, letters, digits and apostrophes ("coke-bottle" → "coke bottle")."""
    words = re.sub(r"[^a-z0-9' ]+", " ", phrase.lower().replace("\u2019", "'")).split()
    return " ".join(word.strip("'") for word in words if word.strip("'"))


@dataclass
class CommandGrammar:
    root: Node
    rules: dict[str, Node]
    phrases: tuple[str, ...]  # the object phrases in the grammar
    dropped: tuple[str, ...]  # phrases left out (a word unknown to the recogniser's dictionary)
    name: str = "commands"

    @property
    def jsgf(self) -> str:
        lines = ["#JSGF V1.0;", f"grammar {self.name};", f"public <command> = {self.root.jsgf()};"]
        lines += [f"<{name}> = {body.jsgf()};" for name, body in self.rules.items()]
        return "\n".join(lines) + "\n"

    @property
    def pattern(self) -> re.Pattern:
        return re.compile(self.root.regex())

    def accepts(self, text: str) -> bool:
        """Whether `text` (words separated by spaces) is a whole sentence of the grammar."""
        words = " ".join(text.lower().split())
        return bool(words) and self.pattern.fullmatch(" " + words) is not None

    def sample(self, rng: random.Random) -> str:
        return " ".join(self.root.sample(rng))


def build_command_grammar(phrases: Iterable[str], known_word: Callable[[str], bool] | None = None,
                          name: str = "commands") -> CommandGrammar:
    """The command grammar over `phrases` (the objects the operator may name). `known_word` tells whether
    the recogniser can pronounce a word; alternatives with unknown words are left out (phrases among them
    are listed in `dropped`). ValueError if no phrase is left."""
    known = known_word or (lambda word: True)

    def usable(options: Sequence[str]) -> list[str]:
        return [option for option in options if all(known(word) for word in option.split())]

    kept, dropped = [], []
    for phrase in phrases:
        cleaned = clean_phrase(phrase)
        if not cleaned:
            continue
        if usable([cleaned]):
            kept.append(cleaned)
        else:
            dropped.append(phrase)
    kept = list(dict.fromkeys(kept))
    if not kept:
        raise ValueError("no phrase of the phrase list can be recognised"
                         + (f" (unknown words in: {', '.join(dropped)})" if dropped else ""))

    rules: dict[str, Node] = {}

    def rule(rule_name: str, options: Sequence[str]) -> Node | None:
        options = usable(options)
        if not options:
            return None
        rules[rule_name] = alt(*options)
        return Ref(rule_name, rules[rule_name])

    phrase = rule("phrase", kept)
    determiner = rule("determiner", DETERMINERS)
    obj = Ref("object", seq(Opt(determiner), phrase) if determiner else phrase)
    rules["object"] = obj.body
    joiner = rule("joiner", JOINERS)
    objects = Ref("objects", seq(obj, Star(seq(joiner, obj))) if joiner else obj)
    rules["objects"] = objects.body

    commands = []
    add = rule("add_verb", ADD)
    if add:
        commands.append(seq(add, objects))
    remove = rule("remove_verb", REMOVE)
    if remove:
        commands.append(seq(remove, objects))
    replace = rule("replace_verb", REPLACE_VERBS)
    if replace and known("only"):
        commands += [seq("only", replace, objects), seq(replace, "only", objects)]
        if known("instead"):
            commands.append(seq(replace, objects, "instead"))
    clear = rule("clear", CLEAR)
    if clear:
        commands.append(clear)
    body = alt(*commands)
    lead, trail = rule("lead", LEAD), rule("trail", TRAIL)
    root = seq(*([Opt(lead)] if lead else []), body, *([Opt(trail)] if trail else []))
    # rule order in the JSGF text: dependencies after their users is fine for JSGF
    return CommandGrammar(root=root, rules=rules, phrases=tuple(kept), dropped=tuple(dropped), name=name)
