"""ConceptTracker's decisions, driven by a scripted session (tests/scripted_segmentation.py)."""
import tracemalloc

import numpy as np
import pytest

from perception_fm.errors import BadInputError
from perception_fm.pipelines.concept_tracker import (STATE_LOST, STATE_NEW, STATE_TRACKED, ConceptTracker,
                                                     TrackerConfig)
from perception_fm.pipelines.concepts import (ADD, REMOVE, SET, ConceptCommand, ConceptSet, format_concepts_message,
                                              parse_concepts_message)
from scripted_segmentation import FRAMES, ScriptedSession

def concepts_for(*texts):
    concept_set = ConceptSet(encode=lambda text: text)
    concept_set.add(texts)
    return concept_set


def run(tracker, concept_set, frames):
    return [tracker.step(FRAMES[i % len(FRAMES)].rgb, concept_set.snapshot()) for i in frames]


def published(outputs, instance_id=None):
    return [[(i.id, i.state) for i in out.instances] for out in outputs]


def test_one_object_gets_one_stable_id_after_the_confirmation_delay():
    session = ScriptedSession()
    tracker = ConceptTracker(session, TrackerConfig(confirmation_frames=15))
    outputs = run(tracker, concepts_for("red ball"), range(40))
    assert all(out.instances == [] for out in outputs[:15])  # hot-start: nothing published yet
    ids = {i.id for out in outputs[15:] for i in out.instances}
    assert ids == {1} and all(len(out.instances) == 1 for out in outputs[15:])
    assert outputs[15].instances[0].state == STATE_NEW
    assert all(out.instances[0].state == STATE_TRACKED for out in outputs[16:])
    instance = outputs[30].instances[0]
    np.testing.assert_array_equal(instance.mask.numpy() > 0.5, FRAMES[30].instances == 1)
    assert instance.concept == "red ball" and instance.age == 30 and instance.score == pytest.approx(0.9)


def test_every_instance_of_a_concept_gets_its_own_id():
    tracker = ConceptTracker(ScriptedSession(), TrackerConfig(confirmation_frames=2))
    outputs = run(tracker, concepts_for("red ball", "blue box", "purple ball"), range(10))
    final = {i.concept: i.id for i in outputs[-1].instances}
    assert set(final) == {"red ball", "blue box", "purple ball"} and len(set(final.values())) == 3


def test_flicker_is_never_published():
    flicker = np.zeros((96, 128), bool)
    flicker[5:15, 100:120] = True  # a false "red ball" on empty wall for three frames
    session = ScriptedSession(false_positives={f: [("red ball", flicker)] for f in (3, 4, 5)})
    tracker = ConceptTracker(session, TrackerConfig(confirmation_frames=15, max_unmatched_tentative=8))
    outputs = run(tracker, concepts_for("red ball"), range(40))
    assert {i.id for out in outputs for i in out.instances} == {1}
    assert outputs[3].started == [2]
    removed_at = next(n for n, out in enumerate(outputs) if 2 in out.removed)
    assert removed_at == 3 + 8  # the tracker sees nothing there: unmatched on frames 4..11


def test_short_occlusion_keeps_the_id_and_reports_lost():
    session = ScriptedSession(hidden={f: {1} for f in range(20, 30)})
    tracker = ConceptTracker(session, TrackerConfig(confirmation_frames=5, keep_alive=30))
    outputs = run(tracker, concepts_for("red ball"), range(45))
    states = [out.instances[0].state for out in outputs[20:30]]
    assert states == [STATE_LOST] * 10
    assert not outputs[25].instances[0].mask.any()
    assert {i.id for out in outputs[5:] for i in out.instances} == {1}
    assert outputs[35].instances[0].state == STATE_TRACKED


def test_long_absence_removes_the_track_and_a_return_gets_a_new_id():
    session = ScriptedSession(hidden={f: {1} for f in range(10, 30)})
    tracker = ConceptTracker(session, TrackerConfig(confirmation_frames=2, keep_alive=8))
    outputs = run(tracker, concepts_for("red ball"), range(40))
    removed_at = next(n for n, out in enumerate(outputs) if 1 in out.removed)
    assert removed_at == 10 + 7  # keep-alive 8 spent on frames 10..17
    assert ("remove_objects", [1]) in session.calls
    assert {i.id for out in outputs[33:] for i in out.instances} == {2}


