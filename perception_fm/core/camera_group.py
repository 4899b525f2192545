"""Camera grouping: the frames of several cameras whose stamps fall within a tolerance become one group (the
rig's views of one instant), in any arrival order, without ROS and without blocking anyone.

It sits after stamp pairing: each camera's image first waits for the camera_info of its own stamp
(perception_fm.core.stamp_pairing, exact stamps), and what a camera's pairer releases comes here. The two
share their conventions: callbacks only `add` (nothing waits inside a callback), `poll()` releases what
timed out (a steady timer in a live node; the bag's log time in the replay), and everything counted goes to
`on_event` / `on_drop` (the node's /diagnostics).

- A frame joins the open group whose stamp (its first frame's stamp) is nearest within `tolerance_s` and
  that has no frame of its camera yet; else it opens a group.
- A group is released once every camera that is waited for is in it, or once the clock has passed the
  group's opening by `wait_s` (bounded wait), and goes on with what is there: each camera missing from a
  released group is counted (`camera_missing_<name>`).
- A camera that stops does not stall the others: once a group went without it, it is no longer waited for
  (counted once, `camera_stalled_<name>`) until its next frame arrives, so later groups leave as soon as the
  remaining cameras are in. Groups are thus delayed by one `wait_s` when a camera stops, not each.
- Groups leave in stamp order (outputs never go back in time); a complete group releases the older groups
  still waiting at once (every camera delivers in stamp order, so what they miss is not coming). A frame
  older than the last released group cannot join anything: dropped, counted `late_frame`.
- Memory is bounded: at most `max_pending` open groups (beyond that the oldest is released as it is), each
  with at most one frame per camera.
"""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


@dataclass
class CameraGroup:
    """A released group: the frames of the cameras that were in time, by camera name."""
    stamp_ns: int  # the group's stamp: its earliest frame's
    frames: dict[str, Any]  # camera -> frame (only the cameras present)
    stamps: dict[str, int]  # camera -> that frame's own stamp
    missing: tuple[str, ...]  # cameras of the rig not in this group (counted)
    opened_ns: int  # clock when the group's first frame arrived
    released_ns: int  # clock when it was released

    @property
    def cameras(self) -> list[str]:
        """The cameras present, in the rig's order."""
        return list(self.frames)


@dataclass
class _Open:
    stamp_ns: int
    opened_ns: int
    frames: dict[str, tuple[int, Any]] = field(default_factory=dict)  # camera -> (stamp, frame)


