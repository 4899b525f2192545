"""The replay's output directory, written all or nothing: under a temporary name beside it
(.NAME.partial), renamed when complete, so an interrupted or killed run never leaves something that looks
like a finished output or blocks the next run (a leftover .partial is removed)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, TypeVar

from perception_fm.errors import PerceptionFmError

T = TypeVar("T")


def write_atomically(output: Path, overwrite: bool, write: Callable[[Path], T],
                     error: type[PerceptionFmError]) -> T:
    """Call `write(partial_dir)` and move what it wrote to `output`; return what it returned. An existing
    `output` raises `error` unless `overwrite` (then it is replaced only once the new one is complete)."""
    if output.exists() and not overwrite:
        raise error(f"output {str(output)!r} exists; remove it, choose another path or overwrite it "
                    "(--overwrite)")
    partial = output.with_name(f".{output.name}.partial")
    remove(partial)  # left by a run that was killed
    try:
        result = write(partial)
    except BaseException:
        remove(partial)
        raise
    if output.exists():  # overwrite: the old output goes only once the new one is complete
        old = output.with_name(f".{output.name}.old")
        remove(old)
        output.rename(old)
        partial.rename(output)
        remove(old)
    else:
        partial.rename(output)
    return result


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
