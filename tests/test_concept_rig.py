"""A camera rig through one concept model (perception_fm.pipelines.concept_rig, perception_fm.ros.concept_rig_io):
the batched backbone pass equals the per-image one, each camera's tracks equal those of its own single-camera
tracker with ids unique across cameras and stable, and a 2-camera synthetic rig through concept_node over DDS.
The tiny SAM 3 (tests/sam3_tiny.py, random weights) checks plumbing, not segmentation quality."""
import numpy as np
import pytest
import torch

from perception_fm.errors import BadInputError
from perception_fm.hookspecs import ModelOptions, Task
from perception_fm.pipelines.concept_rig import ConceptRig, RigIds
from perception_fm.pipelines.concept_tracker import ConceptTracker, TrackerConfig
from perception_fm.pipelines.concepts import ConceptSet
from perception_fm.plugin_manager import PluginManager
from perception_fm.replay import synthetic as syn
from sam3_tiny import save_tiny_sam3

RIG = syn.SampleConfig(width=96, height=72, frames=5, camera_path="walk", rig_cameras=2, rig_baseline=0.3)
# every query a detection (random weights score ~0.4) and tracks published from their first frame
TRACKER = TrackerConfig(confirmation_frames=0, new_track_score=0.0, max_objects=6)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_sam3(tmp_path_factory.mktemp("sam3"))


@pytest.fixture(scope="module")
def model(checkpoint):
    return PluginManager(entry_points=False).create(
        Task.SEGMENTATION, "sam3", ModelOptions(weights=str(checkpoint), device="cpu", extra={"score_threshold": 0.0}))


@pytest.fixture(scope="module")
def frames():
    """[frame][camera] RGB of the synthetic rig."""
    return [[syn.render_frame(RIG, index, camera).rgb for camera in range(RIG.rig_cameras)]
            for index in range(RIG.frames)]


def tensors(encoded):
    detector = [t for t in (*encoded.detector_features.fpn_hidden_states,
                            *encoded.detector_features.fpn_position_encoding) if t is not None]
    return [*detector, encoded.features, encoded.position, *encoded.high_res]


def test_batched_backbone_equals_per_image_backbone(model, frames):
    rng = np.random.default_rng(3)
    images = [frames[0][0], frames[0][1], rng.integers(0, 256, (50, 130, 3), np.uint8)]  # sizes may differ
    batched = model.encode_frames(images)
    assert len(batched) == 3
    for image, together in zip(images, batched):
        alone = model.encode_frames([image])[0]
        assert together.image_size == alone.image_size == image.shape[:2]
        pairs = list(zip(tensors(together), tensors(alone)))
        assert len(pairs) == len(tensors(alone)) >= 5
        for a, b in pairs:
            assert a.shape == b.shape and a.shape[0 if a.dim() == 4 else 1] == 1
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # the images are not confused: different inputs, different features
    assert (batched[0].features - batched[1].features).abs().max() > 1e-2
    # a session fed the batched features detects what add_frame's own pass detects
    concept = {1: model.encode_concept("object")}
    fed, own = model.new_session(), model.new_session()
    a = fed.detect(fed.add_encoded_frame(batched[1]), concept)
    b = own.detect(own.add_frame(images[1]), concept)
    assert len(a) == len(b) > 0
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=1e-5)
    torch.testing.assert_close(a.masks, b.masks, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="another model"):
        fed.add_encoded_frame(type(batched[0])(**{**batched[0].__dict__, "model": object()}))


def test_rig_ids_are_unique_stable_and_name_their_camera():
    ids = RigIds(("cam0", "cam1", "cam2"))
    seen = {}
    for camera in ids.cameras:
        for local in range(1, 50):
            rig_id = ids.to_rig(camera, local)
            assert rig_id not in seen and rig_id >= 1
            seen[rig_id] = (camera, local)
            assert ids.to_camera(rig_id) == (camera, local)
    assert sorted(seen) == list(range(1, 3 * 49 + 1))  # dense: no id wasted
    with pytest.raises(ValueError):
        ids.to_camera(0)


