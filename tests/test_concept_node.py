"""concept_node in its own process over DDS, with the real SAM 3 architecture (tiny, random weights) loaded
through the plugin's real loader. Random weights find nothing meaningful: these tests check the node's
plumbing (concepts by topic and service, prompts, outputs, stamps, sizes), not segmentation quality."""
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
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

SAMPLE = SampleConfig(width=96, height=72, frames=12)
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

        concepts.publish(String(data="red ball, blue box"))
        time.sleep(0.5)
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

        set_concepts = probe.node.create_client(SetConcepts, "/concept_node/set_concepts")
        assert set_concepts.wait_for_service(timeout_sec=30)
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
