"""Stamp pairing: a frame waits for the inputs of its own stamp that arrive on other topics (camera_info with
its image, depth with the image it was computed from, the image an InstanceArray was segmented in), in any
arrival order, without ROS and without blocking anyone.

One mechanism for the live nodes and the offline replay (both go through the frame handlers of
perception_fm.ros.*_io, which build their pairer here):
- callbacks only `add_frame` / `add` messages; nothing waits inside a callback (a single-threaded executor
  could never deliver what such a wait waits for);
- a frame is released when every expected input of its stamp is here, or once the clock has passed the
  frame's arrival by the longest wait of the inputs still missing; `poll()` releases the timed-out ones (a
  timer in a live node; in the replay the bag's log time is the clock, so a replay waits exactly as long in
  bag time as the node waits in its own time, and messages logged at the same instant all count as there);
- a released frame goes on with what is there: its own stamp's input, else the newest one where that is
  sound (`latest_fallback`: intrinsics rarely change), else None. Every such fallback is COUNTED by reason
  (`on_event`, e.g. camera_info_latest_used, no_camera_info, no_depth, no_image_for_instances);
- frames leave in arrival order (outputs never go back in time); a complete frame releases the older frames
  still waiting at once (each topic delivers in stamp order, so their missing inputs are not coming);
- memory is bounded: `capacity` messages per input, `max_pending` waiting frames (the oldest is dropped
  beyond that, counted `on_drop("stale")`).

An input is waited for when it is `required`, or when it is expected: `expect(name, True/False)` says so explicitly (the replay knows
the bag's topics; a live node sees whether the topic has publishers); with no word (None) an input is
expected once one message of it has arrived, so a stream without that topic pays no waiting.
"""
from __future__ import annotations

import threading
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class PairedInput:
    name: str
    wait_s: float = 0.0  # how long a frame waits for this input after the frame arrived
    latest_fallback: bool = False  # missing at the frame's stamp: use the newest message (counted)
    capacity: int = 16  # messages kept (by stamp); the oldest stored goes first
    missing_event: str = ""  # counted when a frame goes on without this input (default no_<name>)
    required: bool = False  # always waited for (a frame is useless without it), whatever `expect` says

    @property
    def missing(self) -> str:
        return self.missing_event or f"no_{self.name}"

    @property
    def latest_used(self) -> str:
        return f"{self.name}_latest_used"


@dataclass(frozen=True)
class PairedCondition:
    """Something else a frame waits for, checked on every poll: `ready(stamp_ns, inputs)` (inputs of the
    frame's stamp that are here, by name), e.g. TF at the frame's stamp, as tf2's message filter waits. Not
    counted here when it times out: whoever needs it counts (e.g. no_fixed_frame_tf)."""
    name: str
    ready: Callable[[int, dict], bool]
    wait_s: float = 0.0


@dataclass
class Paired:
    """A released frame with its inputs (name -> message or None)."""
    stamp_ns: int
    frame: Any
    inputs: dict[str, Any]
    arrived_ns: int  # clock when the frame arrived
    released_ns: int  # clock when it was released
    fallbacks: list[str] = field(default_factory=list)  # the events counted for this frame


@dataclass
class _Pending:
    stamp_ns: int
    frame: Any
    arrived_ns: int


