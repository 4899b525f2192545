"""The speech plugins through the plugin manager: Whisper (a tiny random-initialised checkpoint of the real
architecture, with a byte-level tokenizer built here, loaded through the plugin's real loader) and
PocketSphinx (its bundled English model); and the spoken command grammar."""
import random
import re
import shutil
import subprocess

import numpy as np
import pytest

from perception_fm.errors import WeightsNotFoundError
from perception_fm.hookspecs import ModelOptions, Task
from perception_fm.plugin_manager import PluginManager
from perception_fm.speech.audio import resample
from perception_fm.speech.commands import parse_commands
from perception_fm.speech.grammar import build_command_grammar, clean_phrase
from perception_fm.tasks.speech import SpeechModel, Transcript

SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
            "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]


@pytest.fixture(scope="module")
def manager():
    return PluginManager(entry_points=False)


def noise(seconds=1.0, seed=0):
    return (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 0.05).astype(np.float32)


def test_both_models_are_registered_for_the_speech_task(manager):
    entries = {entry.spec.name: entry.spec for entry in manager.models(Task.SPEECH)}
    assert {"whisper", "pocketsphinx"} <= set(entries)
    assert entries["whisper"].default_weights == "openai/whisper-small.en"
    assert "MIT" in entries["whisper"].license and "BSD" in entries["pocketsphinx"].license
    assert "transformers" in entries["whisper"].requires and entries["pocketsphinx"].requires == ("pocketsphinx",)


# ----------------------------------------------------------------------------------------------------------
# Whisper


def save_tiny_whisper(directory, multilingual=False):
    """A 2-layer Whisper (the real WhisperForConditionalGeneration) with random weights, a byte-level BPE
    tokenizer with Whisper's special tokens, the real feature extractor and a generation config, written
    with save_pretrained as a hub checkpoint is.

    The weight matrices are drawn with std 0.5 (not the initialiser's 0.02): at 0.02 the tiny decoder repeats
    one token whatever it hears, so a transcript could not show whether the audio, the prompt or the language
    reached the model; at 0.5 the output depends on all three."""
    import torch
    from tokenizers import pre_tokenizers
    from transformers import (
        GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
        WhisperProcessor, WhisperTokenizer,
    )

    vocab = {character: i for i, character in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[])
    specials = SPECIALS + (["<|de|>"] if multilingual else [])
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in specials}
    end = ids["<|endoftext|>"]
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer)
    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=80, encoder_layers=1, decoder_layers=1, d_model=32,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=1500, max_target_positions=64, pad_token_id=end, bos_token_id=end, eos_token_id=end,
        decoder_start_token_id=ids["<|startoftranscript|>"],
    )
    torch.manual_seed(0)
    net = WhisperForConditionalGeneration(config)
    with torch.no_grad():
        for parameter in net.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.5)
    generation = dict(
        decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=end, pad_token_id=end, bos_token_id=end,
        no_timestamps_token_id=ids["<|notimestamps|>"], prev_sot_token_id=ids["<|startofprev|>"], max_length=64,
        suppress_tokens=[], begin_suppress_tokens=[end], is_multilingual=multilingual,
    )
    if multilingual:
        generation.update(lang_to_id={"<|en|>": ids["<|en|>"], "<|de|>": ids["<|de|>"]},
                          task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]})
    net.generation_config = GenerationConfig(**generation)
    net.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    return save_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"))


DECODER_POSITIONS = 64  # max_target_positions of the tiny checkpoint


def whisper_reference(directory, audio, prompt=None, language=None, random_init=False) -> str:
    """What transformers itself makes of `audio` with the checkpoint in `directory`, without our plugin:
    the processor's features, greedy `generate` (optionally with a text prompt, as processor.get_prompt_ids
    builds it, and a language), the tokenizer's decoding without special tokens. The plugin's documented
    budget: prompt + 5 start tokens + new tokens fill the decoder's positions; its transcript has whitespace
    runs collapsed to one space."""
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(str(directory))
    if random_init:
        torch.manual_seed(0)
        net = WhisperForConditionalGeneration(WhisperConfig.from_pretrained(str(directory)))
        net.generation_config = GenerationConfig.from_pretrained(str(directory))
    else:
        net = WhisperForConditionalGeneration.from_pretrained(str(directory))
    features = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
    kwargs = {"language": language, "task": "transcribe"} if language else {}
    prompt_length = 0
    if prompt is not None:
        kwargs["prompt_ids"] = processor.get_prompt_ids(prompt, return_tensors="pt")
        prompt_length = len(kwargs["prompt_ids"])
    with torch.inference_mode():
        ids = net.eval().generate(features, max_new_tokens=DECODER_POSITIONS - prompt_length - 5, **kwargs)
    return " ".join(processor.batch_decode(ids, skip_special_tokens=True)[0].split())


