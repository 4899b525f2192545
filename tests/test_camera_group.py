"""Camera grouping for rigs: stamps within a tolerance make one group in any arrival order, a bounded wait on
an injected clock, a camera that stops is waited for once and then skipped (counted), stamp order, bounds."""
from collections import Counter

import pytest

from perception_fm.core.camera_group import CameraGrouper

MS = 1_000_000


class Clock:
    def __init__(self):
        self.now = 0

    def __call__(self):
        return self.now


def make(cameras=("left", "right"), tolerance_s=0.005, wait_s=0.1, max_pending=8):
    clock, events, drops = Clock(), Counter(), Counter()
    grouper = CameraGrouper(cameras, clock, tolerance_s=tolerance_s, wait_s=wait_s, max_pending=max_pending,
                            on_event=lambda name: events.update([name]), on_drop=lambda r: drops.update([r]))
    return grouper, clock, events, drops


def test_stamps_within_the_tolerance_group_in_any_order():
    grouper, clock, events, drops = make(("a", "b", "c"))
    assert grouper.add("c", 1000 * MS + 3 * MS, "c0") == []  # 3 ms late: within 5 ms
    assert grouper.add("a", 1000 * MS, "a0") == []
    [group] = grouper.add("b", 1000 * MS - 2 * MS, "b0")
    assert group.frames == {"a": "a0", "b": "b0", "c": "c0"}  # the rig's order, not the arrival order
    assert list(group.frames) == ["a", "b", "c"] and group.missing == ()
    assert group.stamp_ns == 998 * MS and group.stamps["c"] == 1003 * MS
    assert not events and not drops and grouper.pending == 0


def test_stamps_beyond_the_tolerance_open_separate_groups():
    grouper, clock, events, _ = make(tolerance_s=0.005)
    grouper.add("left", 1000 * MS, "l0")
    assert grouper.add("right", 1006 * MS, "r0") == []  # 6 ms apart: not one instant
    assert grouper.pending == 2
    clock.now = 100 * MS + 1  # both waits over
    groups = grouper.poll()
    assert [g.frames for g in groups] == [{"left": "l0"}, {"right": "r0"}]
    assert [g.missing for g in groups] == [("right",), ("left",)]


def test_a_frame_joins_the_nearest_group_that_lacks_its_camera():
    grouper, clock, _, _ = make(tolerance_s=0.02)
    grouper.add("left", 1000 * MS, "l0")
    grouper.add("left", 1015 * MS, "l1")  # the first group has left already: a group of its own
    [first, second] = grouper.add("right", 1014 * MS, "r1") + grouper.poll(final=True)
    # r1 is nearer l1 (1 ms) than l0 (14 ms): it completes l1's group; l0's group goes without the right camera
    assert first.frames == {"left": "l0"} and second.frames == {"left": "l1", "right": "r1"}


def test_wait_is_bounded_and_the_missing_camera_is_counted():
    grouper, clock, events, _ = make(wait_s=0.1)
    assert grouper.add("left", 0, "l0") == []
    clock.now = 100 * MS
    assert grouper.poll() == []  # not strictly past the wait yet
    clock.now = 100 * MS + 1
    [group] = grouper.poll()
    assert group.frames == {"left": "l0"} and group.missing == ("right",)
    assert events == {"camera_missing_right": 1, "camera_stalled_right": 1} and grouper.counts == events


def test_a_camera_that_stops_does_not_stall_the_others():
    grouper, clock, events, _ = make(wait_s=0.1)
    period = 100 * MS
    for i in range(3):  # both cameras run: each group leaves on its last frame
        clock.now = i * period
        grouper.add("left", i * period, f"l{i}")
        [group] = grouper.add("right", i * period, f"r{i}")
        assert group.missing == ()
    # the right camera stops: the next group waits once...
    clock.now = 3 * period
    assert grouper.add("left", 3 * period, "l3") == []
    clock.now = 3 * period + 100 * MS + 1
    [group] = grouper.poll()
    assert group.frames == {"left": "l3"} and grouper.stalled == {"right"}
    # ...then groups leave as soon as the left frame is in, without waiting, each counted
    for i in range(4, 10):
        clock.now = i * period + 150 * MS
        [group] = grouper.add("left", i * period, f"l{i}")
        assert group.frames == {"left": f"l{i}"} and group.released_ns == group.opened_ns
    assert events["camera_missing_right"] == 7 and events["camera_stalled_right"] == 1
    # when it comes back it is waited for again
    clock.now = 10 * period + 150 * MS
    assert grouper.add("right", 10 * period, "r10") == [] and grouper.stalled == frozenset()
    [group] = grouper.add("left", 10 * period, "l10")
    assert group.frames == {"left": "l10", "right": "r10"}


def test_a_complete_group_releases_older_ones_in_stamp_order():
    grouper, clock, events, _ = make(wait_s=10.0)
    grouper.add("left", 0, "l0")  # right's frame 0 is lost
    grouper.add("left", 100 * MS, "l1")
    groups = grouper.add("right", 100 * MS, "r1")
    assert [g.stamp_ns for g in groups] == [0, 100 * MS]
    assert groups[0].missing == ("right",) and groups[1].missing == ()


def test_late_frames_are_dropped_and_counted():
    grouper, clock, events, drops = make(wait_s=0.05)
    grouper.add("left", 0, "l0")
    clock.now = 50 * MS + 1
    [group] = grouper.poll()
    assert group.missing == ("right",)
    assert grouper.add("right", 0, "r0") == []  # its group left: it would go back in time
    assert drops == {"late_frame": 1} and grouper.pending == 0


def test_memory_is_bounded():
    grouper, clock, events, drops = make(wait_s=1e6, max_pending=4)
    released = []
    for i in range(100):  # the right camera never comes, the wait never ends
        released += grouper.add("left", i * 100 * MS, i)
        assert grouper.pending <= 4
    # the fifth open group pushed the oldest out without the right camera; from then on the right camera is
    # stalled and every group leaves at once: oldest first, none lost
    assert [g.frames["left"] for g in released] == list(range(100)) and grouper.pending == 0
    assert events == {"camera_missing_right": 100, "camera_stalled_right": 1} and not drops


def test_invalid_configuration_is_a_clear_error():
    clock = Clock()
    with pytest.raises(ValueError, match="at least one camera"):
        CameraGrouper([], clock, tolerance_s=0.0, wait_s=0.0)
    with pytest.raises(ValueError, match="unique"):
        CameraGrouper(["a", "a"], clock, tolerance_s=0.0, wait_s=0.0)
    grouper = CameraGrouper(["a"], clock, tolerance_s=0.0, wait_s=0.0)
    with pytest.raises(KeyError, match="unknown camera"):
        grouper.add("b", 0, None)
    [group] = grouper.add("a", 5, "x")  # one camera: every frame is a group at once
    assert group.frames == {"a": "x"}
