"""The stamp pairer shared by every node and the replay: arrival orders, waits on an injected clock, counted
fallbacks, release order and bounds."""
from collections import Counter

import pytest

from perception_fm.core.stamp_pairing import PairedCondition, PairedInput, StampPairer

MS = 1_000_000


class Clock:
    def __init__(self):
        self.now = 0

    def __call__(self):
        return self.now


def make(*inputs, max_pending=32):
    clock, events, drops = Clock(), Counter(), Counter()
    pairer = StampPairer(inputs, clock, max_pending=max_pending, on_event=lambda name: events.update([name]),
                         on_drop=lambda reason: drops.update([reason]))
    return pairer, clock, events, drops


CAMERA_INFO = PairedInput("camera_info", wait_s=0.05, latest_fallback=True)
DEPTH = PairedInput("depth", wait_s=0.1)


def test_input_before_the_frame_releases_it_on_arrival():
    pairer, clock, events, _ = make(CAMERA_INFO)
    assert pairer.add("camera_info", 10, "info10") == []
    [paired] = pairer.add_frame(10, "image10")
    assert (paired.stamp_ns, paired.frame, paired.inputs) == (10, "image10", {"camera_info": "info10"})
    assert paired.fallbacks == [] and not events


def test_input_after_the_frame_is_waited_for_without_blocking():
    pairer, clock, events, _ = make(CAMERA_INFO)
    pairer.expect("camera_info", True)  # e.g. the bag has the topic: even the first frame waits
    assert pairer.add_frame(10, "image10") == [] and pairer.pending == 1
    clock.now = 40 * MS
    assert pairer.poll() == []
    [paired] = pairer.add("camera_info", 10, "info10")
    assert paired.inputs == {"camera_info": "info10"} and not events and pairer.pending == 0


def test_timeout_falls_back_to_the_latest_and_counts_it():
    pairer, clock, events, _ = make(CAMERA_INFO)
    pairer.add("camera_info", 5, "info5")
    assert pairer.add_frame(10, "image10") == []  # info5 arrived once: camera_info is now expected
    clock.now = 50 * MS
    assert pairer.poll() == []  # not strictly past the wait yet
    clock.now = 50 * MS + 1
    [paired] = pairer.poll()
    assert paired.inputs == {"camera_info": "info5"} and paired.fallbacks == ["camera_info_latest_used"]
    assert events == {"camera_info_latest_used": 1} and pairer.counts == events


def test_missing_input_without_fallback_is_none_and_counted():
    pairer, clock, events, _ = make(DEPTH, PairedInput("image", wait_s=0.2, missing_event="no_image_for_instances"))
    pairer.expect("depth", True)
    pairer.expect("image", True)
    pairer.add("image", 10, "image10")
    assert pairer.add_frame(10, "array10") == []
    clock.now = 100 * MS + 1
    [paired] = pairer.poll()
    assert paired.inputs == {"depth": None, "image": "image10"} and events == {"no_depth": 1}
    assert pairer.add_frame(20, "array20") == []
    clock.now += 200 * MS + 1  # waits for the longest wait among the missing inputs
    [paired] = pairer.poll()
    assert paired.inputs == {"depth": None, "image": None}
    assert events == {"no_depth": 2, "no_image_for_instances": 1}


def test_an_input_never_seen_is_not_waited_for_but_counted():
    pairer, clock, events, _ = make(CAMERA_INFO)
    [paired] = pairer.add_frame(10, "image10")  # a stream without camera_info pays no wait
    assert paired.inputs == {"camera_info": None} and events == {"no_camera_info": 1}
    pairer.expect("camera_info", False)
    pairer.add("camera_info", 20, "info20")
    [paired] = pairer.add_frame(30, "image30")  # expect False: never waited for, the latest still used
    assert paired.inputs == {"camera_info": "info20"} and events["camera_info_latest_used"] == 1


@pytest.mark.parametrize("order", [("frame", "a", "b"), ("a", "frame", "b"), ("a", "b", "frame"),
                                   ("b", "frame", "a"), ("frame", "b", "a"), ("b", "a", "frame")])
def test_every_arrival_order_pairs_by_stamp(order):
    pairer, clock, events, _ = make(PairedInput("a", wait_s=1.0), PairedInput("b", wait_s=1.0, latest_fallback=True))
    pairer.expect("a", True)
    pairer.expect("b", True)
    pairer.add("b", 5, "b5")  # an older message of b: must not be taken for stamp 7
    released = []
    for name in order:
        clock.now += MS
        released += pairer.add_frame(7, "f7") if name == "frame" else pairer.add(name, 7, f"{name}7")
    [paired] = released
    assert paired.inputs == {"a": "a7", "b": "b7"} and not events


