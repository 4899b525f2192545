"""Whisper (OpenAI) through Hugging Face transformers as a perception_fm speech plugin.

WhisperForConditionalGeneration + WhisperProcessor (feature extractor and tokenizer), nothing else (no
pipeline, no torchvision). Greedy decoding of one utterance (at most 30 s), English by default (the
`language` option picks another for multilingual checkpoints), fp16 on GPU, fp32 on CPU. `phrases` bias
recognition through the decoder prompt (prompt_ids: the phrases as "previous text"), which helps with
unusual object names; it does not constrain the output.

Weights: a hub id (default openai/whisper-small.en) or a local directory holding a checkpoint saved with
save_pretrained: config.json, model.safetensors (or shards), the preprocessor config and tokenizer files.
Offline (option or HF_HUB_OFFLINE=1): only local directories and the local hub cache are used.
random_weights: the architecture from the checkpoint's config with random weights (the processor files
are still needed), for plumbing checks only.

confidence: exp(mean log-probability of the generated tokens), a rough figure; low on noise and
hallucinations ("Thank you."), high on clear speech.
"""
from __future__ import annotations

import copy
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

from perception_fm.errors import WeightsNotFoundError
from perception_fm.hookspecs import ModelOptions, ModelSpec, Task, hookimpl
from perception_fm.plugins.weights import hub_snapshot, is_local_path, local_directory, select_device
from perception_fm.tasks.speech import SpeechCapabilities, Transcript

log = logging.getLogger(__name__)

NAME = "whisper"
DEFAULT_WEIGHTS = "openai/whisper-small.en"
RANDOM_WEIGHTS = "random-init"
CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
HUB_PATTERNS = ["*.json", "*.txt", "model.safetensors", "model-*.safetensors"]
MAX_NEW_TOKENS = 96  # a spoken command is far shorter; bounds a hallucinating decoder
MAX_SECONDS = 30.0  # Whisper's window
ENGLISH = ("en", "english")
REQUIRES = ("torch", "transformers", "huggingface_hub", "safetensors")


@hookimpl
def register_models() -> list[ModelSpec]:
    return [
        ModelSpec(
            name=NAME,
            task=Task.SPEECH,
            summary="Whisper (OpenAI) via transformers, greedy decoding, fp16 on GPU; phrase_list biases it "
                    f"through the prompt. Default weights {DEFAULT_WEIGHTS} (244 M); alternatives: "
                    "openai/whisper-tiny.en (39 M) or -base.en (74 M) for CPUs, openai/whisper-medium.en, "
                    "distil-whisper/distil-small.en, openai/whisper-large-v3-turbo (multilingual).",
            license="MIT (OpenAI Whisper weights)",
            default_weights=DEFAULT_WEIGHTS,
            requires=REQUIRES,
            create=WhisperSpeechModel.from_options,
        )
    ]


@hookimpl
def estimate_memory(task, name, options, workload):
    """Whisper from its config.json (local directory or hub cache; never downloaded), built on meta: parameters
    at the dtype it loads in, activations of one encoder pass over the 30 s window plus one decoder step."""
    if Task(task) is not Task.SPEECH or name != NAME:
        return None
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from perception_fm.hookspecs import MemoryEstimate
    from perception_fm.runtime.budget import build_on_meta, forward_peak_bytes, module_bytes

    directory = resolve_weights(options.weights or DEFAULT_WEIGHTS, options, need_weights=False)
    config = WhisperConfig.from_pretrained(str(directory))
    dtype = choose_dtype(options.device if options.device != "auto" else "cpu",
                         str(dict(options.extra).get("precision", "auto")))
    with build_on_meta():
        net = WhisperForConditionalGeneration(config)
    net.to(dtype)
    parameters, parameter_bytes, buffer_bytes = module_bytes(net)
    frames = 2 * int(config.max_source_positions)  # the encoder's two stride-2 convolutions: 3000 mel frames

    def forward():
        features = torch.zeros(1, int(config.num_mel_bins), frames, device="meta", dtype=dtype)
        tokens = torch.zeros(1, 1, dtype=torch.long, device="meta")
        return net(input_features=features, decoder_input_ids=tokens)

    return MemoryEstimate(parameters=parameters, parameter_bytes=parameter_bytes, buffer_bytes=buffer_bytes,
                          dtype=str(dtype).replace("torch.", ""), activation_bytes=forward_peak_bytes(forward),
                          workload=f"{MAX_SECONDS:g} s window, one decoder step")


