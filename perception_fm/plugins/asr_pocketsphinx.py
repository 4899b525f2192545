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
A grammar hypothesis that is no whole sentence of the grammar (the search's best partial path) is
rejected: the transcript is empty with confidence 0.
"""
from __future__ import annotations

import logging
import os
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
        grammar = build_command_grammar(key, known_word=self.knows)  # ValueError if no phrase is usable
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
        confidence = None
        if grammar is not None:
            if text and not grammar.accepts(text):
                log.debug("pocketsphinx partial hypothesis %r is no sentence of the grammar; rejected", text)
                text, confidence = "", 0.0
        elif hypothesis is not None:
            confidence = float(min(1.0, max(0.0, self.decoder.logmath.exp(hypothesis.prob))))
        finished = time.perf_counter()
        return Transcript(text=text, confidence=confidence, timings_ms={
            "prepare": (prepared - started) * 1e3, "decode": (finished - prepared) * 1e3,
            "transcribe": (finished - started) * 1e3,
        })