def test_a_duplicate_track_is_removed_before_confirmation():
    part = np.zeros((96, 128), bool)
    ys, xs = np.nonzero(FRAMES[1].instances == 7)  # grey cabinet: a part of it, < 10 % of its area
    part[ys[:5], xs[:5]] = True
    session = ScriptedSession(false_positives={1: [("grey cabinet", part)]})
    tracker = ConceptTracker(session, TrackerConfig(confirmation_frames=15, duplicate_frames=8))
    outputs = run(tracker, concepts_for("grey cabinet"), range(30))
    assert outputs[1].started == [2]  # the part overlaps no track: a second track on the same cabinet
    removed_at = next(n for n, out in enumerate(outputs) if 2 in out.removed)
    assert removed_at == 1 + 8  # one detection matched both tracks on frames 2..9: the younger goes
    assert {i.id for out in outputs for i in out.instances} == {1}


def test_detector_cadence_and_reanchoring():
    session = ScriptedSession()
    tracker = ConceptTracker(session, TrackerConfig(detect_every=3, confirmation_frames=3, recondition_every=6))
    run(tracker, concepts_for("red ball"), range(24))
    detected = [call[1] for call in session.calls if call[0] == "detect"]
    assert detected == list(range(0, 24, 3))
    conditioned = [call[1] for call in session.calls if call[0] == "commit" and call[3]]
    assert conditioned == [6, 12, 18]  # confirmed, confident, overlapping: re-anchored on schedule


def test_removing_a_concept_drops_its_tracks_and_ids_are_never_reused():
    session = ScriptedSession()
    concept_set = concepts_for("red ball", "blue box")
    tracker = ConceptTracker(session, TrackerConfig(confirmation_frames=1))
    run(tracker, concept_set, range(3))
    removed = concept_set.remove(["red ball"])
    assert [c.prompt_id for c in removed] == [1]
    assert tracker.drop_concepts({1}) == [1]
    outputs = run(tracker, concept_set, range(3, 6))
    assert {i.concept for i in outputs[-1].instances} == {"blue box"}
    concept_set.add(["red ball"])
    assert concept_set.snapshot().keys() == {2, 3}  # re-added: a new prompt id
    outputs = run(tracker, concept_set, range(6, 9))
    assert {(i.concept, i.id) for i in outputs[-1].instances} == {("blue box", 2), ("red ball", 3)}


def test_no_concepts_no_detection_and_max_objects():
    session = ScriptedSession()
    tracker = ConceptTracker(session, TrackerConfig(confirmation_frames=0, max_objects=2))
    outputs = run(tracker, ConceptSet(encode=str), range(3))
    assert all(not out.detected and out.instances == [] for out in outputs)
    assert not [c for c in session.calls if c[0] == "detect"]
    outputs = run(tracker, concepts_for("red ball", "blue box", "purple ball", "orange box"), range(3, 5))
    assert len(tracker.tracks) == 2 and len(outputs[-1].instances) == 2


def test_click_or_box_prompt_starts_a_confirmed_track():
    session = ScriptedSession()
    tracker = ConceptTracker(session, TrackerConfig(confirmation_frames=10))
    with pytest.raises(ValueError):
        tracker.prompt(box=(0, 0, 5, 5))
    run(tracker, ConceptSet(encode=str), range(1))
    ys, xs = np.nonzero(FRAMES[0].instances == 4)
    obj_id = tracker.prompt(box=(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), concept="that can")
    outputs = run(tracker, ConceptSet(encode=str), range(1, 4))
    assert [(i.id, i.concept, i.state) for i in outputs[0].instances] == [(obj_id, "that can", STATE_NEW)]
    assert outputs[2].instances[0].state == STATE_TRACKED
    with pytest.raises(ValueError, match="no tracked object 99"):
        tracker.prompt(box=(0, 0, 1, 1), obj_id=99)


