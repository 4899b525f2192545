"""Transcripts → concept commands (perception_fm.speech.commands) and the `concepts` messages they become."""
import random

import pytest

from perception_fm.pipelines.concepts import ADD as CONCEPT_ADD
from perception_fm.pipelines.concepts import REMOVE as CONCEPT_REMOVE
from perception_fm.pipelines.concepts import SET as CONCEPT_SET
from perception_fm.pipelines.concepts import ConceptCommand, parse_concepts_message
from perception_fm.speech.commands import (
    ADD, CLEAR, MAX_WORDS, REMOVE, REPLACE, Command, parse_command, parse_commands, to_concepts_message,
)
from perception_fm.speech.grammar import build_command_grammar

ADDS = {
    "segment the red cup and the chair": ("red cup", "chair"),
    "Segment the red cup and the chair.": ("red cup", "chair"),
    "track all people": ("people",),
    "Track all the people!": ("people",),
    "find the bottle": ("bottle",),
    "please find the bottle": ("bottle",),
    "can you please segment the laptop": ("laptop",),
    "Could you find all of the two red cups for me, please?": ("red cups",),
    "um, can you segment the door": ("door",),
    "uh okay robot, track the dog": ("dog",),
    "hey robot, segment the laptop, the keyboard, and the mouse.": ("laptop", "keyboard", "mouse"),
    "look for a green apple": ("green apple",),
    "search for my keys": ("keys",),
    "show me every chair": ("chair",),
    "highlight the blue box as well as the plant": ("blue box", "plant"),
    "detect cups or mugs": ("cups", "mugs"),
    "where is the remote": ("remote",),
    "Where's my phone?": ("phone",),
    "start tracking the cat": ("cat",),
    "keep an eye on the dog": ("dog",),
    "keep track of the forklift": ("forklift",),
    "I want you to track the person in the red shirt": ("person in the red shirt",),
    "I'd like you to segment the coffee mug": ("coffee mug",),
    "track the person with the hat": ("person with the hat",),
    "also track the chair": ("chair",),
    "track the chair too": ("chair",),
    "segment 3 bottles": ("bottles",),
    "track these boxes in the image": ("boxes",),
    "find the phone and watch": ("phone", "watch"),
    "follow the t-shirt": ("t-shirt",),
    "just track the mug": ("mug",),
    "go ahead and segment each apple, each pear and every banana": ("apple", "pear", "banana"),
    "track the cup, the cup and the cup": ("cup",),
    "Segment the RED Cup": ("red cup",),
}
REMOVES = {
    "stop tracking the chair": ("chair",),
    "forget the chair": ("chair",),
    "remove the chair": ("chair",),
    "Please stop tracking the chair.": ("chair",),
    "don't track the chair anymore": ("chair",),
    "do not segment the chair": ("chair",),
    "no longer follow the person": ("person",),
    "ignore the people": ("people",),
    "forget about the red cup and the mug": ("red cup", "mug"),
    "stop looking for the keys": ("keys",),
    "you can stop tracking the laptop now": ("laptop",),
    "get rid of the bottle": ("bottle",),
    "drop the box": ("box",),
    "no more chairs": ("chairs",),
    "stop segmenting the table, please": ("table",),
}
REPLACES = {
    "only track the mug": ("mug",),
    "Only track the mug.": ("mug",),
    "track only the mug": ("mug",),
    "track the mug only": ("mug",),
    "track just the mug": ("mug",),
    "track the mug instead": ("mug",),
    "segment nothing but the chairs": ("chairs",),
    "now only segment the people": ("people",),
    "switch to the mug": ("mug",),
    "switch to tracking the bottle": ("bottle",),
    "track the mug and nothing else": ("mug",),
    "only the red cup and the chair": ("red cup", "chair"),
    "please only follow the person": ("person",),
}
CLEARS = (
    "stop tracking everything", "Stop tracking everything.", "clear", "Clear!", "clear all", "clear everything",
    "reset", "forget everything", "forget all of it", "stop tracking", "stop segmenting", "remove everything",
    "track nothing", "please stop tracking all objects", "okay, you can stop tracking everything now",
    "stop tracking all of them", "start over", "stop everything", "forget all", "um clear",
)
NO_COMMANDS = (
    "", "   ", "what a nice day", "hello robot", "stop", "red cup", "the chair", "thank you", "forget it",
    "track it", "segment everything", "can you see the cup", "I like the chair", "um", "okay", "yes",
    "stop tracking it", "track them", "how are you", "Thank you.", "...", "only", "and the chair",
)


