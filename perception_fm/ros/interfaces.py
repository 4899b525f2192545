"""Where this package's interface definitions (.msg/.srv text) are, for tools that need the text rather
than the generated Python classes (bag writers register our types from it)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE = "perception_fm"


def _candidate_share_dirs() -> list[Path]:
    dirs = [Path(prefix) / "share" / PACKAGE for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)
            if prefix]
    dirs.append(Path(sys.prefix) / "share" / PACKAGE)  # the venv built by scripts/setup.sh
    dirs.append(Path(__file__).resolve().parents[2])  # a source checkout: msg/ at the repository root
    return dirs


def message_definitions() -> dict[str, str]:
    """{"perception_fm/msg/Name": definition text} for every message of this package."""
    for directory in _candidate_share_dirs():
        files = sorted((directory / "msg").glob("*.msg"))
        if files:
            return {f"{PACKAGE}/msg/{path.stem}": path.read_text() for path in files}
    raise FileNotFoundError(f"no {PACKAGE} .msg files found in {', '.join(map(str, _candidate_share_dirs()))}")