def test_whisper_loads_a_checkpoint_directory_and_transcribes(manager, tiny_whisper):
    model = manager.create(Task.SPEECH, "whisper", ModelOptions(weights=str(tiny_whisper), device="cpu"))
    assert isinstance(model, SpeechModel)
    assert model.weights == str(tiny_whisper) and model.device == "cpu"
    assert model.capabilities.sample_rate == 16000 and model.capabilities.phrase_list
    transcript = model.transcribe(noise())
    assert isinstance(transcript, Transcript)
    # random weights: garbage, but exactly transformers' own garbage for this audio, and the same every time
    assert transcript.text and transcript.text == whisper_reference(tiny_whisper, noise())
    assert model.transcribe(noise()).text == transcript.text
    assert model.transcribe(noise(seed=1)).text == whisper_reference(tiny_whisper, noise(seed=1)) != transcript.text
    assert 0.0 <= transcript.confidence <= 1.0
    assert transcript.timings_ms["transcribe"] > 0
    # phrases go into the decoder prompt (they change what is decoded); the prompt is not part of the transcript
    biased = model.transcribe(noise(), ["red cup", "chair"])
    assert biased.text == whisper_reference(tiny_whisper, noise(), prompt="red cup, chair.") != transcript.text
    assert "red cup, chair" not in biased.text
    prompt = model.prompt_ids(["red cup", "chair"])
    assert model.processor.tokenizer.decode(prompt.tolist()) == "<|startofprev|> red cup, chair."


def test_whisper_prompt_keeps_within_the_decoders_budget(manager, tiny_whisper):
    model = manager.create(Task.SPEECH, "whisper", ModelOptions(weights=str(tiny_whisper), device="cpu"))
    many = [f"object number {i}" for i in range(40)]  # far more characters than 64 // 2 positions
    prompt = model.prompt_ids(many)
    assert 0 < len(prompt) <= 64 // 2 - 1
    # the phrases that fit, from the first on, whole
    kept = model.processor.tokenizer.decode(prompt.tolist()).removeprefix("<|startofprev|> ")
    assert kept.endswith(".") and kept[:-1].split(", ") == many[:len(kept[:-1].split(", "))]
    assert model.transcribe(noise(0.5), many).text == whisper_reference(tiny_whisper, noise(0.5), prompt=kept)


def test_whisper_cuts_utterances_longer_than_its_window(manager, tiny_whisper, caplog):
    model = manager.create(Task.SPEECH, "whisper", ModelOptions(weights=str(tiny_whisper), device="cpu"))
    long = noise(31.0)
    assert model.transcribe(long).text == whisper_reference(tiny_whisper, long[:30 * 16000])
    assert "cut to Whisper's 30 s window" in caplog.text


def test_whisper_random_weights_need_only_the_config_and_processor(manager, tiny_whisper, tmp_path):
    for name in ("config.json", "generation_config.json", "processor_config.json", "tokenizer.json",
                 "tokenizer_config.json"):
        if (tiny_whisper / name).exists():
            shutil.copy(tiny_whisper / name, tmp_path / name)
    model = manager.create(Task.SPEECH, "whisper", ModelOptions(weights=str(tmp_path), random_weights=True,
                                                                device="cpu"))
    assert model.weights == "random-init"
    # the architecture of the config with torch's initialiser (seeded: the same network every time), not the
    # checkpoint's weights
    text = model.transcribe(noise(0.5)).text
    assert text == whisper_reference(tmp_path, noise(0.5), random_init=True) != whisper_reference(tiny_whisper,
                                                                                                  noise(0.5))
    with pytest.raises(WeightsNotFoundError, match="model.safetensors"):
        manager.create(Task.SPEECH, "whisper", ModelOptions(weights=str(tmp_path), device="cpu"))


def test_whisper_english_only_checkpoint_refuses_another_language(manager, tiny_whisper):
    with pytest.raises(ValueError, match="English-only"):
        manager.create(Task.SPEECH, "whisper", ModelOptions(weights=str(tiny_whisper), device="cpu",
                                                            extra={"language": "de"}))


