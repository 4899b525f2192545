"""Latest-frame slot and counters: the bounded-memory building blocks of every node."""
import threading
import time

from perception_fm.core.latest import LatestSlot
from perception_fm.core.stats import NodeStats


def test_latest_slot_keeps_only_the_newest_and_counts_replacements():
    slot = LatestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True and slot.put(3) is True
    assert slot.take(timeout=0) == 3 and slot.take(timeout=0) is None
    assert slot.replaced == 2


def test_latest_slot_wakes_a_waiting_worker_and_never_grows():
    slot = LatestSlot()
    taken = []

    def worker():
        while True:
            item = slot.take(timeout=1.0)
            if item is None:
                return
            taken.append(item)
            time.sleep(0.01)  # a slow model

    thread = threading.Thread(target=worker)
    thread.start()
    for i in range(1, 501):
        slot.put(i)
    time.sleep(0.05)
    slot.close()
    thread.join(timeout=5)
    assert taken[-1] == 500 and taken == sorted(taken)
    assert len(taken) + slot.replaced == 500 and slot.replaced > 400


def test_stats_snapshot_counts_and_bounds_latency_history():
    stats = NodeStats(window=10)
    for i in range(100):
        stats.receive()
        stats.done(latency_ms=float(i), inference_ms=1.0)
    stats.drop("encoding")
    stats.drop("stale", 3)
    stats.event("no_known_pose")
    snapshot = stats.snapshot()
    assert snapshot["received"] == 100 and snapshot["processed"] == 100
    assert snapshot["dropped"] == 4 and snapshot["dropped_encoding"] == 1 and snapshot["dropped_stale"] == 3
    assert snapshot["count_no_known_pose"] == 1
    assert snapshot["latency_ms_p50"] == 94.5  # only the last 10 frames are kept


def test_bounded_queue_keeps_the_newest_in_order():
    queue = LatestSlot(capacity=3)
    dropped = [queue.put(i) for i in range(5)]
    assert dropped == [False, False, False, True, True] and queue.replaced == 2
    assert [queue.take(timeout=0) for _ in range(4)] == [2, 3, 4, None]


def test_keyed_queue_keeps_one_job_per_key_in_place():
    class Job:
        def __init__(self, key, value):
            self.key, self.value = key, value

    queue = LatestSlot(capacity=3, keyed=True)
    queue.put(Job(1, "a"))
    queue.put(Job(2, "b"))
    assert queue.put(Job(1, "c")) is True  # replaces track 1's job where it stood
    queue.put(Job(3, "d"))
    queue.put(Job(4, "e"))  # full: the oldest goes
    assert [queue.take(timeout=0).value for _ in range(3)] == ["b", "d", "e"] and queue.replaced == 2
