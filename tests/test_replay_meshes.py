"""Offline replay of the mesh nodes: concept_node's tracked instances feed object_mesh_node and body_node in one
graph, with the stand-in models of tests/scripted_meshes.py (SAM 3D needs CUDA and weights) and the scripted
segmentation model (random weights cannot produce meaningful masks)."""
import numpy as np
import pytest
import yaml
from visualization_msgs.msg import MarkerArray

import scripted_meshes
from perception_fm.geometry.camera import pixel_rays
from perception_fm.graph import load_graph
from perception_fm.hookspecs import Task
from perception_fm.plugin_manager import default_manager
from perception_fm.replay.bag_io import BagReader
from perception_fm.replay.runner import ReplayError, replay
from perception_fm.replay.synthetic import TOPICS, camera_to_world, stamp_ns, write_sample_bag
from perception_fm.ros.tf import stamp_to_ns, transform_to_matrix
from scripted_segmentation import FRAMES, LABELS, SAMPLE, use_in_default_manager

CONCEPT_IDS = {concept: instance for instance, concept in LABELS.items()}


@pytest.fixture(scope="module", autouse=True)
def stand_in_models():
    use_in_default_manager()
    manager = default_manager()
    if "scripted-objects" not in {entry.spec.name for entry in manager.models(Task.OBJECT_MESH)}:
        manager.register(scripted_meshes, name="scripted-meshes")


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("meshes") / "bag"
    write_sample_bag(path, SAMPLE)
    return path


NODES = {
    # listed before their producer on purpose: the replay orders producers first
    "object_mesh_node": {
        "remappings": {"image": TOPICS["image"], "camera_info": TOPICS["camera_info"], "instances": "/instances",
                       "depth/image": TOPICS["depth"], "depth/camera_info": TOPICS["camera_info"]},
        "parameters": {"model": "scripted-objects", "use_depth": True, "fixed_frame": "odom",
                       "concepts": "grey cabinet, green cylinder", "min_mask_area": 50}},
    "body_node": {
        "remappings": {"image": TOPICS["image"], "camera_info": TOPICS["camera_info"], "instances": "/instances"},
        "parameters": {"model": "scripted-body", "person_concepts": "red ball", "min_box_area": 16}},
    "concept_node": {
        "remappings": {"image": TOPICS["image"]},
        "parameters": {"model": "scripted-segmentation", "concepts": "red ball, grey cabinet, green cylinder",
                       "confirmation_frames": 1, "publish_overlay": False}},
}


def graph(tmp_path, nodes):
    path = tmp_path / "graph.yaml"
    path.write_text(yaml.safe_dump({"nodes": nodes}))
    return load_graph(path)


def read(path):
    with BagReader(path) as reader:
        return [(m.topic, m.timestamp_ns, m.message) for m in reader.messages()]