def test_each_camera_tracks_as_its_own_tracker_with_rig_wide_ids(model, frames):
    concepts = ConceptSet(model.encode_concept)
    concepts.add(["object"])
    active = concepts.snapshot()
    rig = ConceptRig(model, ["cam0", "cam1"], TRACKER)
    alone = [ConceptTracker(model.new_session(), TRACKER) for _ in range(2)]
    history: dict[int, list[int]] = {}  # rig id -> frames it was published on
    for index, images in enumerate(frames):
        group = {"cam0": images[0], "cam1": images[1]}
        if index == 2:
            del group["cam1"]  # camera 1 missed this group: its tracker steps no frame
        output = rig.step(group, active)
        assert list(output.frames) == list(group) and output.inference_ms >= output.encode_ms > 0
        for camera_index, camera in enumerate(("cam0", "cam1")):
            if camera not in group:
                continue
            expected = alone[camera_index].step(group[camera], active)
            got = output.frames[camera]
            assert [rig.ids.to_rig(camera, i.id) for i in expected.instances] == [i.id for i in got.instances]
            assert [i.concept for i in expected.instances] == [i.concept for i in got.instances]
            for e, g in zip(expected.instances, got.instances):
                torch.testing.assert_close(g.mask, e.mask, rtol=0, atol=1e-4)
            for instance in got.instances:
                assert rig.ids.to_camera(instance.id)[0] == camera
                history.setdefault(instance.id, []).append(index)
    assert rig.trackers["cam1"]._frames == RIG.frames - 1 and rig.trackers["cam0"]._frames == RIG.frames
    ids0 = {i for i in history if rig.ids.to_camera(i)[0] == "cam0"}
    ids1 = set(history) - ids0
    assert ids0 and ids1 and not ids0 & ids1  # both cameras track, never under one id
    assert any(len(frames_seen) >= 3 for frames_seen in history.values())  # ids persist over frames
    assert set(rig.tracks) == {rig.ids.to_rig(c, i) for c, t in rig.trackers.items() for i in t.tracks}
    removed = rig.drop_concepts({next(iter(active))})
    assert set(removed) == set(history) & set(removed) and not rig.tracks
    with pytest.raises(BadInputError, match="camera rig: a prompt must name its camera"):
        rig.prompt(np.array([[1.0, 1.0]]), np.array([1]), None)


def test_prompts_go_to_their_camera_and_refusals_take_no_id(model, frames):
    rig = ConceptRig(model, ["cam0", "cam1"], TRACKER)
    routed = []  # (camera, the local id the camera's session was prompted with)
    for camera, session in rig._sessions.items():
        original = session.prompt_object
        session.prompt_object = (lambda original, camera: lambda frame, obj_id, *rest: (
            routed.append((camera, obj_id)), original(frame, obj_id, *rest))[1])(original, camera)
    rig.step({"cam0": frames[0][0], "cam1": frames[0][1]}, {})  # no concepts: only prompted tracks
    box = np.array([20.0, 15.0, 60.0, 50.0])
    # refused: no camera, an unknown camera, a box outside camera 1's image: no id is taken, nothing runs
    for camera, reason in (("", "must name its camera, one of 'cam0', 'cam1'"), ("cam7", "unknown camera 'cam7'")):
        with pytest.raises(BadInputError, match=reason):
            rig.prompt(None, None, box, camera=camera)
    with pytest.raises(BadInputError, match="outside"):
        rig.prompt(np.array([[RIG.width + 5.0, 1.0]]), np.array([1]), None, camera="cam1")
    assert not routed and not rig.tracks
    # a box on camera 1 starts a track on camera 1's tracker, under a rig id that names camera 1
    first = rig.prompt(None, None, box, concept="mug", camera="cam1")
    assert rig.ids.to_camera(first) == ("cam1", 1) and first == 2 and routed == [("cam1", 1)]
    assert set(rig.trackers["cam1"].tracks) == {1} and not rig.trackers["cam0"].tracks
    # a correction by id goes to the id's camera (camera empty, or the right one); a disagreeing camera is refused
    assert rig.prompt(np.array([[30.0, 30.0]]), np.array([1]), None, obj_id=first) == first
    assert rig.prompt(np.array([[35.0, 30.0]]), np.array([0]), None, obj_id=first, camera="cam1") == first
    assert routed == [("cam1", 1)] * 3
    with pytest.raises(BadInputError, match="object 2 is tracked on camera 'cam1', not 'cam0'"):
        rig.prompt(np.array([[30.0, 30.0]]), np.array([1]), None, obj_id=first, camera="cam0")
    with pytest.raises(BadInputError, match="no tracked object 3"):  # 3 would be camera 0's first id
        rig.prompt(np.array([[30.0, 30.0]]), np.array([1]), None, obj_id=3)
    assert len(routed) == 3
    # the next id on camera 1 follows the first: the refusals took none
    second = rig.prompt(None, None, box + 5, camera="cam1")
    assert rig.ids.to_camera(second) == ("cam1", 2)
    output = rig.step({"cam0": frames[1][0], "cam1": frames[1][1]}, {})
    assert {i.id for i in output.frames["cam1"].instances} == {first, second} and not output.frames["cam0"].instances
    assert {i.concept for i in output.frames["cam1"].instances} == {"mug", "object"}
    # a click names its camera by the frame of that camera's last image
    with pytest.raises(BadInputError, match="no camera's last image is in frame 'cam0_optical'.*no image yet"):
        rig.camera_of_frame("cam0_optical")
    rig.note_frame("cam0", "cam0_optical")
    rig.note_frame("cam1", "cam1_optical")
    assert rig.camera_of_frame("cam1_optical") == "cam1" and rig.camera_of_frame("cam0_optical") == "cam0"
    with pytest.raises(BadInputError, match="frame 'elsewhere'.*cam0: 'cam0_optical', cam1: 'cam1_optical'") as bad:
        rig.camera_of_frame("elsewhere")
    assert bad.value.reason == "prompt_frame"


