"""PocketSphinx (CMU, BSD-2-Clause) as a perception_fm speech plugin: small, CPU only, offline by nature.

The PyPI wheel (`pip install pocketsphinx`, 5.x) ships a US English acoustic model, the CMU pronouncing
dictionary and a general language model; that is the default "weights". A local directory with another
model can be given instead: an acoustic model directory (the one holding ``mdef``: the directory itself or
a subdirectory), a pronouncing dictionary ``*.dict`` and optionally a language model (``*.lm.bin``,
``*.lm``, ``*.arpa``).

Free dictation with the general language model is poor. Given `phrases` (the objects the operator may
name), recognition is constrained to the spoken command grammar over them (perception_fm.speech.grammar:
"[please] segment the red cup and the chair", "stop tracking the chair", "clear", ...), which is what makes
it reliable for robot commands. Phrases with a word the dictionary cannot pronounce are left out (logged).
The grammar also offers a garbage alternative (a loop of phone pseudo-words, see PHONES), so speech that is no
command is heard as garbage ("…" in the transcript) instead of being forced into the nearest command. A hypothesis that is no
whole command of the grammar (garbage, or the search's best partial path) keeps its words but gets
confidence 0. A command's confidence is the least lattice posterior probability of its meaningful words
(verbs, "only", objects; not "please" or "the"), which the listener compares with min_confidence and, for
commands that remove, replace or clear, destructive_min_confidence.
"""
from __future__ import annotations

import logging
import os
import re
import time
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

from perception_fm.errors import WeightsNotFoundError
from perception_fm.hookspecs import ModelOptions, ModelSpec, Task, hookimpl
from perception_fm.tasks.speech import SpeechCapabilities, Transcript

log = logging.getLogger(__name__)

NAME = "pocketsphinx"
SAMPLE_RATE = 16000
BUNDLED = "bundled en-us"
LANGUAGES = ("en", "en-us", "english", "")
MAX_GRAMMARS = 8  # grammar searches kept (one per phrase list in use)
LM_SUFFIXES = (".lm.bin", ".lm", ".arpa", ".lm.dmp")
# The garbage model: one pseudo-word per phone of the CMU phone set (the bundled model's), looped in the
# grammar beside the commands. Speech that is no command then decodes as a phone sequence instead of being
# forced into the nearest command ("open the door and turn on the light" came out as "find the bottle and the
# chair and the laptop" with a word posterior of 0.2 without it). Decoding such speech is slower (2-14 s per
# utterance on a loaded 2-core machine vs 0.1-1.2 s for a command), but it is rejected.
PHONES = ("AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH UW V W Y Z "
          "ZH").split()
GARBAGE_PREFIX = "garbage-"
UNINTELLIGIBLE = "…"  # what a run of garbage pseudo-words becomes in the transcript


@hookimpl
def register_models() -> list[ModelSpec]:
    return [
        ModelSpec(
            name=NAME,
            task=Task.SPEECH,
            summary="PocketSphinx 5 (CMU): small offline CPU recogniser with the bundled US English model; "
                    "constrained to the command grammar over the node's phrase_list, which makes it reliable "
                    "for commands. weights: empty (bundled model) or a local model directory.",
            license="BSD-2-Clause (pocketsphinx: CMU; bundled en-us model: Alpha Cephei)",
            default_weights="",
            requires=("pocketsphinx",),
            create=PocketSphinxModel.from_options,
        )
    ]


def _bundled_model() -> tuple[Path, Path, Path | None]:
    import pocketsphinx

    root = Path(pocketsphinx.get_model_path())
    return root / "en-us" / "en-us", root / "en-us" / "cmudict-en-us.dict", root / "en-us" / "en-us.lm.bin"


def resolve_model_dir(source: str) -> tuple[Path, Path, Path | None]:
    """(acoustic model dir, dictionary, language model or None) in a local directory."""
    directory = Path(os.path.expanduser(source))
    if not directory.is_dir():
        raise WeightsNotFoundError(
            f"PocketSphinx weights {source!r}: not a local directory. PocketSphinx models are not on the model "
            f"hub; leave weights empty for the bundled en-us model or give a directory with an acoustic model "
            f"(mdef, means, ...), a *.dict pronouncing dictionary and optionally a language model."
        )
    candidates = [directory] + sorted(p for p in directory.iterdir() if p.is_dir())
    acoustic = next((p for p in candidates if (p / "mdef").is_file()), None)
    dictionaries = sorted(p for p in directory.rglob("*.dict") if p.is_file())
    models = sorted(p for p in directory.rglob("*") if p.is_file() and p.name.lower().endswith(LM_SUFFIXES))
    missing = ([] if acoustic else ["an acoustic model directory (with mdef)"]) + \
              ([] if dictionaries else ["a *.dict pronouncing dictionary"])
    if missing:
        raise WeightsNotFoundError(f"PocketSphinx model directory {str(directory)!r} lacks {' and '.join(missing)}")
    return acoustic, dictionaries[0], (models[0] if models else None)


