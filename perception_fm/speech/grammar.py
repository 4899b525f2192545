"""The spoken command grammar for recognisers that take one (PocketSphinx's JSGF search).

A recogniser constrained to a grammar hears only sentences of it, which makes a small offline model
reliable for robot commands: "[can you] segment the red cup and the chair [please]", "stop tracking the
chair", "only track the mug", "clear". It is generated from the intent table (perception_fm.speech.intents),
which perception_fm.speech.commands parses too (the tests check that every sentence of each intent parses as
that intent), and its objects are the phrase list the node is given and their plurals.

The same grammar is also a regular expression over words (`CommandGrammar.accepts`): a grammar search that
never reaches the end of a sentence reports its best partial path ("segment the red"); such hypotheses are
rejected rather than acted on.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from perception_fm.speech import intents


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
# The command grammar, generated from the intent table (perception_fm.speech.intents)

GARBAGE_WEIGHT = 1e-20

def clean_phrase(phrase: str) -> str:
    """A phrase as grammar words: lower case, letters, digits and apostrophes ("coke-bottle" → "coke bottle")."""
    words = re.sub(r"[^a-z0-9' ]+", " ", phrase.lower().replace("\u2019", "'")).split()
    return " ".join(word.strip("'") for word in words if word.strip("'"))


@dataclass
class CommandGrammar:
    root: Node  # the commands (without the garbage alternative)
    rules: dict[str, Node]
    phrases: tuple[str, ...]  # the object phrases in the grammar
    dropped: tuple[str, ...]  # phrases left out (a word unknown to the recogniser's dictionary)
    intents: dict[str, Node] = field(default_factory=dict)  # intent name → its sentences (for sampling, tests)
    garbage: tuple[str, ...] = ()  # the garbage loop's words (the recogniser's phone pseudo-words)
    name: str = "commands"

    @property
    def jsgf(self) -> str:
        """The grammar for the recogniser: a command, or (with garbage words) any sequence of them: an
        utterance that is no command comes out as garbage instead of as the nearest command."""
        # The garbage loop gets a tiny prior: it should win only where no command fits the sound at all. (A
        # phone loop fits any speech; a command pays for its words' transitions too, so it needs the edge.)
        public = (f"/1/ ({self.root.jsgf()}) | /{GARBAGE_WEIGHT:g}/ <garbage>" if self.garbage
                  else self.root.jsgf())
        lines = ["#JSGF V1.0;", f"grammar {self.name};", f"public <command> = {public};"]
        lines += [f"<{name}> = {body.jsgf()};" for name, body in self.rules.items()]
        if self.garbage:
            lines.append(f"<garbage> = ({' | '.join(self.garbage)})+;")
        return "\n".join(lines) + "\n"

    @property
    def pattern(self) -> re.Pattern:
        return re.compile(self.root.regex())

    def accepts(self, text: str) -> bool:
        """Whether `text` (words separated by spaces) is a whole command sentence of the grammar (a garbage
        hypothesis or a search's partial path is not)."""
        words = " ".join(text.lower().split())
        return bool(words) and self.pattern.fullmatch(" " + words) is not None

    def sample(self, rng: random.Random, intent: str | None = None) -> str:
        """A random sentence of the grammar (of one intent's sentences with `intent`)."""
        node = self.root if intent is None else self.intents[intent]
        return " ".join(node.sample(rng))

    @property
    def filler_words(self) -> frozenset[str]:
        """Words that carry neither intent nor object (lead, trail, determiners, joiners): a recogniser's
        confidence in them says nothing about what is meant."""
        words = {w for group in (intents.LEAD, intents.TRAIL, intents.DETERMINERS, intents.JOINERS)
                 for option in group for w in option.split()}
        meaningful = {w for intent in intents.INTENTS for option in intent.verbs + intent.forms
                      for w in option.split()} | {w for p in self.phrases for w in p.split()}
        return frozenset(words - meaningful)


def build_command_grammar(phrases: Iterable[str], known_word: Callable[[str], bool] | None = None,
                          name: str = "commands", garbage: Sequence[str] = ()) -> CommandGrammar:
    """The command grammar over `phrases` (the objects the operator may name) and their plurals, every intent
    of perception_fm.speech.intents.INTENTS in each of its forms. `known_word` tells whether the recogniser
    can pronounce a word; alternatives with unknown words are left out (phrases among them are listed in
    `dropped`). `garbage`: the recogniser's words for a garbage model (PocketSphinx: one pseudo-word per
    phone), which the JSGF offers as a loop beside the commands, so speech that is no command is heard as
    garbage instead of being forced into the nearest command. ValueError if no phrase is left."""
    known = known_word or (lambda word: True)

    def usable(options: Sequence[str]) -> list[str]:
        return list(dict.fromkeys(option for option in options if all(known(word) for word in option.split())))

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
    plurals = [p for p in usable([intents.plural(phrase) for phrase in kept]) if p not in kept]

    rules: dict[str, Node] = {}

    def rule(rule_name: str, options: Sequence[str]) -> Node | None:
        options = usable(options)
        if not options:
            return None
        rules[rule_name] = alt(*options)
        return Ref(rule_name, rules[rule_name])

    def named(rule_name: str, body: Node) -> Node:
        rules[rule_name] = body
        return Ref(rule_name, body)

    phrase = rule("phrase", kept)
    plural_rule = rule("plural", plurals)
    noun = alt(phrase, plural_rule) if plural_rule else phrase
    determiner = rule("determiner", intents.DETERMINERS)
    obj = named("object", seq(Opt(determiner), noun) if determiner else noun)
    joiner = rule("joiner", intents.JOINERS)
    objects = named("objects", seq(obj, Star(seq(joiner, obj))) if joiner else obj)

    by_intent: dict[str, Node] = {}
    for intent in intents.INTENTS:
        verb = rule(f"{intent.name}_verb", intent.verbs)
        if verb is None:
            continue
        sentences = []
        for form in intent.forms:
            parts = []
            for token in re.split(r"(\{verb\}|\{objects\})", form):
                if token == "{verb}":
                    parts.append(verb)
                elif token == "{objects}":
                    parts.append(objects)
                elif token.strip():
                    parts.append(token.strip())
            literal = " ".join(p for p in parts if isinstance(p, str))
            if all(known(word) for word in literal.split()):
                sentences.append(seq(*parts))
        if sentences:
            by_intent[intent.name] = named(intent.name, alt(*sentences))
    body = alt(*by_intent.values())
    lead, trail = rule("lead", intents.LEAD), rule("trail", intents.TRAIL)
    root = seq(*([Opt(lead)] if lead else []), body, *([Opt(trail)] if trail else []))
    intent_roots = {name: seq(*([Opt(lead)] if lead else []), node, *([Opt(trail)] if trail else []))
                    for name, node in by_intent.items()}
    grammar = CommandGrammar(root=root, rules=rules, phrases=tuple(kept), dropped=tuple(dropped),
                             intents=intent_roots, name=name)
    grammar.garbage = tuple(dict.fromkeys(garbage))
    return grammar