class CameraGrouper:
    """See the module docstring. `cameras`: the rig's camera names (their order is the order of a group's
    frames); `clock()` returns nanoseconds. Thread-safe; every method returns the groups it released, oldest
    first. Callbacks run under the lock: they must not call back into the grouper."""

    def __init__(self, cameras: Sequence[str], clock: Callable[[], int], *, tolerance_s: float, wait_s: float,
                 max_pending: int = 8, on_event: Callable[[str], None] = lambda name: None,
                 on_drop: Callable[[str], None] = lambda reason: None):
        cameras = list(cameras)
        if not cameras:
            raise ValueError("a camera group needs at least one camera")
        if len(set(cameras)) != len(cameras):
            raise ValueError(f"camera names must be unique, got {cameras}")
        if tolerance_s < 0 or wait_s < 0:
            raise ValueError(f"tolerance_s and wait_s must be >= 0, got {tolerance_s}, {wait_s}")
        self.cameras = cameras
        self._clock = clock
        self._tolerance_ns = int(round(tolerance_s * 1e9))
        self._wait_ns = int(round(wait_s * 1e9))
        self._max_pending = max(1, int(max_pending))
        self._on_event = on_event
        self._on_drop = on_drop
        self._open: list[_Open] = []  # sorted by stamp
        self._stalled: set[str] = set()  # cameras not waited for until their next frame
        self._last_released: int | None = None
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def set_timing(self, tolerance_s: float, wait_s: float) -> None:
        """Parameters changed at runtime."""
        with self._lock:
            self._tolerance_ns = int(round(tolerance_s * 1e9))
            self._wait_ns = int(round(wait_s * 1e9))

    @property
    def wait_s(self) -> float:
        return self._wait_ns / 1e9

    @property
    def pending(self) -> int:
        return len(self._open)

    @property
    def stalled(self) -> frozenset[str]:
        return frozenset(self._stalled)

    # -- frames in ----------------------------------------------------------------------------------------

    def add(self, camera: str, stamp_ns: int, frame: Any) -> list[CameraGroup]:
        if camera not in self.cameras:
            raise KeyError(f"unknown camera {camera!r}; the rig has {self.cameras}")
        stamp_ns = int(stamp_ns)
        with self._lock:
            now = self._clock()
            if camera in self._stalled:  # it is back: wait for it again
                self._stalled.discard(camera)
            if self._last_released is not None and stamp_ns <= self._last_released:
                self._count("late_frame", drop=True)  # its group left already; outputs never go back in time
                return self._release(now, final=False)
            target = self._join(camera, stamp_ns)
            if target is None:
                target = _Open(stamp_ns, now)
                self._open.append(target)
                self._open.sort(key=lambda group: group.stamp_ns)
            target.frames[camera] = (stamp_ns, frame)
            released = []
            while len(self._open) > self._max_pending:  # bounded: the oldest open group leaves as it is
                released.append(self._emit(self._open.pop(0), now))
            return released + self._release(now, final=False)

    def poll(self, final: bool = False) -> list[CameraGroup]:
        """Release the groups whose wait is over (`final`: every open group, e.g. at the end of a bag)."""
        with self._lock:
            return self._release(self._clock(), final)

    # -- internals (under the lock) -----------------------------------------------------------------------

    def _join(self, camera: str, stamp_ns: int) -> _Open | None:
        best, best_gap = None, None
        for group in self._open:
            gap = abs(group.stamp_ns - stamp_ns)
            if camera not in group.frames and gap <= self._tolerance_ns and (best_gap is None or gap < best_gap):
                best, best_gap = group, gap
        return best

    def _complete(self, group: _Open) -> bool:
        return all(camera in group.frames or camera in self._stalled for camera in self.cameras)

    def _release(self, now: int, final: bool) -> list[CameraGroup]:
        if not self._open:
            return []
        last_complete = max((i for i, group in enumerate(self._open) if self._complete(group)), default=-1)
        released = []
        while self._open:
            group = self._open[0]
            timed_out = now > group.opened_ns + self._wait_ns
            if not (final or last_complete >= 0 or timed_out):
                break  # in stamp order: a younger group never overtakes an older one
            self._open.pop(0)
            last_complete -= 1
            released.append(self._emit(group, now))
            if not final and last_complete < 0 and self._open:
                # cameras that missed this group are no longer waited for: recheck the rest
                last_complete = max((i for i, g in enumerate(self._open) if self._complete(g)), default=-1)
        return released

    def _emit(self, group: _Open, now: int) -> CameraGroup:
        missing = tuple(camera for camera in self.cameras if camera not in group.frames)
        for camera in missing:
            self._count(f"camera_missing_{camera}")
            if camera not in self._stalled:
                self._stalled.add(camera)
                self._count(f"camera_stalled_{camera}")
        ordered = [camera for camera in self.cameras if camera in group.frames]
        stamps = {camera: group.frames[camera][0] for camera in ordered}
        stamp = min(stamps.values())
        self._last_released = max(self._last_released or stamp, max(stamps.values()))
        return CameraGroup(stamp, {camera: group.frames[camera][1] for camera in ordered}, stamps, missing,
                           group.opened_ns, now)

    def _count(self, name: str, drop: bool = False) -> None:
        self.counts[name] += 1
        (self._on_drop if drop else self._on_event)(name)
