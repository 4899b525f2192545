"""Finding model weights and a device, the same way for every plugin: a local directory, or a Hugging Face
hub id downloaded (or found in the local hub cache), offline mode honoured, and errors an operator can act on.
A missing weight is always an error (WeightsNotFoundError), never a silent fallback."""
from __future__ import annotations

import os
from pathlib import Path

from perception_fm.errors import WeightsNotFoundError
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