class PocketSphinxModel:
    """The SpeechModel protocol (perception_fm.tasks.speech) over one pocketsphinx Decoder (not thread-safe:
    one caller at a time, e.g. the node's worker)."""

    name = NAME
    capabilities = SpeechCapabilities(sample_rate=SAMPLE_RATE, phrase_list=True)

    def __init__(self, acoustic: Path, dictionary: Path, language_model: Path | None, *, weights: str):
        import pocketsphinx

        self.weights = weights
        self.device = "cpu"
        config = pocketsphinx.Config(hmm=str(acoustic), dict=str(dictionary),
                                     lm=str(language_model) if language_model else None,
                                     samprate=SAMPLE_RATE, loglevel="FATAL")
        try:
            self.decoder = pocketsphinx.Decoder(config)
        except (RuntimeError, ValueError) as error:
            raise WeightsNotFoundError(f"PocketSphinx could not load {weights}: {error}") from error
        self.has_language_model = language_model is not None
        # a model directory with another phone set simply has no garbage model (add_word refuses unknown phones)
        self._garbage_words = []
        for phone in PHONES:
            word = GARBAGE_PREFIX + phone.lower()
            try:
                self.decoder.add_word(word, phone, False)
            except (RuntimeError, ValueError):
                continue
            self._garbage_words.append(word)
        self._grammars: OrderedDict[tuple[str, ...], tuple[str, object] | None] = OrderedDict()
        self._searches = 0

    @classmethod
    def from_options(cls, options: ModelOptions) -> "PocketSphinxModel":
        if options.random_weights:
            raise ValueError("pocketsphinx has no random-weights mode; set random_weights to false")
        language = str(dict(options.extra).get("language", "en")).lower()
        if language not in LANGUAGES:
            raise ValueError(f"pocketsphinx's model here is US English; language {language!r} is not supported "
                             f"(give weights: a directory with a model for it, and language: en)")
        if options.weights:
            acoustic, dictionary, language_model = resolve_model_dir(options.weights)
            weights = options.weights
        else:
            acoustic, dictionary, language_model = _bundled_model()
            weights = BUNDLED
        return cls(acoustic, dictionary, language_model, weights=weights)

    # -- grammar --------------------------------------------------------------------------------------------

    def knows(self, word: str) -> bool:
        return self.decoder.lookup_word(word) is not None

    def grammar_for(self, phrases: Sequence[str]):
        """The CommandGrammar for `phrases` (cached), with its search added to the decoder."""
        from perception_fm.speech.grammar import build_command_grammar

        key = tuple(phrases)
        if key in self._grammars:
            self._grammars.move_to_end(key)
            return self._grammars[key]
        grammar = build_command_grammar(key, known_word=self.knows,  # ValueError if no phrase is usable
                                        garbage=self._garbage_words)
        if grammar.dropped:
            log.warning("pocketsphinx cannot pronounce a word of %s; left out of the grammar",
                        ", ".join(repr(p) for p in grammar.dropped))
        self._searches += 1
        search = f"commands{self._searches}"
        try:
            self.decoder.add_jsgf_string(search, grammar.jsgf)
        except (ValueError, RuntimeError) as error:
            raise ValueError(f"pocketsphinx rejected the command grammar: {error}") from error
        self._grammars[key] = (search, grammar)
        while len(self._grammars) > MAX_GRAMMARS:
            _, (old_search, _) = self._grammars.popitem(last=False)
            self.decoder.remove_search(old_search)
        return search, grammar

    # -- recognition ----------------------------------------------------------------------------------------

    def _word_confidence(self, filler_words) -> float:
        """The least posterior probability (from the search's word lattice) of the words that carry the intent
        or an object: the hypothesis is only as sure as its weakest meaningful word ("track" vs "ignore")."""
        posteriors = []
        for segment in self.decoder.seg() or ():
            word = segment.word.split("(")[0]  # "every(2)": the second pronunciation of "every"
            if word.startswith(("<", "[")) or word in filler_words:
                continue
            posteriors.append(float(segment.prob))
        return float(min(1.0, max(0.0, min(posteriors)))) if posteriors else 0.0

    def transcribe(self, audio: np.ndarray, phrases: Sequence[str] | None = None) -> Transcript:
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        started = time.perf_counter()
        grammar = None
        if phrases:
            search, grammar = self.grammar_for(phrases)
            self.decoder.activate_search(search)
        elif self.has_language_model:
            self.decoder.activate_search()  # the default: the language model
        else:
            raise ValueError("this PocketSphinx model has no language model: give phrases (the node's phrase_list)")
        prepared = time.perf_counter()
        pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        self.decoder.start_utt()
        try:
            self.decoder.process_raw(pcm, no_search=False, full_utt=True)
        finally:
            self.decoder.end_utt()
        hypothesis = self.decoder.hyp()
        text = " ".join(hypothesis.hypstr.split()) if hypothesis is not None else ""
        if GARBAGE_PREFIX in text:
            text = re.sub(rf"(?:{re.escape(GARBAGE_PREFIX)}\S+\s*)+", UNINTELLIGIBLE + " ", text).strip()
        confidence = None
        if grammar is not None:
            if text and not grammar.accepts(text):
                # the garbage alternative (speech that is no command) or the search's best partial path: the
                # words are reported, but with no confidence at all, so nothing is acted on
                log.debug("pocketsphinx hypothesis %r is no command of the grammar; not understood", text)
                confidence = 0.0
            elif text:
                confidence = self._word_confidence(grammar.filler_words)
        elif hypothesis is not None:
            confidence = float(min(1.0, max(0.0, self.decoder.logmath.exp(hypothesis.prob))))
        finished = time.perf_counter()
        return Transcript(text=text, confidence=confidence, timings_ms={
            "prepare": (prepared - started) * 1e3, "decode": (finished - prepared) * 1e3,
            "transcribe": (finished - started) * 1e3,
        })
