"""A bounded cache of messages by stamp, for pairing messages that arrive on separate topics in any order
(camera_info with its image) without message_filters."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Generic, TypeVar

T = TypeVar("T")


class StampedCache(Generic[T]):
    def __init__(self, capacity: int = 32):
        self._items: OrderedDict[int, T] = OrderedDict()
        self._capacity = capacity
        self._latest: T | None = None
        self._condition = threading.Condition()

    def put(self, stamp_ns: int, item: T) -> None:
        with self._condition:
            self._items[stamp_ns] = item
            self._items.move_to_end(stamp_ns)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)
            self._latest = item
            self._condition.notify_all()

    def get(self, stamp_ns: int, timeout: float = 0.0) -> T | None:
        """The item with exactly this stamp, waiting up to `timeout` s for it; else the latest. None at once
        when nothing ever arrived (a stream without this topic pays no waiting)."""
        deadline = time.monotonic() + timeout
        with self._condition:
            if self._latest is None:
                return None
            while stamp_ns not in self._items:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return self._latest
                self._condition.wait(remaining)
            return self._items[stamp_ns]
