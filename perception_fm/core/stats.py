"""Per-node counters and latency figures, reported on /diagnostics and by the replay runner."""
from __future__ import annotations

import threading
from collections import Counter, deque

import numpy as np


class NodeStats:
    """Frames in, frames done, drops by reason, latency over the last `window` frames. Bounded memory."""

    def __init__(self, window: int = 500):
        self._lock = threading.Lock()
        self.received = 0
        self.processed = 0
        self.drops: Counter[str] = Counter()
        self.events: Counter[str] = Counter()  # things worth counting that lose no frame
        self._latency_ms: deque[float] = deque(maxlen=window)
        self._inference_ms: deque[float] = deque(maxlen=window)

    def receive(self) -> None:
        with self._lock:
            self.received += 1

    def drop(self, reason: str, count: int = 1) -> None:
        with self._lock:
            self.drops[reason] += count

    def event(self, name: str) -> None:
        with self._lock:
            self.events[name] += 1

    def done(self, latency_ms: float, inference_ms: float) -> None:
        with self._lock:
            self.processed += 1
            self._latency_ms.append(latency_ms)
            self._inference_ms.append(inference_ms)

    def snapshot(self) -> dict:
        with self._lock:
            latency = np.array(self._latency_ms) if self._latency_ms else np.zeros(1)
            inference = np.array(self._inference_ms) if self._inference_ms else np.zeros(1)
            return {
                "received": self.received,
                "processed": self.processed,
                "dropped": sum(self.drops.values()),
                **{f"dropped_{reason}": count for reason, count in sorted(self.drops.items())},
                **{f"count_{name}": count for name, count in sorted(self.events.items())},
                "latency_ms_p50": float(np.percentile(latency, 50)),
                "latency_ms_p95": float(np.percentile(latency, 95)),
                "inference_ms_mean": float(inference.mean()),
            }
