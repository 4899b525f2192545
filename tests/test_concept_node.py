"""concept_node in its own process over DDS, with the real SAM 3 architecture (tiny, random weights) loaded
through the plugin's real loader. Random weights find nothing meaningful: these tests check the node's
plumbing (concepts by topic and service, prompts, outputs, stamps, sizes), not segmentation quality."""
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Point, PointStamped
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, RegionOfInterest
from std_msgs.msg import String

from perception_fm.core.masks import rle_decode
from perception_fm.msg import InstanceArray
from perception_fm.replay.synthetic import SampleConfig, render_frame
from perception_fm.ros.image_codec import image_to_numpy, numpy_to_image
from perception_fm.ros.tf import ns_to_time
from perception_fm.srv import PromptObject, SetConcepts
from ros_probe import Probe, diagnostics_values, start_node, stop_node
from sam3_tiny import save_tiny_sam3

pytestmark = pytest.mark.ros

SAMPLE = SampleConfig(width=96, height=72, frames=12, camera_path="walk")  # the views these tests were written for
FRAMES = [render_frame(SAMPLE, i) for i in range(SAMPLE.frames)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_sam3(tmp_path_factory.mktemp("sam3"))


@pytest.fixture
def probe():
    probe = Probe()
    probe.record(DiagnosticArray, "/diagnostics")
    probe.record(InstanceArray, "/instances")
    probe.record(Image, "/instances/labels")
    probe.record(Image, "/instances/overlay")
    yield probe
    probe.close()


def call(probe, client, request):
    future = client.call_async(request)
    probe.wait_until(future.done, 30, "service answered")
    return future.result()


LIST = SetConcepts.Request(operation=SetConcepts.Request.LIST)


def image(index, stamp_ns):
    message = numpy_to_image(FRAMES[index % len(FRAMES)].rgb, "rgb8")
    message.header.stamp = ns_to_time(stamp_ns)
    message.header.frame_id = "camera"
    return message


def test_concepts_prompts_and_outputs(probe, checkpoint):
    node = start_node("perception_fm.nodes.concept_node", "-p", f"weights:={checkpoint}", "-p", "input_qos:=reliable",
                      "-p", "confirmation_frames:=2")
    try:
        def ready():
            assert node.poll() is None, stop_node(node)
            return (diagnostics_values(probe, "concept_node") or {}).get("_message") == "ok"
        probe.wait_until(ready, 120, "concept_node ready")
        images = probe.publisher(Image, "/image")
        concepts = probe.publisher(String, "/concepts")
        probe.wait_until(lambda: images.get_subscription_count() and concepts.get_subscription_count(), 30,
                         "subscriptions matched")
        stamp = 1_700_000_000_000_000_000

        # no concept yet: the model does not run, nothing is published
        images.publish(image(0, stamp))
        probe.wait_until(lambda: (diagnostics_values(probe, "concept_node") or {}).get("count_skipped") == "1", 20,
                         "a skipped frame")
        assert probe.received("/instances") == []

        set_concepts = probe.node.create_client(SetConcepts, "/concept_node/set_concepts")
        assert set_concepts.wait_for_service(timeout_sec=30)
        concepts.publish(String(data="red ball, blue box"))
        probe.wait_until(lambda: list(call(probe, set_concepts, LIST).concepts) == ["red ball", "blue box"], 60,
                         "the concepts applied")
        for k in range(1, 4):
            images.publish(image(k, stamp + k))
            probe.wait_for("/instances", lambda m, s=stamp + k: m.header.stamp == ns_to_time(s))
        array = probe.received("/instances")[-1]
        assert list(array.concepts) == ["red ball", "blue box"] and list(array.prompt_ids) == [1, 2]
        assert (array.height, array.width) == (72, 96) and array.header.frame_id == "camera"
        assert array.weights == str(checkpoint) and array.model == "sam3"
        labels = probe.wait_for("/instances/labels", lambda m: m.header.stamp == array.header.stamp)
        assert labels.encoding == "mono16" and image_to_numpy(labels).shape == (72, 96)
        overlay = probe.wait_for("/instances/overlay", lambda m: m.header.stamp == array.header.stamp)
        assert overlay.encoding == "rgb8" and image_to_numpy(overlay).shape == (72, 96, 3)

        too_long = call(probe, set_concepts, SetConcepts.Request(operation=SetConcepts.Request.ADD,
                                                                 concepts=["very " * 40 + "long thing"]))
        assert not too_long.success and "token" in too_long.message and list(too_long.concepts) == ["red ball",
                                                                                                    "blue box"]
        empty = call(probe, set_concepts, SetConcepts.Request(operation=SetConcepts.Request.ADD, concepts=["  "]))
        assert not empty.success
        replaced = call(probe, set_concepts, SetConcepts.Request(operation=SetConcepts.Request.SET,
                                                                 concepts=["blue box", "red ball"]))
        assert replaced.success and list(replaced.prompt_ids) == [1, 2]  # kept phrases keep their ids
        removed = call(probe, set_concepts, SetConcepts.Request(operation=SetConcepts.Request.REMOVE,
                                                                concepts=["red ball"]))
        readded = call(probe, set_concepts, SetConcepts.Request(operation=SetConcepts.Request.ADD,
                                                                concepts=["red ball"]))
        assert list(removed.concepts) == ["blue box"] and list(readded.prompt_ids) == [2, 3]  # never reused

        # a box prompt starts a track that is published from the next frame on, with a stable id
        prompt = probe.node.create_client(PromptObject, "/concept_node/prompt_object")
        assert prompt.wait_for_service(timeout_sec=30)
        ys, xs = np.nonzero(FRAMES[3].instances == 7)
        box = RegionOfInterest(x_offset=int(xs.min()), y_offset=int(ys.min()), width=int(np.ptp(xs) + 1),
                               height=int(np.ptp(ys) + 1))
        answer = call(probe, prompt, PromptObject.Request(concept="cabinet", box=box))
        assert answer.success, answer.message
        for k in range(4, 7):
            images.publish(image(k, stamp + k))
            probe.wait_for("/instances", lambda m, s=stamp + k: m.header.stamp == ns_to_time(s))
        tracked = [[i for i in m.instances if i.id == answer.object_id] for m in probe.received("/instances")[-3:]]
        assert all(len(t) == 1 and t[0].concept == "cabinet" for t in tracked)
        assert [t[0].state for t in tracked][0] == 0  # NEW, then TRACKED or LOST
        mask = rle_decode(np.array(tracked[-1][0].mask_rle), 72, 96)
        assert mask.shape == (72, 96) and mask.sum() == tracked[-1][0].mask_area
        assert node.poll() is None
    finally:
        log = stop_node(node)
    assert "Traceback" not in log, log


def start_ready(probe, checkpoint, *parameters):
    node = start_node("perception_fm.nodes.concept_node", "-p", f"weights:={checkpoint}", "-p", "input_qos:=reliable",
                      *[arg for parameter in parameters for arg in ("-p", parameter)])

    def ready():
        assert node.poll() is None, stop_node(node)
        return (diagnostics_values(probe, "concept_node") or {}).get("_message") == "ok"

    probe.wait_until(ready, 120, "concept_node ready")
    return node


def counter(probe, name):
    return int((diagnostics_values(probe, "concept_node") or {}).get(f"count_{name}", 0))


# a publisher that keeps every command it sends until the node has it (KEEP_LAST would overwrite unsent ones)
COMMANDS_PUBLISHER_QOS = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE)