def test_tracker_state_stays_bounded_over_a_long_stream():
    # objects vanish and come back over and over: tracks are created and removed, state does not pile up
    hidden = {f: {1, 2} for f in range(2000) if (f // 30) % 2}
    session = ScriptedSession(hidden=hidden)
    tracker = ConceptTracker(session, TrackerConfig(confirmation_frames=2, keep_alive=5))
    concept_set = concepts_for("red ball", "blue box")
    created = removed = 0
    live, held_by_model = [], []
    tracemalloc.start()
    try:
        for n in range(600):
            out = tracker.step(FRAMES[n % len(FRAMES)].rgb, concept_set.snapshot())
            created, removed = created + len(out.started), removed + len(out.removed)
            live.append(len(tracker.tracks))
            assert created - removed == live[-1]  # what the frames report started and removed
            held_by_model.append(len(session.objects))  # objects the model's session still tracks
            if n == 299:
                halfway = tracemalloc.take_snapshot()
        end = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    assert created > 10 and max(live) <= 2 and max(held_by_model) <= 2
    # Python memory still held by the tracker's code: no growth over the second 300 frames (a list or dict
    # growing by one small entry per frame would add >= 300 * 56 bytes)
    mine = [tracemalloc.Filter(True, "*/pipelines/concept_tracker.py")]
    growth = sum(stat.size_diff for stat in end.filter_traces(mine).compare_to(halfway.filter_traces(mine),
                                                                               "filename"))
    assert growth < 4096, growth


def test_concept_set_validation_and_grammar():
    def encode(text):
        if len(text.split()) > 5:
            raise BadInputError("concept", "too long")
        return text

    concept_set = ConceptSet(encode)
    assert [c.prompt_id for c in concept_set.add(["Red  Mug", "chair", "red mug"])] == [1, 2, 1]
    with pytest.raises(BadInputError):
        concept_set.add(["fine", "a b c d e f"])
    assert sorted(c.text for c in concept_set.snapshot().values()) == ["chair", "red mug"]  # nothing added
    concept_set.set(["chair", "lamp"])
    assert {c.text: c.prompt_id for c in concept_set.snapshot().values()} == {"chair": 2, "lamp": 3}
    assert parse_concepts_message("red cup, -chair, ,lamp") == [
        ConceptCommand(ADD, ("red cup",)), ConceptCommand(REMOVE, ("chair",)), ConceptCommand(ADD, ("lamp",))]
    assert parse_concepts_message("=a, b") == [ConceptCommand(SET, ("a", "b"))]
    assert parse_concepts_message("=") == [ConceptCommand(SET, ())]
    for command in (ConceptCommand(SET, ("a", "b c")), ConceptCommand(REMOVE, ("chair",)),
                    ConceptCommand(ADD, ("red cup", "chair"))):
        commands = parse_concepts_message(format_concepts_message(command))
        assert [p for c in commands for p in c.phrases] == list(command.phrases)


def test_a_refused_prompt_takes_no_track_id_and_leaves_no_track():
    class FailingSession(ScriptedSession):
        def prompt_object(self, frame, obj_id, points, labels, box):
            if box is not None and box[0] == 1:
                raise BadInputError("prompt", "the model refused this prompt")
            if box is None:  # clicks: the scripted session segments boxes; take the clicks' bounding box
                box = (*np.floor(points.min(0)).astype(int), *np.floor(points.max(0)).astype(int) + 1)
            return super().prompt_object(frame, obj_id, points, labels, box)

    tracker = ConceptTracker(FailingSession(), TrackerConfig(confirmation_frames=0))
    run(tracker, ConceptSet(encode=str), range(1))  # 128 x 96 frames
    refused = [
        ("outside", dict(points=np.array([[-3.0, 10.0]]))), ("outside", dict(points=np.array([[10.0, 96.0]]))),
        ("outside", dict(box=(100, 50, 140, 60))), ("outside", dict(box=(-1, 0, 5, 5))),
        ("finite", dict(points=np.array([[np.nan, 1.0]]))), ("model refused", dict(box=(1, 1, 5, 5))),
        ("no tracked object 99", dict(box=(2, 2, 5, 5), obj_id=99)),
    ]
    for what, prompt in refused:
        with pytest.raises(BadInputError, match=what):
            tracker.prompt(**prompt)
    assert tracker.tracks == {}
    ys, xs = np.nonzero(FRAMES[0].instances == 4)
    assert tracker.prompt(box=(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)) == 1  # the first id, untaken
    assert tracker.prompt(points=np.array([[0.0, 0.0], [127.9, 95.9]])) == 2  # the image's extreme pixels
    outputs = run(tracker, ConceptSet(encode=str), range(1, 3))
    assert [i.id for i in outputs[-1].instances] == [1, 2]


def test_concept_messages_apply_in_order_and_summarise_in_one_line():
    def encode(text):
        if len(text) > 40:
            raise BadInputError("concept", f"concept {text[:20]!r}... is {len(text)} characters long; at most 40")
        return text

    concept_set = ConceptSet(encode, max_concepts=32)
    outcome = concept_set.apply_message("lamp, -chair, , Lamp")
    assert outcome.added == ["lamp"] and outcome.removed == [] and outcome.refused == []
    assert outcome.not_active == ["chair"]
    for text in ("", "  ", ",,,", "-", " - , ,"):
        assert concept_set.apply_message(text).empty
    assert sorted(c.text for c in concept_set.snapshot().values()) == ["lamp"]
    many = concept_set.apply_message("x" * 3333 + ", " + ", ".join(f"object {n}" for n in range(300)))
    assert len(many.added) == 31 and len(many.refused) == 270
    summary = many.summary()
    assert "\n" not in summary and len(summary) < 600
    assert "added 31" in summary and "refused 270" in summary and "at most 32" in summary and "3333" in summary
    assert len(concept_set) == 32
    cleared = concept_set.apply_message("=")
    assert len(concept_set) == 0 and len(cleared.removed) == 32 and not cleared.empty


# -- the reference's rules: re-anchoring one to one, gated; non-overlap in memory and outputs ---------------------


class PlannedSession:
    """A session whose answers each test plans: detect returns `detections` [(prompt_id, mask, score)], a track
    propagates `propagated[obj_id]` ((mask, score)) or else the mask it was started with; commits are recorded."""

    def __init__(self, detections):
        import torch

        self.torch = torch
        self.detections = detections
        self.propagated = {}
        self.objects = {}
        self.commits = []
        self.frame = -1

    def add_frame(self, image):
        self.frame += 1
        return self.frame

    def detect(self, frame, concepts):
        from perception_fm.tasks.segmentation import Detections

        torch = self.torch
        chosen = [(p, m, s) for p, m, s in self.detections if p in concepts]
        return Detections(masks=torch.stack([m for _, m, _ in chosen]) if chosen else torch.zeros(0, 16, 16),
                          boxes=torch.zeros(len(chosen), 4),
                          scores=torch.tensor([s for *_, s in chosen]),
                          prompt_ids=torch.tensor([p for p, *_ in chosen], dtype=torch.long))

    def propagate(self, frame):
        from perception_fm.tasks.segmentation import Propagation

        ids = sorted(self.objects)
        planned = [self.propagated.get(i, (self.objects[i], 0.95)) for i in ids]
        return Propagation(obj_ids=ids, masks=self.torch.stack([m for m, _ in planned]) if ids else
                           self.torch.zeros(0, 16, 16), scores=self.torch.tensor([s for _, s in planned]))

    def add_objects(self, frame, masks):
        self.objects.update({obj_id: mask.clone() for obj_id, mask in masks.items()})

    def commit(self, frame, masks, conditioning=()):
        self.commits.append((frame, {i: m.clone() for i, m in masks.items()}, sorted(conditioning)))

    def remove_objects(self, obj_ids):
        for obj_id in obj_ids:
            self.objects.pop(obj_id)


def square(y0, y1, x0, x1, value=1.0, size=16):
    import torch

    mask = torch.zeros(size, size)
    mask[y0:y1, x0:x1] = value
    return mask


def reference_tracker(session, **overrides):
    settings = dict(confirmation_frames=0, recondition_every=1)
    settings.update(overrides)
    return ConceptTracker(session, TrackerConfig(**settings))


def test_two_tracks_are_never_re_anchored_on_one_detection():
    """Two tracks drifted onto the same object, one detection of it: one re-anchors (before, both took it)."""
    session = PlannedSession([(1, square(0, 6, 0, 6), 0.9), (1, square(8, 14, 8, 14), 0.9)])
    tracker = reference_tracker(session, non_overlapping_outputs=False)
    concept_set = concepts_for("thing")
    first = tracker.step(FRAMES[0].rgb, concept_set.snapshot())
    assert first.started == [1, 2]
    drifted = square(0, 6, 0, 6, 0.97)
    session.propagated = {1: (drifted, 0.95), 2: (drifted, 0.95)}
    session.detections = [(1, square(0, 6, 0, 6, 0.99), 0.9)]
    frame = tracker.step(FRAMES[1].rgb, concept_set.snapshot())
    assert frame.reconditioned == [1]  # the first track the detection overlaps best (ties: the oldest)
    assert session.commits[-1][2] == [1]


def test_re_anchoring_is_one_to_one_on_random_scenes():
    """Random tracks and detections of two concepts: re-anchored tracks publish the detection's mask, and no two
    of them publish the same detection; every one was confident and overlapped it by the IoU gate."""
    import dataclasses

    import torch

    generator = torch.Generator().manual_seed(3)
    checked = 0
    for _ in range(40):
        starts = [(int(p), (torch.rand(16, 16, generator=generator) > 0.5).float(), 0.9)
                  for p in torch.randint(1, 3, (6,), generator=generator)]
        session = PlannedSession(starts)
        tracker = reference_tracker(session, non_overlapping_outputs=False, recondition_iou=0.5, new_track_score=0.0,
                                    association_iou=1.01)  # every start detection starts a track
        concept_set = concepts_for("a", "b")
        tracker.step(FRAMES[0].rgb, concept_set.snapshot())
        tracker.config = dataclasses.replace(tracker.config, association_iou=0.1)
        # tracks drift onto each other's masks; detections are noisy copies of a few of them
        ids = sorted(session.objects)
        session.propagated = {i: (session.objects[ids[int(torch.randint(0, len(ids), (1,), generator=generator))]],
                                  0.95) for i in ids}
        session.detections = []
        for i in torch.randint(0, len(ids), (5,), generator=generator).tolist():
            noisy = session.objects[ids[i]].clone()
            noisy[torch.rand(16, 16, generator=generator) < 0.05] = 0.0
            session.detections.append((tracker.tracks[ids[i]].prompt_id, noisy, 0.85))
        frame = tracker.step(FRAMES[1].rgb, concept_set.snapshot())
        used = []
        for instance in frame.instances:
            if instance.id in frame.reconditioned:
                matches = [d for d, (_, mask, _) in enumerate(session.detections) if torch.equal(mask, instance.mask)]
                assert matches, "a re-anchored track publishes its detection's mask"
                used.append(matches[0])
        assert len(used) == len(set(used)) == len(frame.reconditioned)
        checked += len(used)
    assert checked > 20


def test_re_anchoring_needs_a_confident_tracker():
    """The reference gates on the tracker's object score (logit > 0.8, i.e. probability > 0.69)."""
    for tracker_score, anchored in ((0.6, []), (0.75, [1])):
        session = PlannedSession([(1, square(0, 6, 0, 6), 0.9)])
        tracker = reference_tracker(session)
        concept_set = concepts_for("thing")
        tracker.step(FRAMES[0].rgb, concept_set.snapshot())
        session.propagated = {1: (square(0, 6, 0, 6, 0.9), tracker_score)}
        assert tracker.step(FRAMES[1].rgb, concept_set.snapshot()).reconditioned == anchored


def test_re_anchoring_writes_the_trackers_mask_and_publishes_the_detections():
    import torch

    for source in ("tracker", "detection"):
        session = PlannedSession([(1, square(0, 6, 0, 6), 0.9)])
        tracker = reference_tracker(session, recondition_on=source)
        concept_set = concepts_for("thing")
        tracker.step(FRAMES[0].rgb, concept_set.snapshot())
        tracked = square(0, 6, 0, 5, 0.8)
        detected = square(0, 6, 0, 6, 0.7)
        session.propagated = {1: (tracked, 0.95)}
        session.detections = [(1, detected, 0.9)]
        frame = tracker.step(FRAMES[1].rgb, concept_set.snapshot())
        _, committed, conditioning = session.commits[-1]
        assert conditioning == [1] and frame.reconditioned == [1]
        expected = tracked if source == "tracker" else (detected > 0.5).float()
        assert torch.equal(committed[1], expected)
        assert torch.equal(frame.instances[0].mask, detected)


def test_one_concepts_masks_are_disjoint_and_shrunk_ones_leave_memory():
    """Outputs: a pixel claimed by two tracks of one concept goes to the higher tracker score; another concept's
    mask may overlap. Memory: a track keeping < 30 % of its area under the pixel-wise non-overlap (highest
    probability wins) is blanked for this frame's memory; the others are committed unchanged."""
    import torch

    from perception_fm.pipelines.concept_tracker import SUPPRESSED_PROBABILITY

    session = PlannedSession([(1, square(0, 8, 0, 8), 0.9), (1, square(8, 16, 8, 16), 0.9),
                              (2, square(0, 4, 12, 16), 0.9)])
    tracker = reference_tracker(session, recondition_every=0)
    concept_set = concepts_for("a", "b")
    tracker.step(FRAMES[0].rgb, concept_set.snapshot())
    big, small, other = square(0, 10, 0, 10, 0.9), square(2, 12, 2, 8, 0.8), square(0, 10, 0, 10, 0.95)
    session.propagated = {1: (big, 0.9), 2: (small, 0.95), 3: (other, 0.7)}
    frame = tracker.step(FRAMES[1].rgb, concept_set.snapshot())
    masks = {i.id: i.mask > 0.5 for i in frame.instances}
    assert not (masks[1] & masks[2]).any()  # one concept: disjoint
    assert masks[2].sum() == (small > 0.5).sum()  # track 2 has the higher tracker score: keeps all its pixels
    assert (masks[1] | masks[2]).sum() == ((big > 0.5) | (small > 0.5)).sum()  # nothing lost
    assert (masks[3] & masks[1]).any()  # other concept: may overlap
    _, committed, _ = session.commits[-1]
    # under the pixel-wise rule track 2 keeps only rows 10-11 of its 60 pixels (12 < 30 %): blanked
    assert (committed[2] <= SUPPRESSED_PROBABILITY).all()
    assert torch.equal(committed[1], big) and torch.equal(committed[3], other)


def test_of_two_tracks_on_one_object_the_later_occluded_gives_way():
    """The reference's occlusion rule: tracks 1 and 2 (one concept) drift onto the same pixels; 2 was occluded
    (empty) on frame 2, 1 on frame 1: from frame 3 on, 2 is suppressed (published lost, blank in memory) while
    1 keeps its mask; a third track of another concept on the same pixels is left alone."""
    import torch

    from perception_fm.pipelines.concept_tracker import SUPPRESSED_PROBABILITY

    session = PlannedSession([(1, square(0, 5, 0, 5), 0.9), (1, square(10, 15, 10, 15), 0.9),
                              (2, square(0, 5, 10, 15), 0.9)])
    tracker = reference_tracker(session, recondition_every=0)
    concept_set = concepts_for("a", "b")
    tracker.step(FRAMES[0].rgb, concept_set.snapshot())
    session.detections = []
    same = square(4, 12, 4, 12, 0.9)
    empty = square(0, 0, 0, 0)
    for frame, (first, second) in enumerate([(empty, same), (same, empty), (same, same), (same, same)], start=1):
        session.propagated = {1: (first, 0.9), 2: (second, 0.9), 3: (same, 0.9)}
        out = tracker.step(FRAMES[frame].rgb, concept_set.snapshot())
    published = {i.id: i for i in out.instances}
    assert published[2].state == STATE_LOST and not published[2].mask.any()
    assert torch.equal(published[1].mask > 0.5, same > 0.5) and torch.equal(published[3].mask, same)
    _, committed, _ = session.commits[-1]
    assert (committed[2] <= SUPPRESSED_PROBABILITY).all() and torch.equal(committed[1], same)
    assert tracker.tracks[2].last_occluded == 4 and tracker.tracks[1].last_occluded == 1


def test_of_two_detections_claiming_one_track_the_better_overlap_re_anchors_it():
    import torch

    session = PlannedSession([(1, square(0, 8, 0, 8), 0.9)])
    tracker = reference_tracker(session, non_overlapping_outputs=False, recondition_iou=0.5)
    concept_set = concepts_for("thing")
    tracker.step(FRAMES[0].rgb, concept_set.snapshot())
    close, closer = square(0, 8, 0, 6), square(0, 8, 0, 7)  # IoU 0.75 and 0.875 with the track
    for detections in ([(1, close, 0.95), (1, closer, 0.85)], [(1, closer, 0.85), (1, close, 0.95)]):
        session.detections = detections
        frame = tracker.step(FRAMES[1].rgb, concept_set.snapshot())
        assert frame.reconditioned == [1] and torch.equal(frame.instances[0].mask, closer)


def test_with_no_track_at_all_every_detection_starts_one_as_the_reference_does():
    """new_track_score gates new tracks only while some track exists; on a frame with none, the detector's own
    threshold is the only gate (SAM 3's reference: "all detections are new" when there is no masklet)."""
    from scripted_segmentation import LABELS

    box = next(instance for instance, label in LABELS.items() if label == "blue box")
    session = ScriptedSession(score=0.6, hidden={f: {box} for f in range(3)})  # the box shows from frame 3 on
    tracker = ConceptTracker(session, TrackerConfig(confirmation_frames=0, new_track_score=0.7))
    outputs = run(tracker, concepts_for("red ball", "blue box"), range(8))
    assert outputs[0].started == [1]  # 0.6 < new_track_score, but there was no track: the ball starts one
    assert {i.concept for i in outputs[-1].instances} == {"red ball"}  # the 0.6 box never does: a track exists
    assert all(out.started == [] for out in outputs[1:])