def test_frames_leave_in_arrival_order_and_a_complete_frame_releases_older_ones():
    pairer, clock, events, _ = make(CAMERA_INFO)
    pairer.expect("camera_info", True)
    assert pairer.add_frame(1, "f1") == [] and pairer.add_frame(2, "f2") == []
    # f2 is complete: f1's camera_info is not coming (one topic delivers in order), so both leave at once,
    # the older first, f1 with the latest camera_info (counted)
    released = pairer.add("camera_info", 2, "info2")
    assert [p.frame for p in released] == ["f1", "f2"] and pairer.pending == 0
    assert released[0].inputs == {"camera_info": "info2"} and released[0].fallbacks == ["camera_info_latest_used"]
    assert released[1].fallbacks == [] and events == {"camera_info_latest_used": 1}


def test_a_younger_timed_out_frame_never_overtakes_an_older_waiting_one():
    pairer, clock, events, _ = make(PairedInput("slow", wait_s=1.0), PairedInput("fast", wait_s=0.01))
    pairer.expect("slow", True)
    pairer.expect("fast", True)
    pairer.add("slow", 2, "s2")
    pairer.add_frame(1, "f1")  # misses slow and fast: waits 1 s
    clock.now = 1
    pairer.add_frame(2, "f2")  # misses fast only: its own wait is 10 ms
    clock.now = 20 * MS
    assert pairer.poll() == []  # f2 is due, but f1 is older and still waiting
    clock.now = 2 * 10**9
    assert [p.frame for p in pairer.poll()] == ["f1", "f2"]


def test_final_poll_releases_everything():
    pairer, clock, events, _ = make(DEPTH)
    pairer.expect("depth", True)
    pairer.add_frame(1, "f1")
    pairer.add_frame(2, "f2")
    assert pairer.poll() == []
    assert [p.frame for p in pairer.poll(final=True)] == ["f1", "f2"] and events == {"no_depth": 2}


def test_memory_is_bounded_and_overflow_is_counted():
    pairer, clock, events, drops = make(PairedInput("depth", wait_s=1.0, capacity=4), max_pending=3)
    pairer.expect("depth", True)
    for stamp in range(10):
        pairer.add("depth", 100 + stamp, f"d{stamp}")
    assert len(pairer._messages["depth"]) == 4  # only the newest 4 stamps are kept
    for stamp in range(5):
        pairer.add_frame(stamp, f"f{stamp}")
    assert pairer.pending == 3 and drops == {"stale": 2}
    assert [p.frame for p in pairer.poll(final=True)] == ["f2", "f3", "f4"]


def test_waits_can_change_at_runtime():
    pairer, clock, events, _ = make(DEPTH)
    pairer.expect("depth", True)
    pairer.set_wait("depth", 5.0)
    pairer.add_frame(1, "f1")
    clock.now = 10**9
    assert pairer.poll() == []
    clock.now = 5 * 10**9 + 1
    assert len(pairer.poll()) == 1


def test_same_stamp_again_replaces_the_stored_message():
    pairer, clock, events, _ = make(CAMERA_INFO)
    pairer.add("camera_info", 1, "old")
    pairer.add("camera_info", 1, "new")  # e.g. a bag played twice
    [paired] = pairer.add_frame(1, "f1")
    assert paired.inputs == {"camera_info": "new"}


def test_a_condition_is_waited_for_like_an_input_and_rechecked_on_poll():
    tf_ready = set()
    clock, events = Clock(), Counter()
    pairer = StampPairer([PairedInput("image", wait_s=1.0)], clock, on_event=lambda name: events.update([name]),
                         conditions=(PairedCondition("tf", lambda stamp, inputs: inputs["image"] is not None
                                                     and stamp in tf_ready, wait_s=1.0),))
    pairer.expect("image", True)
    assert pairer.add_frame(1, "a1") == [] and pairer.add("image", 1, "i1") == []  # TF not there yet
    clock.now = 10 * MS
    assert pairer.poll() == []
    tf_ready.add(1)  # TF arrives on its own topic: the next poll releases the frame
    [paired] = pairer.poll()
    assert paired.inputs == {"image": "i1"} and not events
    pairer.add_frame(2, "a2")
    pairer.add("image", 2, "i2")
    clock.now += 10**9 + 1
    [paired] = pairer.poll()  # timed out without TF: released, not counted here (the user of TF counts)
    assert paired.frame == "a2" and not events


def test_a_required_input_is_waited_for_even_before_its_first_message():
    pairer, clock, events, _ = make(PairedInput("image", wait_s=0.2, required=True, missing_event="no_image"))
    pairer.expect("image", False)  # no publisher seen: still waited for, the frame is useless without it
    assert pairer.add_frame(3, "array3") == []
    [paired] = pairer.add("image", 3, "image3")
    assert paired.inputs == {"image": "image3"} and not events