def test_a_burst_of_concept_commands_loses_none(probe, checkpoint):
    node = start_ready(probe, checkpoint, "max_concepts:=64")
    try:
        concepts = probe.publisher(String, "/concepts", COMMANDS_PUBLISHER_QOS)
        set_concepts = probe.node.create_client(SetConcepts, "/concept_node/set_concepts")
        assert set_concepts.wait_for_service(timeout_sec=30)
        probe.wait_until(lambda: concepts.get_subscription_count(), 30, "subscription matched")
        # 600 commands as fast as the publisher goes, alternating adds and removes over a few phrases: the
        # final set depends on every one of them, in order
        expected: set[str] = set()
        for n in range(600):
            phrase = f"thing {n % 7} {n % 5}"
            if n % 2 == 0:
                concepts.publish(String(data=phrase))
                expected.add(phrase)
            else:
                removed = f"thing {(n * 3) % 7} {(n * 3) % 5}"
                concepts.publish(String(data=f"-{removed}"))
                expected.discard(removed)
        probe.wait_until(lambda: sorted(call(probe, set_concepts, LIST).concepts) == sorted(expected), 120,
                         "the concepts of all 600 commands")
        probe.wait_until(lambda: counter(probe, "concept_messages_applied") >= 600, 30, "600 commands counted")
        assert counter(probe, "concept_messages_applied") == 600 and counter(probe, "concept_messages_dropped") == 0
        assert node.poll() is None
    finally:
        log = stop_node(node)
    assert "Traceback" not in log, log


