"""The latest-frame policy: a slot of capacity one between a subscription and a worker thread."""
from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """Holds at most one item. A new item replaces an unprocessed one, which is then counted as stale: the
    worker always gets the newest frame and memory never grows, however slow the model is."""

    def __init__(self) -> None:
        self._item: T | None = None
        self._condition = threading.Condition()
        self._closed = False
        self.replaced = 0  # items overwritten before the worker took them

    def put(self, item: T) -> bool:
        """Store `item`; True if it replaced an item the worker never took."""
        with self._condition:
            replaced = self._item is not None
            self.replaced += replaced
            self._item = item
            self._condition.notify()
            return replaced

    def take(self, timeout: float | None = None) -> T | None:
        """The newest item (removing it), waiting up to `timeout` s; None on timeout or close."""
        with self._condition:
            if self._item is None and not self._closed:
                self._condition.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()
