"""SAM 3's text tokenizer without the hub: CLIP's byte-level BPE built from the vocabulary file that ships in
the open-clip-torch wheel (open_clip/bpe_simple_vocab_16e6.txt.gz). Its ids match the tokenizer files of
facebook/sam3 (e.g. "a cat" -> 49406 320 2368 49407). open_clip itself is never imported (it pulls
torchvision): the file is located through its package spec.
"""
from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
# CLIP's vocabulary: 256 byte symbols, the same with an end-of-word mark, 48894 merges, 2 special tokens.
CLIP_MERGES = 49152 - 256 - 2
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"


def open_clip_bpe_path() -> Path | None:
    """The BPE vocabulary file of an installed open-clip-torch (without importing it), or None."""
    spec = importlib.util.find_spec("open_clip")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / BPE_FILE
        if candidate.is_file():
            return candidate
    return None


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
                 + list(range(ord("\xae"), ord("\xff") + 1)))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def clip_tokenizer(bpe_path: str | os.PathLike | None = None):
    """A transformers CLIPTokenizer equal to SAM 3's, built from CLIP's BPE vocabulary file."""
    from transformers import CLIPTokenizer

    path = Path(bpe_path) if bpe_path is not None else open_clip_bpe_path()
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"CLIP's BPE vocabulary ({BPE_FILE}) was not found; install open-clip-torch (--no-deps is enough) "
            "or use a checkpoint directory with tokenizer files"
        )
    lines = gzip.open(path).read().decode("utf-8").split("\n")[1:CLIP_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [START_TOKEN, END_TOKEN]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)