def test_empty_and_oversized_concept_commands_are_answered_in_one_line_each(probe, checkpoint):
    node = start_ready(probe, checkpoint, "concepts:=lamp")
    try:
        concepts = probe.publisher(String, "/concepts", COMMANDS_PUBLISHER_QOS)
        set_concepts = probe.node.create_client(SetConcepts, "/concept_node/set_concepts")
        assert set_concepts.wait_for_service(timeout_sec=30)
        probe.wait_until(lambda: concepts.get_subscription_count(), 30, "subscription matched")
        for text in ("", "   ", ",,,", "-", " - , ,"):
            concepts.publish(String(data=text))
        probe.wait_until(lambda: counter(probe, "concept_messages_empty") == 5, 60, "5 empty commands counted")
        assert list(call(probe, set_concepts, LIST).concepts) == ["lamp"]  # nothing changed

        # one phrase 3333 times, 300 phrases in one message (31 fit: max_concepts 32 and "lamp", "y" active),
        # one phrase of 3333 characters
        concepts.publish(String(data=",".join(["y"] * 3333)))
        concepts.publish(String(data=", ".join(f"object number {n}" for n in range(300))))
        concepts.publish(String(data="x" * 3333))
        probe.wait_until(lambda: counter(probe, "concept_messages_applied") == 3, 60, "3 commands applied")
        active = list(call(probe, set_concepts, LIST).concepts)
        assert active == ["lamp", "y"] + [f"object number {n}" for n in range(30)]
        assert counter(probe, "bad_concept") == 270 + 1
    finally:
        log = stop_node(node)
    assert "Traceback" not in log, log
    lines = log.splitlines()
    assert len([line for line in lines if "object number" in line]) == 1, lines
    assert len([line for line in lines if "xxxx" in line]) == 1, lines
    assert len(lines) < 30, lines  # one line per command (today: one per phrase, thousands)
    assert any("no command" in line for line in lines), lines
    assert max(len(line) for line in lines) < 1000, max(lines, key=len)


