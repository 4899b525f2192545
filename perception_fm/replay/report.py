"""The replay's report: what each node did (frames, drops, events, timings, parameters), what was written,
and what could not be read; saved as REPORT_FILE inside the output bag."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPORT_FILE = "replay_report.json"


@dataclass
class ReplayReport:
    input_bag: str
    output_bag: str
    nodes: list[dict]
    messages_in: int
    outputs: dict[str, int]
    wall_s: float
    unknown_types: dict[str, list] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    bag_error: str | None = None

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def save_report(report: ReplayReport, bag_dir: Path, unknown: dict) -> None:
    """Warn about messages passed through unread (`unknown`: {topic: (msgtype, count)}) and write the report
    into `bag_dir`."""
    for topic, (msgtype, count) in unknown.items():
        print(f"warning: {count} messages of {topic!r} passed through unread: type {msgtype} is not installed "
              "here", file=sys.stderr)
    (bag_dir / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2))
