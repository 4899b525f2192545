"""Body meshes on our side: people selection, One Euro smoothing per track, messages, markers, TF.
The model is a stand-in (tests/scripted_meshes.py): SAM 3D Body needs CUDA, weights and the MHR asset."""
import numpy as np
import pytest
from rclpy.serialization import deserialize_message
from visualization_msgs.msg import MarkerArray

from perception_fm.graph import NodeConfig
from perception_fm.msg import Instance, InstanceArray
from perception_fm.pipelines.body_tracking import BodyConfig, BodyTracker, OneEuroFilter, pack, unpack
from perception_fm.ros import body_io as io
from perception_fm.ros.tf import ns_to_time, transform_to_matrix
from scripted_meshes import StickBodyModel

IMAGE = np.zeros((240, 320, 3), np.uint8)


def person(track_id, box, concept="person", state=1):
    instance = Instance(id=track_id, concept=concept, state=state)
    instance.box.x_offset, instance.box.y_offset, instance.box.width, instance.box.height = box
    return instance


def array(people, stamp_ns=10**9):
    message = InstanceArray(height=240, width=320, instances=people)
    message.header.stamp = ns_to_time(stamp_ns)
    message.header.frame_id = "camera"
    return message


def values(**overrides):
    return NodeConfig("body_node", "body_node", parameters=overrides).resolved_parameters()


def test_one_euro_filter_smooths_noise_and_follows_motion():
    rng = np.random.default_rng(0)
    times = np.arange(200) / 30.0
    filt = OneEuroFilter(min_cutoff=1.0, beta=0.0)
    noisy = 1.0 + 0.05 * rng.normal(size=(200, 3))
    out = np.array([filt(x, t) for x, t in zip(noisy, times)])
    assert out[50:].std(axis=0).max() < 0.4 * noisy[50:].std(axis=0).min()  # jitter at rest is damped
    assert np.abs(out[100:].mean(axis=0) - 1.0).max() < 0.02  # without bias
    # a step: plain low-pass lags; a speed-adaptive cutoff (beta) catches up faster
    step = np.where(times[:, None] < 3.0, 0.0, 1.0) * np.ones(3)
    slow, fast = OneEuroFilter(1.0, 0.0), OneEuroFilter(1.0, 5.0)
    lag_slow = [slow(x, t) for x, t in zip(step, times)][95][0]
    lag_fast = [fast(x, t) for x, t in zip(step, times)][95][0]
    assert lag_fast > lag_slow and lag_fast > 0.9
    assert np.array_equal(OneEuroFilter()(np.ones(2), 0.0), np.ones(2))  # first sample passes through


def test_people_are_selected_by_concept_state_size_and_count():
    tracker = BodyTracker(StickBodyModel(), BodyConfig(max_people=2, min_box_area=100))
    people = tracker.people([person(1, (0, 0, 50, 100)), person(2, (0, 0, 5, 5)), person(3, (0, 0, 80, 120)),
                             person(4, (0, 0, 60, 100), concept="chair"), person(5, (0, 0, 90, 150), state=2),
                             person(6, (0, 0, 40, 80))])
    assert [p.id for p in people] == [3, 1]  # biggest first, at most two


def test_smoothing_is_per_track_and_forgets_unseen_tracks():
    model = StickBodyModel()
    tracker = BodyTracker(model, BodyConfig(forget_after_s=1.0, min_box_area=1))
    first = tracker.step(IMAGE, [person(1, (100, 50, 40, 120))], None, None, 0.0)
    assert not first[0].smoothed
    # the box jumps: the raw estimate jumps, the smoothed one moves part way
    moved = tracker.step(IMAGE, [person(1, (140, 50, 40, 120))], None, None, 1 / 30)
    raw = model.estimate(type("R", (), {"boxes": np.array([[140, 50, 180, 170]]), "image": IMAGE})())[0]
    assert moved[0].smoothed
    x_before, x_raw, x_smooth = first[0].estimate.camera_translation[0], raw.camera_translation[0], \
        moved[0].estimate.camera_translation[0]
    assert x_before < x_smooth < x_raw
    # the posed mesh follows the smoothed parameters (not the raw ones)
    vertices, joints = model.pose_from_params(moved[0].estimate.params, moved[0].estimate.camera_translation)
    np.testing.assert_allclose(moved[0].estimate.joints, joints)
    tracker.step(IMAGE, [person(2, (10, 10, 40, 120))], None, None, 3.0)
    assert set(tracker.filters) == {2}  # track 1 unseen for 3 s: forgotten


def test_parameter_packing_round_trips():
    params = {"global_rot": np.arange(3, dtype=np.float32), "body_pose": np.ones((2, 2), np.float32)}
    vector, layout = pack(params, np.array([1.0, 2.0, 3.0]))
    back, translation = unpack(vector, layout)
    assert back.keys() == params.keys() and np.array_equal(back["body_pose"], params["body_pose"])
    np.testing.assert_array_equal(translation, [1, 2, 3])