@pytest.mark.ros
def test_two_camera_rig_through_concept_node_over_dds(checkpoint):
    import threading

    import rclpy
    from rclpy.context import Context
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter
    from geometry_msgs.msg import Point, PointStamped
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, RegionOfInterest
    from std_msgs.msg import Header

    from perception_fm.msg import InstanceArray
    from perception_fm.nodes.concept_node import ConceptNode
    from perception_fm.ros.image_codec import image_to_numpy, numpy_to_image
    from perception_fm.ros.tf import ns_to_time
    from perception_fm.srv import PromptObject
    from ros_probe import Probe

    probe = Probe("concept_rig_probe")
    for topic in ("/cam0/instances", "/cam1/instances", "/instances"):
        probe.record(InstanceArray, topic)
    probe.record(Image, "/cam1/instances/labels")
    context = Context()
    rclpy.init(context=context)
    node = ConceptNode(context=context, parameter_overrides=[
        Parameter("weights", value=str(checkpoint)), Parameter("cameras", value=["/cam0", "/cam1"]),
        Parameter("input_qos", value="reliable"), Parameter("rig_wait", value=60.0),
        Parameter("concepts", value="object"), Parameter("confirmation_frames", value=0),
        Parameter("new_track_score", value=0.0), Parameter("max_objects", value=16)])
    executor = MultiThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        images = [probe.publisher(Image, f"/cam{camera}/image") for camera in range(2)]
        probe.wait_until(lambda: all(p.get_subscription_count() > 0 for p in images), 60,
                         "the node's rig subscriptions (active)")

        def detect_everything():  # random weights score ~0.4: let every query be a detection (test only)
            if node.model is None:
                return False
            node.model.score_threshold = 0.0
            return True
        probe.wait_until(lambda: node.run_in_worker(detect_everything, timeout=60), 120, "the model loaded")

        def send(index, camera):
            message = numpy_to_image(syn.render_frame(RIG, index, camera).rgb, "rgb8")
            message.header.stamp = ns_to_time(syn.stamp_ns(RIG, index))
            message.header.frame_id = syn.rig_camera_frame(RIG, camera)
            images[camera].publish(message)

        def at(index):
            return lambda message: message.header.stamp == ns_to_time(syn.stamp_ns(RIG, index))

        ids = {0: [], 1: []}  # per camera, per frame: the published ids
        for index in range(3):
            for camera in ((1, 0) if index == 0 else (0, 1)):  # any arrival order within a group
                send(index, camera)
            combined = probe.wait_for("/instances", at(index))
            assert combined.header.frame_id == "" and (combined.height, combined.width) == (RIG.height, RIG.width)
            for camera in range(2):
                array = probe.wait_for(f"/cam{camera}/instances", at(index))
                assert array.header.frame_id == syn.rig_camera_frame(RIG, camera)  # the camera's own frame
                assert array.instances and {i.camera for i in array.instances} == {f"cam{camera}"}
                ids[camera].append([i.id for i in array.instances])
                mine = [i.id for i in combined.instances if i.camera == f"cam{camera}"]
                assert mine == ids[camera][-1]  # the combined array holds every camera's instances
            labels = probe.wait_for("/cam1/instances/labels", at(index))
            assert set(np.unique(image_to_numpy(labels))) - {0} <= set(ids[1][-1])
        assert not {i for frame in ids[0] for i in frame} & {i for frame in ids[1] for i in frame}  # unique
        for camera in range(2):
            assert set(ids[camera][0]) <= set(ids[camera][2])  # stable: the first frame's tracks keep their ids

        # prompts on the rig: ~/prompt_object names the camera, a correction goes to its id's camera
        def next_local(camera):
            return node.run_in_worker(lambda: node.handler.tracker.trackers[camera]._next_id, timeout=60)

        def prompt(**fields):
            return node._prompt_object(PromptObject.Request(**fields), PromptObject.Response())

        box = RegionOfInterest(x_offset=20, y_offset=15, width=40, height=35)
        expected = node.handler.tracker.ids.to_rig("cam1", next_local("cam1"))
        for camera, reason in (("", "must name its camera, one of 'cam0', 'cam1'"), ("cam7", "unknown camera")):
            refused = prompt(concept="mug", box=box, camera=camera)
            assert not refused.success and reason in refused.message, refused.message
        started = prompt(concept="mug", box=box, camera="cam1")
        assert started.success, started.message
        assert started.object_id == expected and (started.object_id - 1) % 2 == 1  # refusals took no id
        wrong = prompt(object_id=started.object_id, points=[Point(x=30.0, y=30.0, z=1.0)], camera="cam0")
        assert not wrong.success and f"object {started.object_id} is tracked on camera 'cam1'" in wrong.message
        corrected = prompt(object_id=started.object_id, points=[Point(x=30.0, y=30.0, z=1.0)])
        assert corrected.success and corrected.object_id == started.object_id, corrected.message
        # clicks: routed by the frame of a camera's last image; an unknown frame is counted and logged
        clicks = probe.publisher(PointStamped, "/prompt_point", QoSProfile(
            history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE))
        probe.wait_until(lambda: clicks.get_subscription_count() > 0, 60, "the node's prompt_point subscription")
        clicked = node.handler.tracker.ids.to_rig("cam0", next_local("cam0"))
        clicks.publish(PointStamped(header=Header(frame_id="nowhere"), point=Point(x=30.0, y=30.0)))
        clicks.publish(PointStamped(header=Header(frame_id=syn.rig_camera_frame(RIG, 0)), point=Point(x=30.0, y=30.0)))

        def count(name):
            return node.stats.snapshot().get(f"count_{name}", 0)
        probe.wait_until(lambda: count("bad_prompt_frame") == 1 and count("click_prompts") == 1, 60, "clicks applied")
        for camera in (0, 1):
            send(3, camera)
        mine = {i.id: i for i in probe.wait_for("/cam1/instances", at(3)).instances}
        assert mine[started.object_id].camera == "cam1" and mine[started.object_id].concept == "mug"
        theirs = {i.id: i for i in probe.wait_for("/cam0/instances", at(3)).instances}
        assert theirs[clicked].camera == "cam0" and started.object_id not in theirs

        # camera 1 stops: the group goes on without it after rig_wait, counted
        node.set_parameters([Parameter("rig_wait", value=0.2)])
        probe.wait_until(lambda: node.run_in_worker(lambda: node._rig.grouper.wait_s, timeout=60) == 0.2, 60,
                         "rig_wait applied")
        send(4, 0)
        combined = probe.wait_for("/instances", at(4))
        assert combined.instances and {i.camera for i in combined.instances} == {"cam0"}
        assert node.stats.snapshot()["count_camera_missing_cam1"] == 1
        assert not any(at(4)(m) for m in probe.received("/cam1/instances"))
    finally:
        executor.shutdown(timeout_sec=0)
        node.destroy_node()
        rclpy.shutdown(context=context)
        spinner.join(timeout=60)
        probe.close()
