"""Damaged copies of a good checkpoint directory (config.json + model.safetensors), one per way a download or a
disk goes wrong, for the loader and node tests. Unchanged files are symlinks (no copies of the weights)."""
from __future__ import annotations

import json
import os
from pathlib import Path

# kind -> what the error must say (a regular expression, matched case-insensitively)
EXPECTED = {
    "empty": r"model\.safetensors.*not a readable safetensors file.*too small",
    "random_bytes": r"model\.safetensors.*not a readable safetensors file",
    "truncated": r"model\.safetensors.*not a readable safetensors file.*not fully covered",
    "bad_header": r"model\.safetensors.*not a readable safetensors file.*invalid JSON",
    "config_list": r"config\.json.*holds a JSON list, not an object",
    "config_invalid_json": r"config\.json.*is not valid JSON",
    "config_without_model_name": r"config\.json.*has no \"model_name\"",
    "wrong_shape": r"model\.safetensors.*1 tensor of the wrong shape.*\(3, 5\)",
    "nan": r"model\.safetensors.*non-finite values \(NaN or Inf\)",
    "inf": r"model\.safetensors.*non-finite values \(NaN or Inf\)",
}
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def _directory(root: Path, kind: str, good: Path, config: str | None = None, weights: bytes | None = None) -> Path:
    directory = root / kind
    directory.mkdir(parents=True)
    for other in good.iterdir():  # tokenizer files and the like
        if other.name not in (CONFIG, WEIGHTS):
            os.symlink(other, directory / other.name)
    if config is None:
        os.symlink(good / CONFIG, directory / CONFIG)
    else:
        (directory / CONFIG).write_text(config)
    if weights is None:
        os.symlink(good / WEIGHTS, directory / WEIGHTS)
    else:
        (directory / WEIGHTS).write_bytes(weights)
    return directory


def _with_tensor(good: Path, path: Path, change) -> bytes:
    """The good weights with the first 2-D tensor replaced by change(tensor), written with safetensors."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(good / WEIGHTS))
    key = next(key for key, value in state.items() if value.ndim == 2 and value.numel() > 1)
    state[key] = change(state[key])
    save_file(state, str(path))
    data = path.read_bytes()
    path.unlink()
    return data


def make_corrupt_checkpoints(good: Path, root: Path, kinds=tuple(EXPECTED)) -> dict[str, Path]:
    """The `kinds` (keys of EXPECTED) as directories under `root`."""
    import torch

    good, root = Path(good), Path(root)
    data = (good / WEIGHTS).read_bytes()
    config = json.loads((good / CONFIG).read_text())
    scratch = root / "scratch.safetensors"
    root.mkdir(parents=True, exist_ok=True)
    def directory(kind, **files):
        return lambda: _directory(root, kind, good, **files)

    def tensor_changed(change):
        return _with_tensor(good, scratch, change)

    makers = {
        "empty": directory("empty", weights=b""),
        # fixed bytes, not os.urandom: a failure must reproduce
        "random_bytes": directory("random_bytes", weights=bytes(range(256)) * 64),
        "truncated": directory("truncated", weights=data[: len(data) // 2]),
        "bad_header": directory("bad_header", weights=data[:8] + b"{garbage" + data[16:]),
        "config_list": directory("config_list", config=json.dumps([config])),
        "config_invalid_json": directory("config_invalid_json", config=json.dumps(config)[:-1]),
        "config_without_model_name": directory("config_without_model_name", config="{}"),
    }
    tensor_kinds = {
        "wrong_shape": lambda t: torch.zeros(3, 5, dtype=t.dtype),
        "nan": lambda t: torch.full_like(t, float("nan")),
        "inf": lambda t: t.clone().index_fill_(0, torch.tensor([0]), float("inf")),  # one row only
    }
    for kind, change in tensor_kinds.items():
        makers[kind] = lambda kind=kind, change=change: _directory(root, kind, good, weights=tensor_changed(change))
    return {kind: makers[kind]() for kind in kinds}