def test_click_prompts_outside_or_overlapping_never_break_a_frame(probe, checkpoint):
    node = start_ready(probe, checkpoint, "confirmation_frames:=0", "concepts:=red ball")
    try:
        images = probe.publisher(Image, "/image")
        clicks = probe.publisher(PointStamped, "/prompt_point", COMMANDS_PUBLISHER_QOS)
        prompt = probe.node.create_client(PromptObject, "/concept_node/prompt_object")
        assert prompt.wait_for_service(timeout_sec=30)
        probe.wait_until(lambda: images.get_subscription_count() and clicks.get_subscription_count(), 30,
                         "subscriptions matched")
        stamp = 1_700_000_000_000_000_000
        images.publish(image(0, stamp))
        probe.wait_for("/instances", lambda m: m.header.stamp == ns_to_time(stamp))

        # the service answers what is wrong, and takes no track id for a refused prompt
        for points, what in (([Point(x=-5.0, y=10.0, z=1.0)], "outside"), ([Point(x=5000.0, y=10.0, z=1.0)],
                                                                            "outside"),
                             ([Point(x=float("nan"), y=10.0, z=1.0)], "finite")):
            answer = call(probe, prompt, PromptObject.Request(points=points))
            assert not answer.success and what in answer.message, answer.message
        unknown = call(probe, prompt, PromptObject.Request(object_id=99, points=[Point(x=5.0, y=5.0, z=1.0)]))
        assert not unknown.success and "99" in unknown.message and "KeyError" not in unknown.message, \
            unknown.message

        # clicks as rqt_image_view sends them: negative, far outside, two nearby points, then inside
        for x, y in ((-20.0, -7.0), (1e6, 3e5), (40.0, 30.0), (41.0, 31.0), (60.0, 50.0)):
            clicks.publish(PointStamped(point=Point(x=x, y=y)))
        # 4 refused by the service, 2 clicks
        probe.wait_until(lambda: counter(probe, "bad_prompt") == 6 and counter(probe, "click_prompts") == 3, 60,
                         "2 clicks refused, 3 applied")
        for k in range(1, 12):
            images.publish(image(k, stamp + k))
            probe.wait_for("/instances", lambda m, s=stamp + k: m.header.stamp == ns_to_time(s))
            probe.wait_for("/instances/overlay", lambda m, s=stamp + k: m.header.stamp == ns_to_time(s))
        last = probe.received("/instances")[-1]
        manual = sorted(i.id for i in last.instances if i.concept == "object")
        assert len(manual) == 3 and manual == list(range(manual[0], manual[0] + 3))  # no id taken by a refusal
        values = diagnostics_values(probe, "concept_node")
        assert "dropped_error" not in values and counter(probe, "bad_prompt") == 6, values
        assert node.poll() is None
    finally:
        log = stop_node(node)
    assert "Traceback" not in log and "IndexError" not in log, log


def test_a_prompt_answered_busy_takes_no_track_id():
    # in-process, with the scripted model: the worker is held busy on purpose, deterministically
    import threading

    import rclpy
    from rclpy.context import Context
    from rclpy.parameter import Parameter

    from perception_fm.nodes.concept_node import ConceptNode
    from scripted_segmentation import FRAMES as SCRIPTED_FRAMES, use_in_default_manager

    use_in_default_manager()
    context = Context()
    rclpy.init(context=context)
    node = ConceptNode(context=context, parameter_overrides=[
        Parameter("model", value="scripted-segmentation"), Parameter("concepts", value="red ball")])
    try:
        deadline = time.monotonic() + 60
        while node.handler is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert node.handler is not None
        # one frame through the handler, in the worker (whose state the tracker is)
        node.run_in_worker(lambda: node.handler.handle(numpy_to_image(SCRIPTED_FRAMES[0].rgb, "rgb8")), timeout=60)
        known = set(node.handler.tracker.tracks)
        ys, xs = np.nonzero(SCRIPTED_FRAMES[0].instances == 4)
        request = PromptObject.Request(box=RegionOfInterest(x_offset=int(xs.min()), y_offset=int(ys.min()),
                                                            width=int(np.ptp(xs) + 1), height=int(np.ptp(ys) + 1)))
        gate = threading.Event()
        node.run_in_worker(gate.wait, wait=False)  # the worker is busy until the gate opens
        node.prompt_timeout_s = 0.2
        busy = node._prompt_object(request, PromptObject.Response())
        assert not busy.success and "busy" in busy.message
        gate.set()
        node.run_in_worker(lambda: None, timeout=60)  # the worker has run everything queued before
        assert set(node.handler.tracker.tracks) == known  # the refused prompt did not run later
        node.prompt_timeout_s = 60
        answer = node._prompt_object(request, PromptObject.Response())
        assert answer.success and answer.object_id == max(known, default=0) + 1
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)
