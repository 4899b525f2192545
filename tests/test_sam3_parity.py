"""SAM 3 against the reference: transformers' own streaming path (Sam3VideoModel.forward, one frame at a time, and
Sam3VideoProcessor's post-processing) on the same tiny random weights, on a synthetic video and a real
photograph panned into a video. Our ConceptTracker + Sam3TrackingSession, set to the reference's policy, must give
the reference's masks to 1e-3 in probability on every frame and its post-processed (non-overlapping) binary masks,
with the same objects re-anchored.

Set to the reference's policy means: streaming transformers never removes or hides a track (its hot-start and
keep-alive only run offline), so our hot-start and keep-alive are disabled here; both sides get the same score
thresholds ("detected", and a higher "may start a track" that, on both sides, gates only frames where some track
exists: on frame 0 every detection starts one); hole filling and NMS are off (transformers skips both on
CPU: they need a hub-downloaded CUDA kernel); and two transformers-only steps are made Meta's (see
add_new_objects_meta below): new objects' masks binarised at logits > 0, not ">= 0.5" on logits (see
perception_fm/plugins/sam3/session.py), and adding objects leaves the memory of the others alone. Everything
else is the reference's rule as shipped: per-concept non-overlap and the 30 % shrink rule before memory, the
suppression of the more recently occluded of two overlapping tracks, re-conditioning one detection per track
gated on the tracker's score, on the tracker's own mask, object-wise non-overlap of the outputs by tracker score.
"""
import math

import numpy as np
import pytest
import torch
from sam3_tiny import save_tiny_sam3

from perception_fm.hookspecs import ModelOptions, Task
from perception_fm.pipelines.concept_tracker import ConceptTracker, TrackerConfig, mask_iou
from perception_fm.pipelines.concepts import ConceptSet
from perception_fm.plugin_manager import PluginManager

IMAGE = 112  # the tiny model's input side; masks are 32 x 32
TOLERANCE = 1e-3  # |probability| difference allowed


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_sam3(tmp_path_factory.mktemp("sam3-parity"))


def create(checkpoint, **extra):
    return PluginManager(entry_points=False).create(
        Task.SEGMENTATION, "sam3", ModelOptions(weights=str(checkpoint), device="cpu", extra=extra))


def synthetic_video(count: int) -> list[np.ndarray]:
    """Coloured shapes moving on a grey background (96 x 128: the model enlarges it)."""
    height, width = 96, 128
    yy, xx = np.mgrid[:height, :width]
    frames = []
    for t in range(count):
        image = np.full((height, width, 3), 90, np.uint8)
        image[10 + t:40 + t, 15 + 3 * t:45 + 3 * t] = (220, 40, 40)
        image[(yy - 60) ** 2 + (xx - (90 - 2 * t)) ** 2 < 14 ** 2] = (40, 200, 60)
        image[55:80, 20:35] = (40, 40, 200)
        frames.append(image)
    return frames


def photograph() -> np.ndarray | None:
    """A real photograph an installed package ships (matplotlib's sample portrait of Grace Hopper)."""
    try:
        import cv2
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
            data = np.frombuffer(handle.read(), np.uint8)
    except (ImportError, OSError, FileNotFoundError):
        return None
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def photo_video(count: int) -> list[np.ndarray]:
    """The photograph panned and zoomed (a moving camera), 300 x 400 crops: the model shrinks them."""
    photo = photograph()
    if photo is None:
        pytest.skip("no real photograph installed (matplotlib's sample data)")
    return [np.ascontiguousarray(photo[20 + 4 * t:320 + 4 * t, 10 + 7 * t:410 + 7 * t]) for t in range(count)]


class Recorder:
    """Our session, recording what the tracker saw (the propagation and the detections of each frame)."""

    def __init__(self, session):
        self.session = session
        self.propagation = self.detections = None
        self.added = {}

    def __getattr__(self, name):
        return getattr(self.session, name)

    def add_frame(self, image):
        self.propagation, self.detections, self.added = None, None, {}
        return self.session.add_frame(image)

    def detect(self, frame, concepts):
        self.detections = self.session.detect(frame, concepts)
        return self.detections

    def propagate(self, frame):
        self.propagation = self.session.propagate(frame)
        return self.propagation

    def add_objects(self, frame, masks):
        self.added = dict(masks)
        return self.session.add_objects(frame, masks)