# ----------------------------------------------------------------------------------------------------------
# Loading


def _has_weights(directory: Path) -> bool:
    return any((directory / name).is_file() for name in WEIGHT_FILES)


def resolve_weights(source: str, options: ModelOptions, need_weights: bool = True) -> Path:
    """A directory with the checkpoint (config, processor files and, if `need_weights`, the weights), from a
    local path or the HF hub."""
    if is_local_path(source):
        directory = local_directory(source, "Whisper")
    else:
        directory = hub_snapshot(source, options, HUB_PATTERNS if need_weights else ["*.json", "*.txt"], "Whisper")
    missing = [] if (directory / CONFIG_FILE).is_file() else [CONFIG_FILE]
    if need_weights and not _has_weights(directory):
        missing.append(" or ".join(WEIGHT_FILES))
    if missing:
        raise WeightsNotFoundError(
            f"Whisper weights {str(directory)!r} lack {', '.join(missing)} (expected a checkpoint written by "
            f"save_pretrained: config.json, model.safetensors, processor and tokenizer files)")
    return directory


def choose_dtype(device: str, precision: str):
    import torch

    if precision == "fp32" or not device.startswith("cuda"):
        return torch.float32
    if precision in ("fp16", "auto"):
        return torch.float16  # what Whisper checkpoints are trained and usually run in
    if precision == "bf16":
        return torch.bfloat16
    raise ValueError(f"precision must be auto, fp32, fp16 or bf16, got {precision!r}")


# ----------------------------------------------------------------------------------------------------------
# The model