@pytest.mark.parametrize("transcript,phrases", ADDS.items())
def test_adds(transcript, phrases):
    assert parse_commands(transcript) == [Command(ADD, phrases)]


@pytest.mark.parametrize("transcript,phrases", REMOVES.items())
def test_removes(transcript, phrases):
    assert parse_commands(transcript) == [Command(REMOVE, phrases)]


@pytest.mark.parametrize("transcript,phrases", REPLACES.items())
def test_replaces(transcript, phrases):
    assert parse_commands(transcript) == [Command(REPLACE, phrases)]


@pytest.mark.parametrize("transcript", CLEARS)
def test_clears(transcript):
    assert parse_commands(transcript) == [Command(CLEAR)]


@pytest.mark.parametrize("transcript", NO_COMMANDS)
def test_no_command(transcript):
    assert parse_commands(transcript) == []
    assert parse_command(transcript) is None


@pytest.mark.parametrize("transcript,expected", [
    ("track the mug and forget the chair", [Command(ADD, ("mug",)), Command(REMOVE, ("chair",))]),
    ("track the cup but not the chair", [Command(ADD, ("cup",)), Command(REMOVE, ("chair",))]),
    ("Segment the cup. Then forget the chair.", [Command(ADD, ("cup",)), Command(REMOVE, ("chair",))]),
    ("clear, then track the person", [Command(CLEAR), Command(ADD, ("person",))]),
    ("stop tracking the chair and segment the red cup and the mug",
     [Command(REMOVE, ("chair",)), Command(ADD, ("red cup", "mug"))]),
    ("forget the chair and only track the mug", [Command(REMOVE, ("chair",)), Command(REPLACE, ("mug",))]),
])
def test_several_commands_in_one_utterance_in_order(transcript, expected):
    assert parse_commands(transcript) == expected
    assert parse_command(transcript) == expected[0]


