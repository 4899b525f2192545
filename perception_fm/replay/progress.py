"""The replay's progress line on stderr."""
from __future__ import annotations

import sys
import time


class Progress:
    """Progress on stderr: frames, frames/s, ETA. On a terminal one line redrawn 4 times a second; otherwise
    (CI logs, `| tee`, nohup) a plain line every PLAIN_PERIOD_S, so a long run never looks hung."""

    PLAIN_PERIOD_S = 5.0

    def __init__(self, total: int, enabled: bool, stream=None):
        self.stream = stream or sys.stderr
        self.total, self.enabled = total, enabled
        self.tty = self.stream.isatty()
        self.done, self.started, self._last = 0, time.perf_counter(), time.perf_counter()

    def step(self) -> None:
        self.done += 1
        if not self.enabled:
            return
        now = time.perf_counter()
        period = 0.25 if self.tty else self.PLAIN_PERIOD_S
        if now - self._last > period or (self.tty and self.done == self.total):
            self._last = now
            rate = self.done / max(now - self.started, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            text = f"frame {self.done}/{self.total}  {rate:5.1f} frames/s  ETA {eta:5.0f} s"
            self.stream.write(f"\r  {text} " if self.tty else f"replay: {text}\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