class StampPairer:
    """See the module docstring. `clock()` returns nanoseconds (monotonic in a live node, bag log time in
    the replay). Thread-safe; every method returns the frames it released, oldest first. The callbacks run
under the pairer's lock: they must not call back into it (counting into NodeStats or a Counter is fine)."""

    def __init__(self, inputs: list[PairedInput] | tuple[PairedInput, ...], clock: Callable[[], int], *,
                 conditions: tuple[PairedCondition, ...] = (), max_pending: int = 32,
                 on_event: Callable[[str], None] = lambda name: None,
                 on_drop: Callable[[str], None] = lambda reason: None):
        self.inputs = {spec.name: spec for spec in inputs}
        self.conditions = {condition.name: condition for condition in conditions}
        self._clock = clock
        self._max_pending = max(1, int(max_pending))
        self._on_event = on_event
        self._on_drop = on_drop
        self._waits_ns = {name: int(spec.wait_s * 1e9) for name, spec in {**self.inputs, **self.conditions}.items()}
        self._messages: dict[str, OrderedDict[int, Any]] = {name: OrderedDict() for name in self.inputs}
        self._latest: dict[str, Any] = {name: None for name in self.inputs}
        self._expected: dict[str, bool | None] = {name: None for name in self.inputs}
        self._pending: deque[_Pending] = deque()
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()  # events and drops of this pairer (also reported through the callbacks)

    # -- configuration ------------------------------------------------------------------------------------

    def expect(self, name: str, expected: bool | None) -> None:
        """True: wait for `name`; False: never wait for it; None: wait once one message of it has arrived."""
        with self._lock:
            self._expected[name] = expected

    def set_wait(self, name: str, seconds: float) -> None:
        with self._lock:
            self._waits_ns[name] = int(seconds * 1e9)

    # -- messages in --------------------------------------------------------------------------------------

    def add_frame(self, stamp_ns: int, frame: Any) -> list[Paired]:
        with self._lock:
            now = self._clock()
            self._pending.append(_Pending(int(stamp_ns), frame, now))
            while len(self._pending) > self._max_pending:  # bounded: the oldest waiting frame goes
                self._pending.popleft()
                self._count("stale", drop=True)
            return self._release(now, final=False)

    def add(self, name: str, stamp_ns: int, message: Any) -> list[Paired]:
        with self._lock:
            messages = self._messages[name]
            messages[int(stamp_ns)] = message
            messages.move_to_end(int(stamp_ns))
            while len(messages) > self.inputs[name].capacity:
                messages.popitem(last=False)
            self._latest[name] = message
            return self._release(self._clock(), final=False)

    def poll(self, final: bool = False) -> list[Paired]:
        """Release the frames whose wait is over (`final`: every waiting frame, e.g. at the end of a bag)."""
        with self._lock:
            if not self._pending:
                return []
            return self._release(self._clock(), final)

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- internals (under the lock) -----------------------------------------------------------------------

    def _is_expected(self, name: str) -> bool:
        if self.inputs[name].required:
            return True
        expected = self._expected[name]
        return self._latest[name] is not None if expected is None else expected

    def _missing(self, entry: _Pending) -> list[str]:
        missing = [name for name in self.inputs
                   if entry.stamp_ns not in self._messages[name] and self._is_expected(name)]
        if self.conditions and not missing:  # conditions may look at the inputs: checked once those are here
            here = {name: self._messages[name].get(entry.stamp_ns) for name in self.inputs}
            missing += [name for name, condition in self.conditions.items()
                        if not condition.ready(entry.stamp_ns, here)]
        return missing

    def _release(self, now: int, final: bool) -> list[Paired]:
        pending = self._pending
        if not pending:
            return []
        last_complete = -1
        for index, entry in enumerate(pending):
            if not self._missing(entry):
                last_complete = index
        released = []
        index = 0
        while pending:
            entry = pending[0]
            if not (final or index <= last_complete or self._timed_out(entry, now)):
                break  # in arrival order: a younger frame never overtakes an older one
            pending.popleft()
            released.append(self._paired(entry, now))
            index += 1
        return released

    def _timed_out(self, entry: _Pending, now: int) -> bool:
        missing = self._missing(entry)
        # strictly later: inputs logged at the frame's own instant (a bag) always count as there
        return not missing or now > entry.arrived_ns + max(self._waits_ns[name] for name in missing)

    def _paired(self, entry: _Pending, now: int) -> Paired:
        inputs, fallbacks = {}, []
        for name, spec in self.inputs.items():
            message = self._messages[name].get(entry.stamp_ns)
            if message is None and spec.latest_fallback and self._latest[name] is not None:
                message = self._latest[name]
                fallbacks.append(spec.latest_used)
            elif message is None:
                fallbacks.append(spec.missing)
            inputs[name] = message
        for event in fallbacks:
            self._count(event)
        return Paired(entry.stamp_ns, entry.frame, inputs, entry.arrived_ns, now, fallbacks)

    def _count(self, name: str, drop: bool = False) -> None:
        self.counts[name] += 1
        (self._on_drop if drop else self._on_event)(name)
