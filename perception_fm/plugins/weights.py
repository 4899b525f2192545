"""Finding model weights and a device, the same way for every plugin: a local directory, or a Hugging Face
hub id downloaded (or found in the local hub cache), offline mode honoured, and errors an operator can act on.
A missing weight is always an error (WeightsNotFoundError), never a silent fallback; a damaged one
(unreadable, truncated, not JSON/safetensors, non-finite values) is a WeightsCorruptError whose one-line message
names the file and the problem, so a node can report it on /diagnostics and replay can print it."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from perception_fm.errors import WeightsCorruptError, WeightsNotFoundError
from perception_fm.hookspecs import ModelOptions


def is_offline(options: ModelOptions) -> bool:
    """ModelOptions.offline, or HF_HUB_OFFLINE in the environment."""
    return options.offline or os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def is_local_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or os.path.isdir(os.path.expanduser(source))


def local_directory(source: str, what: str) -> Path:
    directory = Path(os.path.expanduser(source))
    if not directory.is_dir():
        raise WeightsNotFoundError(f"{what} weights directory {str(directory)!r} does not exist")
    return directory


def hub_snapshot(source: str, options: ModelOptions, allow_patterns: list[str], what: str,
                 gated: bool = False) -> Path:
    """snapshot_download of `source` restricted to `allow_patterns` (local cache only when offline)."""
    import huggingface_hub
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    offline = is_offline(options)
    access = (f"accept the licence on https://huggingface.co/{source} (signed in to your Hugging Face account), "
              "then `hf auth login` (or set HF_TOKEN) on this machine")
    try:
        path = huggingface_hub.snapshot_download(repo_id=source, revision=options.revision,
                                                 cache_dir=options.cache_dir, allow_patterns=allow_patterns,
                                                 local_files_only=offline)
    except GatedRepoError as error:
        raise WeightsNotFoundError(f"{what} weights {source!r} are gated: {access}.") from error
    except RevisionNotFoundError as error:
        raise WeightsNotFoundError(f"{what} weights {source!r} have no revision {options.revision!r}") from error
    except RepositoryNotFoundError as error:
        raise WeightsNotFoundError(f"{what} weights {source!r} were not found on the hub or are not visible to you"
                                   + (f"; gated repos need you to {access}" if gated else "")) from error
    except LocalEntryNotFoundError as error:
        how = ("offline mode is on (ModelOptions.offline / HF_HUB_OFFLINE) and they are not in the local hub cache"
               if offline else "the hub cannot be reached and they are not in the local hub cache")
        raise WeightsNotFoundError(
            f"{what} weights {source!r} are not available: {how}. On a connected machine: "
            f"{access + ', ' if gated else ''}`hf download {source}`, then copy the hub cache (or pass cache_dir); "
            "or pass a local directory as weights.") from error
    except (HfHubHTTPError, OSError, ValueError) as error:
        raise WeightsNotFoundError(f"{what} weights {source!r} could not be fetched: {error}") from error
    return Path(path)


def select_device(requested: str) -> str:
    """"auto" (first CUDA GPU, else CPU), "cpu", "cuda", "cuda:N"; a CUDA device torch cannot see is an error."""
    import torch

    if requested in ("", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise WeightsNotFoundError(f"device {requested!r} requested but torch sees no CUDA device")
    return requested


def one_line(error: BaseException | str, limit: int = 300) -> str:
    """An exception's text on one line (library messages carry newlines and tabs), at most `limit` chars."""
    text = " ".join(str(error).split()).rstrip(".")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON file that must hold an object (config.json, a shard index)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise WeightsCorruptError(f"{what} {str(path)!r} cannot be read: {one_line(error)}") from error
    try:
        value = json.loads(text)
    except ValueError as error:
        raise WeightsCorruptError(f"{what} {str(path)!r} is not valid JSON: {one_line(error)}") from error
    if not isinstance(value, dict):
        raise WeightsCorruptError(f"{what} {str(path)!r} holds a JSON {type(value).__name__}, not an object")
    return value


def _safetensors_error(path: Path, error: BaseException) -> WeightsCorruptError:
    return WeightsCorruptError(
        f"{str(path)!r} is not a readable safetensors file ({one_line(error)}); the download is probably "
        "incomplete or damaged: delete it and download the weights again")


def check_safetensors(path: Path) -> None:
    """Validate a safetensors file's header without loading its tensors: size, JSON header, every tensor's byte
    range inside the file (a truncated download fails here). For loaders that hand the file to a library."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError) as error:
        raise _safetensors_error(path, error) from error


def load_safetensors(path: Path) -> dict:
    """Every tensor of a safetensors file on the CPU; a damaged file is a WeightsCorruptError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as error:
        raise _safetensors_error(path, error) from error


def check_finite(tensors: Iterable[tuple[str, Any]], source: str) -> None:
    """Refuse NaN or Inf in floating-point tensors: a network with such weights outputs NaN for every input,
    which a node would otherwise publish as a valid-looking (empty or garbage) result."""
    import torch

    bad = []
    with torch.no_grad():
        for name, tensor in tensors:
            if not tensor.is_floating_point() or tensor.numel() == 0:
                continue
            # One reduction per tensor (the sum of finite weights is finite); the exact element-wise check only
            # where it is not, since a half-precision sum can overflow on finite values.
            if not torch.isfinite(tensor.sum()) and not bool(torch.isfinite(tensor).all()):
                bad.append(name)
    if bad:
        raise WeightsCorruptError(
            f"{source} holds non-finite values (NaN or Inf) in {len(bad)} tensor{'s' * (len(bad) > 1)} "
            f"(e.g. {', '.join(bad[:4])}); a network with such weights outputs NaN: refusing to load it")