def test_whisper_multilingual_checkpoint_takes_a_language(manager, tmp_path):
    directory = save_tiny_whisper(tmp_path / "multilingual", multilingual=True)
    model = manager.create(Task.SPEECH, "whisper", ModelOptions(weights=str(directory), device="cpu",
                                                                extra={"language": "de"}))
    assert model.multilingual and model.language == "de"
    # the language token reaches the decoder: German is decoded, which differs from English
    assert model.transcribe(noise(0.5)).text == whisper_reference(directory, noise(0.5), language="de") != \
        whisper_reference(directory, noise(0.5), language="en")


def test_whisper_missing_weights(manager, tmp_path, monkeypatch):
    with pytest.raises(WeightsNotFoundError, match="lack config.json"):
        manager.create(Task.SPEECH, "whisper", ModelOptions(weights=str(tmp_path), device="cpu"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsNotFoundError, match="offline mode is on"):
        manager.create(Task.SPEECH, "whisper", ModelOptions(weights="openai/whisper-tiny.en", offline=True,
                                                            device="cpu", cache_dir=str(tmp_path / "empty-cache")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="hf download openai/whisper-small.en"):
        manager.create(Task.SPEECH, "whisper", ModelOptions(device="cpu", cache_dir=str(tmp_path / "empty-cache")))


def test_whisper_broken_checkpoint_is_a_weights_error(manager, tiny_whisper, tmp_path):
    shutil.copy(tiny_whisper / "config.json", tmp_path / "config.json")
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsNotFoundError, match="could not be loaded"):
        manager.create(Task.SPEECH, "whisper", ModelOptions(weights=str(tmp_path), device="cpu"))


# ----------------------------------------------------------------------------------------------------------
# PocketSphinx


@pytest.fixture(scope="module")
def sphinx(manager):
    return manager.create(Task.SPEECH, "pocketsphinx", ModelOptions())


def test_pocketsphinx_bundled_model(sphinx):
    assert isinstance(sphinx, SpeechModel)
    assert sphinx.weights == "bundled en-us" and sphinx.device == "cpu"
    assert sphinx.capabilities.sample_rate == 16000 and sphinx.capabilities.phrase_list
    transcript = sphinx.transcribe(np.zeros(8000, np.float32), ["red cup", "chair"])
    assert transcript.text == "" and transcript.timings_ms["decode"] >= 0
    assert sphinx.transcribe(noise()).text == ""  # free dictation with the language model: hiss is no words


def test_pocketsphinx_grammar_leaves_out_words_it_cannot_pronounce(sphinx, caplog):
    search, grammar = sphinx.grammar_for(["red cup", "qxzzv box", "Coke-bottle"])
    assert grammar.phrases == ("red cup", "coke bottle") and grammar.dropped == ("qxzzv box",)
    assert "qxzzv box" in caplog.text
    assert sphinx.grammar_for(["red cup", "qxzzv box", "Coke-bottle"])[0] == search  # cached
    with pytest.raises(ValueError, match="no phrase"):
        sphinx.grammar_for(["qxzzv"])


def test_pocketsphinx_keeps_a_bounded_number_of_grammars(sphinx):
    searches = [sphinx.grammar_for([f"chair {word}"])[0] for word in
                ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")]
    assert len(sphinx._grammars) <= 8
    assert sphinx.grammar_for(["chair ten"])[0] == searches[-1]


def test_pocketsphinx_options(manager, tmp_path):
    with pytest.raises(ValueError, match="random"):
        manager.create(Task.SPEECH, "pocketsphinx", ModelOptions(random_weights=True))
    with pytest.raises(ValueError, match="English"):
        manager.create(Task.SPEECH, "pocketsphinx", ModelOptions(extra={"language": "de"}))
    with pytest.raises(WeightsNotFoundError, match="not a local directory"):
        manager.create(Task.SPEECH, "pocketsphinx", ModelOptions(weights="cmusphinx/en-us"))
    with pytest.raises(WeightsNotFoundError, match="lacks an acoustic model"):
        manager.create(Task.SPEECH, "pocketsphinx", ModelOptions(weights=str(tmp_path)))


def test_pocketsphinx_loads_a_model_directory(manager, tmp_path):
    import pocketsphinx

    bundled = pocketsphinx.get_model_path("en-us")
    shutil.copytree(f"{bundled}/en-us", tmp_path / "acoustic")
    shutil.copy(f"{bundled}/cmudict-en-us.dict", tmp_path / "words.dict")
    model = manager.create(Task.SPEECH, "pocketsphinx", ModelOptions(weights=str(tmp_path)))
    assert model.weights == str(tmp_path) and not model.has_language_model
    assert model.transcribe(np.zeros(8000, np.float32), ["chair"]).text == ""
    with pytest.raises(ValueError, match="no language model"):
        model.transcribe(np.zeros(8000, np.float32))


needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng (Debian package) not installed")


def spoken(sentence: str) -> np.ndarray:
    """espeak-ng saying `sentence`, with some silence around it, at 16 kHz."""
    wav = subprocess.run(["espeak-ng", "-v", "en-us+f2", "-s", "150", "--stdout", sentence],
                         capture_output=True, check=True).stdout
    speech = np.frombuffer(wav[44:len(wav) // 2 * 2], "<i2").astype(np.float32) / 32768
    return resample(np.concatenate([np.zeros(5000, np.float32), speech, np.zeros(8000, np.float32)]), 22050, 16000)


@needs_espeak
def test_pocketsphinx_recognises_spoken_commands_within_its_grammar(sphinx):
    phrases = ["red cup", "chair", "mug", "laptop", "people"]
    for sentence in ("segment the red cup and the chair", "stop tracking the chair", "only track the mug"):
        transcript = sphinx.transcribe(spoken(sentence), phrases)
        # the grammar has the phrases' plurals too ("chairs"): the command, with plurals mapped, must match
        assert parse_commands(transcript.text, phrases) == parse_commands(sentence), transcript.text


@needs_espeak
def test_pocketsphinx_free_dictation_hears_the_spoken_words(sphinx):
    """Without a phrase list the bundled language model decodes freely: less exact than the grammar (it heard
    "stop tracking that year" for "... the chair" here), but the words are the spoken ones."""
    heard = sphinx.transcribe(spoken("the weather is nice today")).text.split()
    assert len(set(heard) & {"the", "weather", "is", "nice", "today"}) >= 4, heard
    text = sphinx.transcribe(spoken("stop tracking the chair")).text
    assert text.startswith("stop tracking"), text


# ----------------------------------------------------------------------------------------------------------
# The grammar


def test_grammar_as_jsgf_and_regex():
    grammar = build_command_grammar(["Red Cup", "chair", "red cup", ""])
    assert grammar.phrases == ("red cup", "chair")
    jsgf = grammar.jsgf
    assert jsgf.startswith("#JSGF V1.0;\ngrammar commands;\npublic <command> = ")
    assert "<phrase> = (red cup | chair);" in jsgf
    for sentence in ("segment the red cup and the chair", "please stop tracking the chair", "clear",
                     "only track the red cup", "track the chair instead", "can you find all the chair now"):
        assert grammar.accepts(sentence), sentence
    for partial in ("segment the red", "segment the red cup and", "stop tracking the", "please", "",
                    "segment the table", "the chair"):
        assert not grammar.accepts(partial), partial


def test_grammar_without_usable_phrases():
    with pytest.raises(ValueError, match="no phrase"):
        build_command_grammar([])
    with pytest.raises(ValueError, match="unknown words in: sofa"):
        build_command_grammar(["sofa"], known_word=lambda word: word != "sofa")


def test_grammar_leaves_out_alternatives_with_unknown_words():
    grammar = build_command_grammar(["chair"], known_word=lambda word: word not in ("segment", "only"))
    assert not re.search(r"\b(segment|only)\b", grammar.jsgf)
    assert "stop segmenting" in grammar.jsgf
    rng = random.Random(0)
    assert all("segment" not in grammar.sample(rng).split() for _ in range(200))


def test_clean_phrase():
    assert clean_phrase("  Person\u2019s BAG!") == "person's bag"
    assert clean_phrase("coke-bottle (large)") == "coke bottle large"
    assert clean_phrase("--") == ""


def test_whisper_half_precision_path(tiny_whisper):
    """What runs on a GPU (fp16 weights, features cast to them), here on the CPU."""
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from perception_fm.plugins.asr_whisper import WhisperSpeechModel, choose_dtype

    assert choose_dtype("cuda", "auto") == torch.float16 and choose_dtype("cuda:1", "bf16") == torch.bfloat16
    assert choose_dtype("cpu", "auto") == torch.float32 and choose_dtype("cuda", "fp32") == torch.float32
    with pytest.raises(ValueError):
        choose_dtype("cuda", "int8")
    net = WhisperForConditionalGeneration.from_pretrained(str(tiny_whisper), dtype=torch.float16)
    model = WhisperSpeechModel(net, WhisperProcessor.from_pretrained(str(tiny_whisper)), weights="tiny",
                               device="cpu", dtype=torch.float16)
    assert model.net.dtype == torch.float16
    transcript = model.transcribe(noise(0.5), ["red cup"])
    assert isinstance(transcript.text, str) and 0.0 <= transcript.confidence <= 1.0


# ----------------------------------------------------------------------------------------------------------
# Never the opposite intent: the listener acts on a command only when the recogniser is confident (issue 17)


class ScriptedSpeechModel:
    """Says a fixed transcript with a fixed confidence, whatever it hears."""
    name, weights, device = "scripted", "", "cpu"

    def __init__(self, text, confidence):
        from perception_fm.tasks.speech import SpeechCapabilities

        self.capabilities = SpeechCapabilities(sample_rate=16000, phrase_list=True)
        self.text, self.confidence = text, confidence

    def transcribe(self, audio, phrases=None):
        return Transcript(text=self.text, confidence=self.confidence, timings_ms={"transcribe": 1.0})


def utterance():
    from perception_fm.speech.vad import Utterance

    return Utterance(audio=noise(0.5), sample_rate=16000, start_s=0.0, speech_s=0.5, reason="silence")


@pytest.mark.parametrize("text", ["clear", "stop tracking the chair", "only track the mug", "forget everything"])
def test_an_unsure_destructive_command_changes_nothing(text):
    from perception_fm.speech.listener import NOT_UNDERSTOOD, listen

    heard = listen(ScriptedSpeechModel(text, 0.3), utterance(), ("chair", "mug"), 0.0, 0.5)
    assert heard.outcome == NOT_UNDERSTOOD and heard.commands == () and heard.concepts_messages == []
    assert heard.rejected and heard.transcript_message == f"[not understood] {text}"
    sure = listen(ScriptedSpeechModel(text, 0.8), utterance(), ("chair", "mug"), 0.0, 0.5)
    assert sure.commands and sure.transcript_message == text


def test_an_unsure_add_needs_only_min_confidence_and_a_mixed_utterance_the_destructive_threshold():
    from perception_fm.speech.listener import COMMANDS, NOT_UNDERSTOOD, listen

    assert listen(ScriptedSpeechModel("track the chairs", 0.3), utterance(), ("chair",), 0.0, 0.5).concepts_messages \
        == ["chair"]  # plural mapped to the listed concept
    assert listen(ScriptedSpeechModel("track the chair", 0.3), utterance(), ("chair",), 0.4, 0.5).outcome \
        == NOT_UNDERSTOOD
    # one unsure destructive command in an utterance rejects all of it: nothing changes, not half of it
    mixed = listen(ScriptedSpeechModel("track the mug and clear", 0.3), utterance(), ("chair", "mug"), 0.0, 0.5)
    assert mixed.outcome == NOT_UNDERSTOOD and mixed.concepts_messages == []
    # models without a confidence (None) are not gated
    assert listen(ScriptedSpeechModel("clear", None), utterance(), (), 0.9, 0.9).outcome == COMMANDS


def test_speech_out_of_the_grammar_is_not_understood():
    """Confidence 0 is the recogniser saying 'no command of my grammar' (a partial path): whatever its words
    parse as, nothing is acted on."""
    from perception_fm.speech.listener import NOT_UNDERSTOOD, listen

    heard = listen(ScriptedSpeechModel("track the chair and", 0.0), utterance(), ("chair",), 0.0, 0.0)
    assert heard.outcome == NOT_UNDERSTOOD and heard.concepts_messages == []


@needs_espeak
def test_pocketsphinx_hears_speech_that_is_no_command_as_garbage(sphinx):
    phrases = ["red cup", "chair", "mug", "laptop", "people"]
    # speech that is no command is heard as garbage (or a partial path): confidence 0, no command in the words
    heard = sphinx.transcribe(spoken("open the door and turn on the light"), phrases)
    assert heard.confidence == 0.0 and parse_commands(heard.text, phrases) == [], heard
    clear = sphinx.transcribe(spoken("stop tracking the chair"), phrases)
    assert parse_commands(clear.text, phrases) == parse_commands("stop tracking the chair")
    assert 0.0 < clear.confidence <= 1.0