def reference_postprocess(session, output, mask_size, relabel):
    """transformers' Sam3VideoProcessor.postprocess_outputs at mask resolution (bilinear to the same size is
    the identity), on the reference's masks renumbered with our ids (`relabel`: theirs -> ours): the processor
    gives a pixel claimed twice to the higher tracker score and, on a tie, to the lower id, and the two sides
    number the objects a frame starts in different orders (we by score, transformers by query). Called without
    constructing the processor (its constructor needs torchvision, which only provides the boxes here)."""
    import types

    import transformers.models.sam3_video.processing_sam3_video as processing

    processor_class = vars(processing)["Sam3VideoProcessor"]  # the module's attribute access demands torchvision
    if "masks_to_boxes" not in vars(processing):
        def masks_to_boxes(masks):  # boxes are not compared
            return torch.zeros(masks.shape[0], 4)

        processing.masks_to_boxes = masks_to_boxes
    renamed = types.SimpleNamespace(
        video_height=None, video_width=None, prompts=session.prompts, hotstart_removed_obj_ids=set(),
        obj_id_to_prompt_id={relabel[k]: v for k, v in session.obj_id_to_prompt_id.items() if k in relabel})
    outputs = {
        "obj_id_to_mask": {relabel[k]: v for k, v in output.obj_id_to_mask.items()},
        "obj_id_to_score": {relabel[k]: v for k, v in output.obj_id_to_score.items() if k in relabel},
        "obj_id_to_tracker_score": {relabel[k]: v for k, v in output.obj_id_to_tracker_score.items()
                                    if k in relabel},
        "suppressed_obj_ids": {relabel[k] for k in output.suppressed_obj_ids},
    }
    processor = object.__new__(processor_class)
    result = processor.postprocess_outputs(renamed, outputs, original_sizes=[list(mask_size)])
    return dict(zip(result["object_ids"].tolist(), result["masks"]))


def make_tracker(session, threshold, anchor_iou, recondition_every, new_track_score):
    """Our tracker with the reference's streaming policy (see the module docstring)."""
    never = 10**6
    return ConceptTracker(session, TrackerConfig(
        confirmation_frames=0, max_unmatched_tentative=never, duplicate_frames=never, keep_alive=never,
        new_track_score=new_track_score, recondition_every=recondition_every, recondition_score=threshold,
        recondition_iou=anchor_iou, recondition_tracker_score=1.0 / (1.0 + math.exp(-threshold))))


def choose_thresholds(checkpoint, frames, concepts, detections_per_frame):
    """Thresholds that make these random weights exercise every rule: the detection score of the n-th best
    detection on frame 0; a frame to re-anchor on (the only one: in the second half of the video) and a
    re-anchoring IoU between the best and second-best detection-track IoU there. Random weights make every
    track's mask alike, so several detections would claim one track, and one detection several tracks equally;
    the reference then decides by its query order and its object numbering, which ours (by score) does not
    follow. With one detection above the IoU gate and one track clearly best for it, the assignment is the same
    by any rule."""
    model = create(checkpoint, score_threshold=0.0, nms_iou=0.0, fill_hole_area=0)
    probe = model.new_session()
    probe.add_frame(frames[0])
    scores = probe.detect(0, {i + 1: model.encode_concept(text) for i, text in enumerate(concepts)}).scores
    ranked = scores.sort(descending=True).values
    threshold = float(ranked[detections_per_frame - 1]) - 1e-6
    new_track_score = float(ranked[1] + ranked[2]) / 2  # frame 0's 3rd-5th detections start tracks only by the
    # no-track rule
    model = create(checkpoint, score_threshold=threshold, nms_iou=0.0, fill_hole_area=0)
    concept_set = ConceptSet(model.encode_concept)
    concept_set.add(concepts)
    recorder = Recorder(model.new_session())
    tracker = make_tracker(recorder, threshold, 1.0, recondition_every=0, new_track_score=new_track_score)
    for t, image in enumerate(frames):
        tracker.step(image, concept_set.snapshot())
        if 2 * t < len(frames) or recorder.propagation is None or len(recorder.detections) == 0:
            continue
        iou = mask_iou(recorder.detections.masks > 0.5, recorder.propagation.masks > 0.5)
        same = recorder.detections.prompt_ids[:, None] == torch.tensor(
            [tracker.tracks[i].prompt_id for i in recorder.propagation.obj_ids])[None, :]
        iou = torch.where(same, iou, 0.0)
        best = iou.amax(1).sort(descending=True)
        tracks = iou[best.indices[0]].sort(descending=True).values
        if best.values[0] - best.values[1] > 1e-4 and tracks[0] - tracks[1] > 1e-4:
            return threshold, new_track_score, float(best.values[0] + best.values[1]) / 2, t
    raise AssertionError("no frame with a single best detection and track to re-anchor on")