@pytest.fixture(scope="module")
def replayed(bag, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "bag"
    report = replay(bag, graph(out.parent, NODES), out, progress=False)
    return report, read(out)


def frame_index(stamp) -> int:
    return [stamp_ns(SAMPLE, i) for i in range(SAMPLE.frames)].index(stamp_to_ns(stamp))


def test_objects_are_lifted_once_per_track_and_placed_in_odom_from_the_bag_tf(replayed):
    report, messages = replayed
    node = next(n for n in report.nodes if n["node"] == "object_mesh_node")
    assert node["dropped"] == {} and node["errors"] == [] and "no_image_for_instances" not in node["events"]
    assert "no_depth" not in node["events"] and "no_fixed_frame_tf" not in node["events"]
    objects = [m for topic, _, m in messages if topic == "/objects"]
    assert {o.concept for o in objects} == {"green cylinder", "grey cabinet"}
    lifts = {}  # id -> frames it was lifted at: once when confirmed, again when the view changed its mask
    for lifted in objects:
        lifts.setdefault(lifted.id, []).append(frame_index(lifted.header.stamp))
    assert len(lifts) == 2 and all(np.diff(frames).min(initial=30) >= 30 for frames in lifts.values())
    for lifted in objects:
        index = frame_index(lifted.header.stamp)
        assert lifted.header.frame_id == "odom" and lifted.used_pointmap and lifted.inference_ms == 0.0
        # what the stand-in computes from the pointmap (median of the masked points, camera frame), placed
        # with the sample's ground-truth camera pose: the replay's pointmap and TF must give exactly this
        frame = FRAMES[index]
        mask = frame.instances == CONCEPT_IDS[lifted.concept]
        points = (pixel_rays(SAMPLE.height, SAMPLE.width, frame.K) * frame.depth[..., None])[mask]
        expected = camera_to_world(SAMPLE, index) @ np.append(np.median(points, axis=0), 1.0)
        position = lifted.pose.position
        np.testing.assert_allclose([position.x, position.y, position.z], expected[:3], atol=1e-4)
    static = [t for topic, _, m in messages if topic == "/tf_static" for t in m.transforms]
    frames = {t.child_frame_id: t for t in static if t.child_frame_id.startswith("object_")}  # the newest
    assert {f"object_{o.id}" for o in objects} == set(frames)
    newest = {o.id: o for o in objects}
    for lifted in newest.values():
        transform = frames[f"object_{lifted.id}"]
        assert transform.header.frame_id == "odom"
        np.testing.assert_allclose(transform_to_matrix(transform.transform)[:3, 3],
                                   [lifted.pose.position.x, lifted.pose.position.y, lifted.pose.position.z])
    markers = [m for topic, _, m in messages if topic == "/objects/markers"]
    assert len(markers) == len(objects) and isinstance(markers[-1], MarkerArray)  # one per lift, every object
    assert {m.header.frame_id for m in markers[-1].markers if m.ns == "objects"} == set(frames)


def test_bodies_follow_the_person_track_on_every_frame_it_is_seen(replayed):
    report, messages = replayed
    node = next(n for n in report.nodes if n["node"] == "body_node")
    assert node["dropped"] == {} and node["errors"] == []
    arrays = {stamp_to_ns(m.header.stamp): m for topic, _, m in messages if topic == "/instances"}
    people = {stamp: [i for i in array.instances if i.concept == "red ball" and i.state in (0, 1)]
              for stamp, array in arrays.items()}
    bodies = [(log, m) for topic, log, m in messages if topic == "/bodies"]
    with_people = sorted(stamp for stamp, found in people.items() if found)
    assert len(with_people) >= SAMPLE.frames // 2
    assert sorted(stamp_to_ns(m.header.stamp) for _, m in bodies) == with_people
    for log_time, body in bodies:  # written at the log time of the image the instances came from
        stamp = stamp_to_ns(body.header.stamp)
        assert log_time == stamp and body.header.frame_id == SAMPLE.camera_frame
        assert body.track_id == people[stamp][0].id
    person_frames = {t.child_frame_id for topic, _, m in messages if topic == "/tf" for t in m.transforms
                     if t.child_frame_id.startswith("person_")}
    assert person_frames == {f"person_{m.track_id}" for _, m in bodies}
    assert sum(topic == "/bodies/markers" for topic, _, _ in messages) == len(bodies)


def test_mesh_replay_is_deterministic(bag, replayed, tmp_path):
    _, first = replayed
    replay(bag, graph(tmp_path, NODES), tmp_path / "again", progress=False)
    second = read(tmp_path / "again")
    # messages with equal log times may come back in either order; compare messages, not CDR bytes (serialisers
    # leave alignment padding uninitialised)
    runs = [sorted(run, key=lambda item: (item[0], item[1], repr(item[2]))) for run in (first, second)]
    assert len(runs[0]) == len(runs[1]) and runs[0] == runs[1]


def test_instances_nobody_provides_are_a_clear_error(bag, tmp_path):
    with pytest.raises(ReplayError, match="'/instances'.*neither the bag nor a node"):
        replay(bag, graph(tmp_path, {"body_node": NODES["body_node"]}), tmp_path / "out", progress=False)