class WhisperSpeechModel:
    """The SpeechModel protocol (perception_fm.tasks.speech) over a Whisper checkpoint on one device."""

    name = NAME

    def __init__(self, net, processor, *, weights: str, device: str, dtype, language: str = "en"):
        self.net = net.to(device=device, dtype=dtype).eval()
        self.processor = processor
        self.weights = weights
        self.device = device
        self.dtype = dtype
        self.capabilities = SpeechCapabilities(sample_rate=int(processor.feature_extractor.sampling_rate),
                                               phrase_list=True)
        config = self.net.generation_config
        self.multilingual = bool(getattr(config, "is_multilingual", False))
        language = (language or "en").lower()
        if not self.multilingual and language not in ENGLISH:
            raise ValueError(f"{weights} is an English-only Whisper checkpoint; language {language!r} needs a "
                             f"multilingual one (e.g. openai/whisper-small)")
        self.language = language
        self._prompts: OrderedDict[tuple[str, ...], object] = OrderedDict()
        self._generation = copy.deepcopy(config)
        self._generation.num_beams = 1
        self._generation.do_sample = False
        self._generation.return_dict_in_generate = True
        self._generation.output_scores = True
        self._max_positions = int(self.net.config.max_target_positions)
        _quiet_generation_warnings()

    @classmethod
    def from_options(cls, options: ModelOptions) -> "WhisperSpeechModel":
        import torch
        from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

        device = select_device(options.device)
        extra = dict(options.extra)
        dtype = choose_dtype(device, str(extra.get("precision", "auto")))
        source = options.weights or DEFAULT_WEIGHTS
        directory = resolve_weights(source, options, need_weights=not options.random_weights)
        try:
            processor = WhisperProcessor.from_pretrained(str(directory), local_files_only=True)
            if options.random_weights:
                torch.manual_seed(0)  # the same random network on every run
                net = WhisperForConditionalGeneration(WhisperConfig.from_pretrained(str(directory)))
                _load_generation_config(net, directory)
                weights = RANDOM_WEIGHTS
            else:
                net = WhisperForConditionalGeneration.from_pretrained(str(directory), dtype=dtype,
                                                                      local_files_only=True)
                weights = source
        except (OSError, ValueError, KeyError) as error:
            raise WeightsNotFoundError(f"Whisper checkpoint {source!r} could not be loaded: {error}") from error
        return cls(net, processor, weights=weights, device=device, dtype=dtype,
                   language=str(extra.get("language", "en")))

    # -- prompt ---------------------------------------------------------------------------------------------

    def prompt_ids(self, phrases: Sequence[str]):
        """The decoder prompt for `phrases` (cached): "red cup, chair, mug." as text said before, within
        Whisper's prompt budget (half the decoder's positions); phrases that do not fit are left out."""
        key = tuple(phrases)
        if key in self._prompts:
            self._prompts.move_to_end(key)
            return self._prompts[key]
        budget = self._max_positions // 2 - 1
        kept = list(key)
        while kept:
            ids = self.processor.get_prompt_ids(", ".join(kept) + ".", return_tensors="pt")
            if len(ids) <= budget:
                break
            kept.pop()
        prompt = ids.to(self.device) if kept else None
        if len(kept) < len(key):
            log.warning("Whisper prompt: %d of %d phrases fit in the prompt", len(kept), len(key))
        self._prompts[key] = prompt
        while len(self._prompts) > 8:
            self._prompts.popitem(last=False)
        return prompt

    # -- recognition ----------------------------------------------------------------------------------------

    def transcribe(self, audio: np.ndarray, phrases: Sequence[str] | None = None) -> Transcript:
        import torch

        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        rate = self.capabilities.sample_rate
        if audio.size > MAX_SECONDS * rate:
            log.warning("utterance of %.1f s cut to Whisper's %.0f s window", audio.size / rate, MAX_SECONDS)
            audio = audio[:int(MAX_SECONDS * rate)]
        started = time.perf_counter()
        features = self.processor.feature_extractor(audio, sampling_rate=rate, return_tensors="pt").input_features
        features = features.to(self.device, dtype=self.dtype)
        kwargs = {}
        prompt = self.prompt_ids(phrases) if phrases else None
        prompt_length = 0
        if prompt is not None:
            kwargs["prompt_ids"] = prompt
            prompt_length = len(prompt)
        if self.multilingual:
            kwargs.update(language=self.language, task="transcribe")
        # prompt + start tokens (<|startoftranscript|>, language, task, <|notimestamps|>) + new tokens must fit
        max_new = max(1, min(MAX_NEW_TOKENS, self._max_positions - prompt_length - 5))
        prepared = time.perf_counter()
        generation = copy.copy(self._generation)
        generation.max_new_tokens, generation.max_length = max_new, None
        with torch.inference_mode():
            output = self.net.generate(features, generation_config=generation, **kwargs)
        decoded = time.perf_counter()
        scores = output.scores or ()
        tokens = output.sequences[0, output.sequences.shape[1] - len(scores):] if scores else output.sequences[0, :0]
        text = self.processor.tokenizer.decode(tokens.tolist(), skip_special_tokens=True).strip()
        confidence = None
        if scores:
            log_probs = torch.stack([torch.log_softmax(step[0].float(), dim=-1)[token]
                                     for step, token in zip(scores, tokens)])
            finite = log_probs[torch.isfinite(log_probs)]
            confidence = float(torch.exp(finite.mean())) if finite.numel() else 0.0
        finished = time.perf_counter()
        return Transcript(text=" ".join(text.split()), confidence=confidence, timings_ms={
            "features": (prepared - started) * 1e3, "generate": (decoded - prepared) * 1e3,
            "transcribe": (finished - started) * 1e3,
        })


class _QuietGeneration(logging.Filter):
    """Whisper's generate, given max_new_tokens (which we always set), still warns on every call that the
    checkpoint's max_length is set too; that would flood a node's log once per utterance."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "seem to have been set" not in record.getMessage()


def _quiet_generation_warnings() -> None:
    generation_log = logging.getLogger("transformers.generation.utils")
    if not any(isinstance(f, _QuietGeneration) for f in generation_log.filters):
        generation_log.addFilter(_QuietGeneration())


def _load_generation_config(net, directory: Path) -> None:
    """The checkpoint's generation config (special token ids Whisper's generate needs), if it has one."""
    from transformers import GenerationConfig

    if (directory / "generation_config.json").is_file():
        net.generation_config = GenerationConfig.from_pretrained(str(directory))