def test_messages_markers_and_tf():
    handler = io.BodyFrameHandler(StickBodyModel(), values(min_box_area=1, marker_max_faces=24))
    persons, messages = handler.handle(array([person(5, (100, 50, 40, 120)), person(6, (200, 60, 30, 100))]),
                                       IMAGE, None)
    assert [b.track_id for b in messages.bodies] == [5, 6]
    body = messages.bodies[0]
    assert list(body.param_names) == ["global_rot", "body_pose", "shape"] and list(body.param_sizes) == [3, 2, 2]
    assert body.header.frame_id == "camera" and len(body.joints) == 5 and list(body.joint_names)[0] == "pelvis"
    assert len(body.keypoints_2d) == 6 and body.joints[0].z == pytest.approx(3.0)
    markers = deserialize_message(messages.markers, MarkerArray).markers
    by_person = markers_by_person(apply_markers({}, markers))
    assert sorted(by_person) == [5, 6]
    assert all(sorted(shown) == ["body_bones", "body_joints", "body_labels", "body_mesh"]
               for shown in by_person.values())
    assert 0 < len(by_person[5]["body_mesh"].points) <= 3 * 24  # decimated once, from 60 faces
    assert len(by_person[5]["body_bones"].points) == 2 * 4  # four bones of five joints
    [tf5, tf6] = messages.transforms
    assert tf5.child_frame_id == "person_5" and tf5.header.frame_id == "camera"
    np.testing.assert_allclose(transform_to_matrix(tf5.transform)[:3, 3], persons[0].estimate.joints[0], atol=1e-6)
    np.testing.assert_allclose(transform_to_matrix(tf5.transform)[:3, :3], StickBodyModel.ROOT_ROTATION, atol=1e-9)


def apply_markers(shown: dict, markers) -> dict:
    """What RViz displays after a MarkerArray: markers keyed by (ns, id); DELETEALL clears, DELETE removes."""
    shown = dict(shown)
    for marker in markers:
        if marker.action == marker.DELETEALL:
            shown = {key: m for key, m in shown.items() if marker.ns and key[0] != marker.ns}
        elif marker.action == marker.DELETE:
            shown.pop((marker.ns, marker.id), None)
        else:
            shown[(marker.ns, marker.id)] = marker
    return shown


def markers_by_person(shown: dict) -> dict[int, dict[str, object]]:
    """The displayed markers grouped by the person they draw (the label says whom; a person's other markers
    are told by colour, as a viewer tells them), as {track id: {ns: marker}}."""
    colour = lambda m: (round(m.color.r, 4), round(m.color.g, 4), round(m.color.b, 4))  # noqa: E731
    owner = {colour(m): int(m.text.split()[-1]) for m in shown.values() if m.ns == "body_labels"}
    grouped: dict[int, dict[str, object]] = {}
    for m in shown.values():
        track = owner[colour(m)] if m.ns != "body_joints" else None
        if track is None:  # the joints are white: theirs is the person whose bones they end
            track = next(owner[colour(b)] for b in shown.values() if b.ns == "body_bones"
                         and {(p.x, p.y, p.z) for p in b.points} <= {(p.x, p.y, p.z) for p in m.points})
        assert m.ns not in grouped.setdefault(track, {}), f"two {m.ns} markers for person {track}"
        grouped[track][m.ns] = m
    return grouped


def test_marker_ids_are_unique_stable_per_track_and_vanished_tracks_disappear():
    """Properties, not the numbering scheme: RViz replaces a marker with the same (ns, id), so two people must
    never share one, a person keeps theirs from frame to frame (whoever else is in view, in any order), and a
    person who left is no longer drawn."""
    handler = io.BodyFrameHandler(StickBodyModel(), values(min_box_area=1))
    boxes = {5: (100, 50, 40, 120), 6: (200, 60, 30, 100), 7: (20, 40, 50, 150)}

    def frame(ids, stamp_ns):
        _, messages = handler.handle(array([person(i, boxes[i]) for i in ids], stamp_ns), IMAGE, None)
        return deserialize_message(messages.markers, MarkerArray).markers

    keys = {}  # track -> the (ns, id) keys of its markers
    shown = {}
    for step, ids in enumerate([(5, 6), (6, 5, 7), (7, 6), (6,)]):
        markers = frame(ids, (step + 1) * 10**9)
        added = [(m.ns, m.id) for m in markers if m.action == m.ADD]
        assert len(added) == len(set(added)) == 4 * len(ids)  # unique within a message
        shown = apply_markers(shown, markers)
        by_person = markers_by_person(shown)
        assert sorted(by_person) == sorted(ids)  # vanished tracks are no longer displayed
        for track, markers_of_track in by_person.items():
            now = {(m.ns, m.id) for m in markers_of_track.values()}
            assert keys.setdefault(track, now) == now, f"person {track} changed marker ids"
    # and no two people ever used the same key
    all_keys = [key for track_keys in keys.values() for key in track_keys]
    assert len(all_keys) == len(set(all_keys)) == 4 * 3


def test_nobody_means_no_model_call():
    class Counting(StickBodyModel):
        calls = 0

        def estimate(self, request):
            Counting.calls += 1
            return super().estimate(request)

    handler = io.BodyFrameHandler(Counting(), values())
    persons, messages = handler.handle(array([person(1, (0, 0, 50, 100), concept="chair")]), IMAGE, None)
    assert persons == [] and Counting.calls == 0