def run_both(checkpoint, frames, concepts, *, detections_per_frame=5):
    """Stream `frames` through both; returns the worst difference and counts of the events exercised."""
    from transformers.models.sam3_video.modeling_sam3_video import Sam3VideoInferenceSession

    threshold, new_track_score, anchor_iou, anchor_frame = choose_thresholds(checkpoint, frames, concepts,
                                                                             detections_per_frame)
    model = create(checkpoint, score_threshold=threshold, nms_iou=0.0, fill_hole_area=0)
    network = model.network
    network.fill_hole_area = 0
    network.score_threshold_detection = threshold
    network.new_det_thresh = new_track_score
    network.det_nms_thresh = 0.0
    network.recondition_every_nth_frame = anchor_frame
    network.high_conf_thresh = threshold  # transformers uses it for the detection score and the tracker gate
    network.high_iou_thresh = anchor_iou

    events = {"shrunk": 0, "reconditioned_reference": {}, "reconditioned": 0}
    shrink = network._suppress_shrunk_masks

    def counting_shrink(pred_masks, new_pred_masks, shrink_threshold=0.3):
        result = shrink(pred_masks, new_pred_masks, shrink_threshold)
        events["shrunk"] += int(((pred_masks > 0).flatten(1).any(1) & ~(result > 0).flatten(1).any(1)).sum())
        return result

    add_new_objects = network._tracker_add_new_objects

    def add_new_objects_meta(inference_session, frame_idx, new_obj_ids, new_obj_masks, reverse=False):
        # Two transformers-only steps made Meta's: its binarisation of the detector's logits is ">= 0.5", Meta's
        # (and ours) "> 0"; and adding objects re-runs the tracker on this frame for every object already
        # tracked, re-encoding their memory from the decoder's masks (undoing the non-overlap rule just applied
        # to it), where Meta's sam3 starts new objects in a tracker state of their own and leaves the others be
        existing = {idx: dict(outputs["non_cond_frame_outputs"])
                    for idx, outputs in inference_session.output_dict_per_obj.items()}
        result = add_new_objects(inference_session=inference_session, frame_idx=frame_idx, new_obj_ids=new_obj_ids,
                                 new_obj_masks=(new_obj_masks > 0).float(), reverse=reverse)
        for idx, outputs in existing.items():
            inference_session.output_dict_per_obj[idx]["non_cond_frame_outputs"] = outputs
        return result

    prepare = network._prepare_recondition_masks

    def recording_prepare(inference_session, frame_idx, *args, **kwargs):
        masks, obj_ids = prepare(inference_session, frame_idx, *args, **kwargs)
        events["reconditioned_reference"][frame_idx] = sorted(obj_ids)
        return masks, obj_ids

    network._suppress_shrunk_masks = counting_shrink
    network._prepare_recondition_masks = recording_prepare
    network._tracker_add_new_objects = add_new_objects_meta

    theirs = Sam3VideoInferenceSession(video=None, inference_device="cpu", inference_state_device="cpu",
                                       dtype=torch.float32)
    concept_set = ConceptSet(model.encode_concept)
    concept_set.add(concepts)
    active = concept_set.snapshot()
    prompt_of = {}
    for prompt_id, concept in active.items():
        index = theirs.add_prompt(concept.text)
        theirs.prompt_input_ids[index] = concept.encoded.input_ids
        theirs.prompt_attention_masks[index] = concept.encoded.attention_mask
        prompt_of[index] = prompt_id

    ours = Recorder(model.new_session())
    tracker = make_tracker(ours, threshold, anchor_iou, recondition_every=anchor_frame,
                           new_track_score=new_track_score)

    ids = {}  # our track id -> theirs
    worst = 0.0
    binary_mismatch = 0
    compared = 0
    for t, image in enumerate(frames):
        pixels = model.preprocess(image)[0]
        with torch.no_grad():
            reference = network(inference_session=theirs, frame=pixels)
        frame = tracker.step(image, active)
        logits = reference.obj_id_to_mask  # their id -> (1, h, w) logits, before the output non-overlap
        # our masks before the output non-overlap: the tracker's, the detection's where re-anchored or new
        raw = dict(zip(ours.propagation.obj_ids, ours.propagation.masks))
        for obj_id in frame.started:  # a new track: the detection's mask; find the reference's object of it
            raw[obj_id] = ours.added[obj_id]
            candidates = [their for their in logits if their not in ids.values()]
            errors = [float((logits[their][0].sigmoid() - raw[obj_id]).abs().max()) for their in candidates]
            assert errors and min(errors) <= TOLERANCE, f"frame {t}: new track {obj_id} has no reference object"
            ids[obj_id] = candidates[int(np.argmin(errors))]
        reconditioned = frame.reconditioned  # published from the detection (as the reference): not compared raw
        expected_anchors = events["reconditioned_reference"].pop(t, [])
        assert sorted(ids[i] for i in reconditioned) == expected_anchors, \
            f"frame {t}: other objects re-anchored: {sorted(ids[i] for i in reconditioned)} vs {expected_anchors}"
        events["reconditioned"] += len(reconditioned)
        assert sorted(ids[i] for i in raw) == sorted(logits), f"frame {t}: other objects"
        for obj_id, mask in raw.items():
            if obj_id in reconditioned:
                continue
            error = float((logits[ids[obj_id]][0].sigmoid() - mask).abs().max())
            worst = max(worst, error)
            assert error <= TOLERANCE, f"frame {t}, track {obj_id}: |dp| = {error:.2e}"
        # the published (non-overlapping) masks against the processor's
        published = reference_postprocess(theirs, reference, model.mask_size, {v: k for k, v in ids.items()})
        for instance in frame.instances:
            their_id = ids[instance.id]
            probability = logits[their_id][0].sigmoid()
            certain = (probability - 0.5).abs() > TOLERANCE  # a pixel on the threshold may go either way
            expected = published.get(instance.id, torch.zeros_like(instance.mask, dtype=torch.bool))
            mine = instance.mask > 0.5
            binary_mismatch += int(((mine != expected) & certain).sum())
            compared += int(certain.sum())
        # the same concept's published masks are disjoint
        for prompt_id in active:
            masks = [i.mask > 0.5 for i in frame.instances if i.prompt_id == prompt_id]
            if len(masks) > 1:
                assert int(torch.stack(masks).sum(0).max()) <= 1, f"frame {t}: overlapping masks"
    events["worst"] = worst
    events["binary_mismatch"] = binary_mismatch
    events["compared"] = compared
    events["tracks"] = len(ids)
    return events


