"""Finding and loading SAM 3: a hub id (facebook/sam3, gated) or a local directory as `save_pretrained`
writes it (config.json + model.safetensors [or shards + index] + tokenizer files), with a strict key check;
or the default architecture with random weights."""
from __future__ import annotations

import logging
from pathlib import Path

from perception_fm.errors import PluginUnavailableError, WeightsMismatchError, WeightsNotFoundError
from perception_fm.hookspecs import ModelOptions
from perception_fm.plugins.weights import (check_finite, check_safetensors, hub_snapshot, is_local_path,
                                          local_directory, one_line, read_json_object)

log = logging.getLogger(__name__)

HUB_ID = "facebook/sam3"
HUB_PAGE = f"https://huggingface.co/{HUB_ID}"
RANDOM_WEIGHTS = "random-init"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json")
# What a snapshot needs (facebook/sam3 also holds the original 3.4 GB sam3.pt, never downloaded).
ALLOW_PATTERNS = [CONFIG_FILE, WEIGHTS_FILE, WEIGHTS_INDEX, "model-*.safetensors", *TOKENIZER_FILES]
VIDEO_MODEL_TYPE = "sam3_video"


def _missing_files(directory: Path) -> list[str]:
    missing = []
    if not (directory / CONFIG_FILE).is_file():
        missing.append(CONFIG_FILE)
    if not (directory / WEIGHTS_FILE).is_file() and not (directory / WEIGHTS_INDEX).is_file():
        missing.append(WEIGHTS_FILE)
    if not (directory / "tokenizer.json").is_file() and not (
            (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file()):
        missing.append("tokenizer files (tokenizer.json, or vocab.json + merges.txt)")
    return missing


def resolve_weights(source: str, options: ModelOptions) -> Path:
    """A directory with the checkpoint and tokenizer, from a local path or the (gated) hub repo."""
    if is_local_path(source):
        directory = local_directory(source, "SAM 3")
    else:
        directory = hub_snapshot(source, options, ALLOW_PATTERNS, "SAM 3", gated=True)
    missing = _missing_files(directory)
    if missing:
        raise WeightsNotFoundError(
            f"SAM 3 weights {str(directory)!r} lack {', '.join(missing)} (expected the files save_pretrained "
            f"writes: {CONFIG_FILE}, {WEIGHTS_FILE}, tokenizer.json, tokenizer_config.json)")
    return directory


def apply_image_size(config, image_size: int) -> None:
    """Work at `image_size` (a multiple of the patch size) instead of the checkpoint's. transformers'
    Sam3VideoConfig.image_size setter updates the detector and tracker, but not low_res_mask_size."""
    patch = config.detector_config.vision_config.backbone_config.patch_size
    patch = patch if isinstance(patch, int) else patch[0]
    if image_size < 2 * patch or image_size % patch:
        raise ValueError(f"image_size must be a multiple of the patch size {patch} (>= {2 * patch}), got {image_size}")
    config.image_size = image_size
    config.low_res_mask_size = 4 * image_size // patch


def load_network(directory: Path, image_size: int = 0):
    """Sam3VideoModel from a checkpoint directory; every parameter must come from the file."""
    import torch
    from transformers import Sam3VideoConfig, Sam3VideoModel

    raw = read_json_object(directory / CONFIG_FILE, "SAM 3 config")
    model_type = raw.get("model_type")
    if model_type != VIDEO_MODEL_TYPE:
        raise WeightsMismatchError(
            f"{directory / CONFIG_FILE} is a {model_type!r} checkpoint; the sam3 plugin needs a SAM 3 video "
            f"checkpoint (model_type {VIDEO_MODEL_TYPE!r}: detector + tracker, e.g. {HUB_ID})"
        )
    for path in _weight_files(directory):  # transformers' own errors for a damaged file are not one clear line
        check_safetensors(path)
    try:
        config = Sam3VideoConfig.from_pretrained(directory)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        raise WeightsMismatchError(f"SAM 3 config {str(directory / CONFIG_FILE)!r} does not describe a SAM 3 "
                                   f"video model: {one_line(error)}") from error
    if image_size:
        apply_image_size(config, image_size)
    try:
        network, info = Sam3VideoModel.from_pretrained(
            directory, config=config, output_loading_info=True, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as error:
        raise WeightsMismatchError(f"SAM 3 checkpoint in {str(directory)!r} does not load: {one_line(error)}") \
            from error
    missing = sorted(info.get("missing_keys") or [])
    mismatched = [str(item) for item in (info.get("mismatched_keys") or [])]
    if missing or mismatched:
        problems = []
        if missing:
            problems.append(f"lacks {len(missing)} of the network's tensors (e.g. {', '.join(missing[:6])})")
        if mismatched:
            problems.append(f"has {len(mismatched)} tensors of the wrong shape (e.g. {', '.join(mismatched[:4])})")
        raise WeightsMismatchError(
            f"SAM 3 checkpoint in {str(directory)!r} {' and '.join(problems)}; refusing to run with those left "
            "random"
        )
    check_finite(network.state_dict().items(), f"SAM 3 checkpoint in {str(directory)!r}")
    unexpected = sorted(info.get("unexpected_keys") or [])
    if unexpected:
        log.warning("SAM 3 checkpoint in %s has %d tensors the network does not use (ignored), e.g. %s",
                    directory, len(unexpected), ", ".join(unexpected[:6]))
    return network


def _weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint: model.safetensors, or the shards its index lists."""
    if (directory / WEIGHTS_FILE).is_file():
        return [directory / WEIGHTS_FILE]
    index = read_json_object(directory / WEIGHTS_INDEX, "SAM 3 shard index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise WeightsMismatchError(f"SAM 3 shard index {str(directory / WEIGHTS_INDEX)!r} has no weight_map")
    shards = sorted({directory / str(name) for name in weight_map.values()})
    absent = [shard.name for shard in shards if not shard.is_file()]
    if absent:
        raise WeightsNotFoundError(f"SAM 3 weights {str(directory)!r} lack the shards {', '.join(absent[:4])} "
                                   f"listed in {WEIGHTS_INDEX}")
    return shards


def random_network(device: str, image_size: int = 0):
    """The default SAM 3 architecture (transformers' Sam3VideoConfig defaults = facebook/sam3's layout) with
    seeded random weights, built directly on `device`."""
    import torch
    from transformers import Sam3VideoConfig, Sam3VideoModel

    config = Sam3VideoConfig()
    if image_size:
        apply_image_size(config, image_size)
    torch.manual_seed(0)  # the same random network on every run
    with torch.device(device):
        return Sam3VideoModel(config)


def load_tokenizer(directory: Path | None):
    """The checkpoint's tokenizer; without a checkpoint (random weights) CLIP's BPE from open-clip-torch."""
    if directory is not None:
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError, TypeError) as error:
            raise WeightsNotFoundError(f"SAM 3 tokenizer in {str(directory)!r} does not load: {error}") from error
    from perception_fm.plugins.sam3.tokenizer import clip_tokenizer

    try:
        return clip_tokenizer()
    except FileNotFoundError as error:
        raise PluginUnavailableError(f"random-weight SAM 3 needs a tokenizer: {error}") from error