def test_an_endless_transcript_is_cut():
    """A hallucinating model can write pages; only the first MAX_WORDS words are read."""
    commands = parse_commands("Track the cup and the chair. " * 500)
    assert commands == [Command(ADD, ("cup", "chair"))] * (MAX_WORDS // 6)  # the cut sentence: "track the"


@pytest.mark.parametrize("command,message,parsed", [
    (Command(ADD, ("red cup", "chair")), "red cup, chair",
     [ConceptCommand(CONCEPT_ADD, ("red cup",)), ConceptCommand(CONCEPT_ADD, ("chair",))]),
    (Command(REMOVE, ("chair",)), "-chair", [ConceptCommand(CONCEPT_REMOVE, ("chair",))]),
    (Command(REMOVE, ("chair", "mug")), "-chair, -mug",
     [ConceptCommand(CONCEPT_REMOVE, ("chair",)), ConceptCommand(CONCEPT_REMOVE, ("mug",))]),
    (Command(REPLACE, ("mug",)), "=mug", [ConceptCommand(CONCEPT_SET, ("mug",))]),
    (Command(REPLACE, ("red cup", "chair")), "=red cup, chair", [ConceptCommand(CONCEPT_SET, ("red cup", "chair"))]),
    (Command(CLEAR), "=", [ConceptCommand(CONCEPT_SET, ())]),
])
def test_concepts_messages_follow_the_topic_grammar(command, message, parsed):
    assert to_concepts_message(command) == message
    assert parse_concepts_message(message) == parsed  # what the concept node reads back


def test_concepts_message_drops_characters_of_the_topic_grammar_from_phrases():
    assert to_concepts_message(Command(ADD, ("cup, saucer", "=mug", "-chair"))) == "cup saucer, mug, chair"
    with pytest.raises(ValueError):
        to_concepts_message(Command(ADD, (",",)))


def test_command_checks_itself():
    with pytest.raises(ValueError):
        Command("paint", ("wall",))
    with pytest.raises(ValueError):
        Command(ADD)
    with pytest.raises(ValueError):
        Command(CLEAR, ("chair",))


def test_every_sentence_of_the_spoken_grammar_is_a_command_of_its_intent():
    """The recogniser's grammar and the parser come from one table (perception_fm.speech.intents): every
    sentence the grammar generates for an intent must parse as exactly one command of that intent, over the
    listed concepts (plurals mapped to them)."""
    concepts = ["red cup", "chair", "people", "bottle", "box"]
    grammar = build_command_grammar(concepts)
    rng = random.Random(7)
    for intent in (ADD, REMOVE, REPLACE, CLEAR):
        for _ in range(1500):
            sentence = grammar.sample(rng, intent)
            assert grammar.accepts(sentence), sentence
            commands = parse_commands(sentence, concepts)
            assert [c.operation for c in commands] == [intent], sentence
            assert set(commands[0].phrases) <= set(concepts), sentence


def test_the_garbage_loop_is_offered_beside_the_commands_but_never_accepted_as_one():
    grammar = build_command_grammar(["red cup", "chair"], garbage=["garbage-aa", "garbage-k"])
    jsgf = grammar.jsgf
    assert "| /1e-20/ <garbage>;" in jsgf and "<garbage> = (garbage-aa | garbage-k)+;" in jsgf
    assert not grammar.accepts("garbage-aa garbage-k") and grammar.accepts("find the chair")
    assert "<garbage>" not in build_command_grammar(["chair"]).jsgf


# The way people talk: each intent in its common forms (issue 17)
SPOKEN_FORMS = {
    # add: find, look for, show me, where is, track, segment, detect, highlight, follow, "I want you to ..."
    "find the bottle": [Command(ADD, ("bottle",))],
    "look for the bottles": [Command(ADD, ("bottle",))],
    "show me the chairs please": [Command(ADD, ("chair",))],
    "where is the red cup": [Command(ADD, ("red cup",))],
    "where are the bottles?": [Command(ADD, ("bottle",))],
    "track every person": [Command(ADD, ("person",))],
    "can you segment the chair": [Command(ADD, ("chair",))],
    "could you please detect all the boxes": [Command(ADD, ("box",))],
    "highlight any bottle": [Command(ADD, ("bottle",))],
    "follow that person": [Command(ADD, ("person",))],
    "I want you to track the people": [Command(ADD, ("person",))],
    "would you find the red cups for me": [Command(ADD, ("red cup",))],
    "find the bottle, the chair and the box": [Command(ADD, ("bottle", "chair", "box"))],
    "track the chairs as well as the boxes": [Command(ADD, ("chair", "box"))],
    # remove: stop tracking, forget, ignore, drop, remove, don't track
    "stop tracking the bottles": [Command(REMOVE, ("bottle",))],
    "forget the chair": [Command(REMOVE, ("chair",))],
    "ignore the people": [Command(REMOVE, ("person",))],
    "drop the boxes": [Command(REMOVE, ("box",))],
    "please remove the red cup and the chair": [Command(REMOVE, ("red cup", "chair"))],
    "don't track the person anymore": [Command(REMOVE, ("person",))],
    # replace: only, just, track only
    "only track the bottle": [Command(REPLACE, ("bottle",))],
    "track only the chairs": [Command(REPLACE, ("chair",))],
    "segment just the box": [Command(REPLACE, ("box",))],
    "find the person instead": [Command(REPLACE, ("person",))],
    # clear: clear, reset, stop everything
    "clear": [Command(CLEAR)],
    "reset": [Command(CLEAR)],
    "reset everything please": [Command(CLEAR)],
    "stop everything": [Command(CLEAR)],
    "stop tracking everything": [Command(CLEAR)],
}


@pytest.mark.parametrize("transcript,expected", SPOKEN_FORMS.items())
def test_spoken_forms_with_the_phrase_list(transcript, expected):
    assert parse_commands(transcript, ["red cup", "chair", "person", "bottle", "box"]) == expected


def test_plurals_name_the_listed_concept_and_only_with_a_list():
    assert parse_commands("find the bottles") == [Command(ADD, ("bottles",))]  # no list: as said
    assert parse_commands("find the bottles and the bottle", ["bottle"]) == [Command(ADD, ("bottle",))]
    # "people" listed itself stays "people"; unlisted phrases stay as said
    assert parse_commands("track the people and the dogs", ["people", "person"]) == \
        [Command(ADD, ("people", "dogs"))]
    assert parse_commands("track the glasses", ["glass"]) == [Command(ADD, ("glass",))]