@pytest.mark.parametrize("source", ["synthetic", "photograph"])
def test_concept_tracking_matches_transformers_streaming(checkpoint, source):
    """Masks to 1e-3 on every frame (before and after the output non-overlap), with the reference's memory
    rules actually firing: objects blanked by the shrink rule, a track re-anchored, tracks started after the
    first frame."""
    frames = synthetic_video(7) if source == "synthetic" else photo_video(7)
    concepts = ["red square", "green disc"] if source == "synthetic" else ["face", "eye"]
    events = run_both(checkpoint, frames, concepts)
    assert events["worst"] <= TOLERANCE
    assert events["binary_mismatch"] == 0 and events["compared"] > 0
    assert events["tracks"] >= 5 and events["shrunk"] > 0 and events["reconditioned"] >= 1


# -- the rules one by one, against transformers' functions ----------------------------------------------------


def random_masks(generator, count, size=24):
    """Overlapping blobs as mask logits, a few of them sharing pixels, with saturated and empty ones."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    logits = []
    for _ in range(count):
        cy, cx, radius = (float(v) for v in torch.rand(3, generator=generator) * torch.tensor([size, size, 8]))
        distance = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
        logits.append((radius + 2 - distance) * float(torch.rand(1, generator=generator) * 4 + 0.5))
    logits = torch.stack(logits) + torch.randn(count, size, size, generator=generator) * 0.3
    logits[0] = -5.0  # an empty mask
    return logits


def test_shrink_rule_is_transformers_own():
    """suppress_shrunk (on probabilities) blanks exactly the masks transformers' _suppress_object_pw_area_shrinkage
    blanks (on logits), per prompt group, and leaves the others as they are."""
    from transformers import Sam3VideoModel

    from perception_fm.pipelines.concept_tracker import SUPPRESSED_PROBABILITY, suppress_shrunk

    generator = torch.Generator().manual_seed(0)
    reference = object.__new__(Sam3VideoModel)  # the rule needs no weights
    blanked = 0
    for trial in range(30):
        count = 2 + trial % 7
        logits = random_masks(generator, count)
        groups = torch.randint(0, 3, (count,), generator=generator)
        theirs = Sam3VideoModel._suppress_object_pw_area_shrinkage(reference, logits[:, None].clone(),
                                                                    groups.tolist())[:, 0]
        ours = suppress_shrunk(logits.sigmoid(), groups, 0.3)
        their_blank = (theirs != logits).flatten(1).any(1)
        our_blank = (ours != logits.sigmoid()).flatten(1).any(1)
        assert torch.equal(our_blank, their_blank), trial
        torch.testing.assert_close(ours, theirs.sigmoid(), atol=1e-6, rtol=0)
        assert (ours[our_blank] <= SUPPRESSED_PROBABILITY + 1e-9).all()
        blanked += int(our_blank.sum())
    assert blanked > 10


def test_output_non_overlap_is_the_processors_own():
    """partition_by_score gives, above 0.5, exactly the binary masks of transformers' Sam3VideoProcessor
    (object-wise non-overlap by tracker score per prompt), and keeps any two masks of a group summing to <= 1, so
    that bilinear upsampling cannot make them overlap again."""
    import torch.nn.functional as F
    import transformers.models.sam3_video.processing_sam3_video as processing

    from perception_fm.pipelines.concept_tracker import partition_by_score

    processor = object.__new__(vars(processing)["Sam3VideoProcessor"])
    generator = torch.Generator().manual_seed(1)
    for trial in range(30):
        count = 2 + trial % 7
        logits = random_masks(generator, count)
        scores = torch.rand(count, generator=generator)
        scores[-1] = scores[1]  # a tie: the lower index wins on both sides
        groups = torch.randint(0, 3, (count,), generator=generator)
        theirs = processor._apply_object_wise_non_overlapping_constraints(
            (logits > 0)[:, None], scores[:, None], background_value=0, prompt_ids=groups.tolist())[:, 0] > 0
        ours = partition_by_score(logits.sigmoid(), scores, groups)
        assert torch.equal(ours > 0.5, theirs), trial
        upsampled = F.interpolate(ours[:, None], scale_factor=3.7, mode="bilinear", align_corners=False)[:, 0] > 0.5
        for group in groups.unique():
            assert upsampled[groups == group].sum(0).max() <= 1


def test_preprocessing_is_the_reference_processors(checkpoint):
    """model.preprocess against transformers' Sam3ImageProcessor (the resize of the uint8 image, rounded to
    uint8, then (x / 255 - 0.5) / 0.5), shrinking a real photograph and enlarging a small frame."""
    model = create(checkpoint)
    images = synthetic_video(1)
    photo = photograph()
    if photo is not None:
        images += [photo, np.ascontiguousarray(photo[:80, :60])]
    # torch's uint8 bilinear kernel is what torchvision's resize runs for uint8 images on CPU
    import torch.nn.functional as F

    for image in images:
        uint8 = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None], size=(IMAGE, IMAGE), mode="bilinear",
                              align_corners=False, antialias=True)
        torch.testing.assert_close(model.preprocess(image), uint8.float() / 127.5 - 1.0, atol=1e-6, rtol=0)
    # transformers' processor itself, where torchvision is installed (with torchvision built for another torch,
    # stub `torchvision._meta_registrations` in sys.modules before anything imports transformers)
    pytest.importorskip("torchvision", reason="transformers' image processor needs torchvision")
    from transformers.models.sam3.image_processing_sam3 import Sam3ImageProcessor

    processor = Sam3ImageProcessor(size={"height": IMAGE, "width": IMAGE})
    for image in images:
        theirs = processor(images=image, return_tensors="pt").pixel_values
        torch.testing.assert_close(model.preprocess(image), theirs, atol=1e-5, rtol=0)


def test_occlusion_rule_is_transformers_own():
    """occlusion_suppressed against transformers' _get_objects_to_suppress_based_on_most_recently_occluded on
    random masks (several near-copies, so that pairs overlap) and random occlusion histories."""
    from transformers import Sam3VideoModel

    from perception_fm.pipelines.concept_tracker import occlusion_suppressed

    reference = object.__new__(Sam3VideoModel)
    reference.suppress_overlapping_based_on_recent_occlusion_threshold = 0.7
    generator = torch.Generator().manual_seed(2)
    suppressed = 0
    for trial in range(40):
        count = 2 + trial % 6
        base = random_masks(generator, 3) > 0
        masks = base[torch.randint(0, 3, (count,), generator=generator)]
        masks &= torch.rand(masks.shape, generator=generator) > 0.1  # near-copies
        last = torch.randint(-1, 4, (count,), generator=generator)
        theirs = reference._get_objects_to_suppress_based_on_most_recently_occluded(masks, last, list(range(count)))
        ours = occlusion_suppressed(masks, torch.zeros(count, dtype=torch.long), last, 0.7)
        assert torch.equal(ours, theirs), trial
        suppressed += int(ours.sum())
    assert suppressed > 10
