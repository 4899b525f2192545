"""The latest-frame policy: a bounded queue between a subscription and a worker thread."""
from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """Holds at most `capacity` items (1: the latest-frame slot of image nodes). A new item arriving when it
    is full pushes out the oldest unprocessed one, which is counted as stale: the worker always gets recent
    items in order, and memory never grows however slow the model is. With `keyed`, an item replaces a
    queued one with the same `key` attribute in place (one pending job per track), also counted stale."""

    def __init__(self, capacity: int = 1, keyed: bool = False) -> None:
        self._items: deque[T] = deque()
        self._capacity = max(1, int(capacity))
        self._keyed = keyed
        self._condition = threading.Condition()
        self._closed = False
        self.replaced = 0  # items pushed out before the worker took them

    def put(self, item: T) -> bool:
        """Store `item`; True if that pushed out an item the worker never took."""
        with self._condition:
            if self._keyed:
                for index, queued in enumerate(self._items):
                    if queued.key == item.key:
                        self._items[index] = item
                        self.replaced += 1
                        self._condition.notify()
                        return True
            replaced = len(self._items) >= self._capacity
            if replaced:
                self._items.popleft()
                self.replaced += 1
            self._items.append(item)
            self._condition.notify()
            return replaced

    def take(self, timeout: float | None = None) -> T | None:
        """The oldest item held (removing it), waiting up to `timeout` s; None on timeout or close."""
        with self._condition:
            if not self._items and not self._closed:
                self._condition.wait(timeout)
            return self._items.popleft() if self._items else None

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()
