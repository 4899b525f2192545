"""Every instance of the active concepts, tracked with stable ids over a live stream.

A model's TrackingSession (perception_fm.tasks.segmentation) does the operations; this class makes the
decisions, frame by frame:

1. propagate: the tracker's masks for every track in its memory;
2. detect (every `detect_every` frames): the detector's instances of every concept;
3. associate: mask IoU between detections and tracks of the same concept. A track overlapping a detection
   by >= `track_match_iou` is matched; a confident detection (>= `new_track_score`) overlapping no track by
   >= `association_iou` starts a new track; on a frame with no track at all, every detection does (as the
   reference: the detector's score threshold is then the only gate);
4. lifetime: a matched track gains keep-alive (up to `keep_alive`), an unmatched or empty one loses one and
   is removed at zero. A new track is tentative (not published) until it has lived `confirmation_frames`
   frames; a tentative track unmatched for `max_unmatched_tentative` frames, or duplicating an older track
   (both matched by one detection) for `duplicate_frames` frames, is removed before anyone saw it;
5. re-anchoring: every `recondition_every` frames, each detection with score >= `recondition_score` whose
   best IoU with a track of its concept is >= `recondition_iou` is assigned to that one track (at most one
   detection per track and one track per detection, as SAM 3's reference; of several detections claiming one
   track the highest IoU stays, where the reference keeps the last in query order); a confirmed track so
   assigned whose tracker score is above `recondition_tracker_score` is re-anchored: this frame becomes a
   conditioning frame of its memory, written
   from its own tracker mask (`recondition_on="tracker"`, transformers' default) or from the detection's
   binarised mask ("detection", Meta's original sam3), and it publishes the detection's mask this frame;
6. memory: the frame's masks are committed to the session (which bounds its memory). Before that, per
   concept, a track whose mask would keep less than `shrink_threshold` of its area once every pixel is given
   to the track with the highest mask probability there is blanked for this frame's memory (the reference's
   "pixel-wise non-overlap, suppress shrunk objects");
7. outputs: per concept, a pixel claimed by several published masks goes to the one with the highest tracker
   score (the reference's object-wise non-overlap), so the masks of one concept are disjoint.
Before 6 and 7, the reference's occlusion rule: of two tracks of one concept whose masks overlap by IoU >=
`occlusion_iou`, the one occluded (empty, or suppressed by this rule) more recently is suppressed for this
frame's memory and output, provided the other was occluded at some point too.

Defaults follow SAM 3's video configuration (transformers' Sam3VideoConfig: keep-alive 30, hot-start 15
frames, re-conditioning every 16 frames on detections of score >= 0.8 and IoU >= 0.8, tracker object score
logit > 0.8). Where we differ on purpose: tracks stay tentative (unpublished) during the hot-start, where
transformers' streaming mode publishes them at once and never removes them; only confirmed tracks are
re-anchored. Track ids start at 1 and are never reused; the tracks a frame starts take ids in the order of
its detections (by concept, then by decreasing score), where transformers numbers from 0 in query order.
Nothing here knows SAM 3: tests drive it with scripted sessions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from perception_fm.errors import BadInputError
from perception_fm.pipelines.concepts import Concept
from perception_fm.tasks.segmentation import TrackingSession

TENTATIVE, CONFIRMED = "tentative", "confirmed"
STATE_NEW, STATE_TRACKED, STATE_LOST = 0, 1, 2  # perception_fm/Instance states
MANUAL_PROMPT_ID = 0  # tracks started by clicks/boxes belong to no concept prompt
RECONDITION_SOURCES = ("tracker", "detection")
# The reference gates re-anchoring on the tracker's object-score logit > high_conf_thresh (0.8); our sessions
# report that score as a probability, so the same gate is sigmoid(0.8).
REFERENCE_TRACKER_SCORE_GATE = 1.0 / (1.0 + math.exp(-0.8))
# Probability given to a suppressed mask for memory: the reference clamps its logits to -10.
SUPPRESSED_PROBABILITY = 1.0 / (1.0 + math.exp(10.0))


@dataclass(frozen=True)
class TrackerConfig:
    detect_every: int = 1
    mask_threshold: float = 0.5
    new_track_score: float = 0.7
    association_iou: float = 0.1
    track_match_iou: float = 0.5
    confirmation_frames: int = 15
    max_unmatched_tentative: int = 8
    duplicate_frames: int = 8
    keep_alive: int = 30
    recondition_every: int = 16
    recondition_score: float = 0.8
    recondition_iou: float = 0.8
    recondition_tracker_score: float = REFERENCE_TRACKER_SCORE_GATE  # tracker score (probability) needed, >
    recondition_on: str = "tracker"  # memory of a re-anchored track: its tracker mask, or the detection's
    shrink_threshold: float = 0.3  # memory: blank a mask keeping less than this share under non-overlap (0: off)
    occlusion_iou: float = 0.7  # of two tracks of a concept overlapping this much, suppress the later occluded
    non_overlapping_outputs: bool = True  # published masks of one concept are disjoint (highest tracker score)
    max_objects: int = 100

    def __post_init__(self):
        if self.detect_every < 1 or self.keep_alive < 1 or self.max_objects < 1:
            raise ValueError("detect_every, keep_alive and max_objects must be >= 1")
        if self.recondition_on not in RECONDITION_SOURCES:
            raise ValueError(f"recondition_on must be one of {', '.join(RECONDITION_SOURCES)}, "
                             f"got {self.recondition_on!r}")
        if not 0.0 <= self.shrink_threshold <= 1.0 or not 0.0 <= self.occlusion_iou <= 1.0:
            raise ValueError(f"shrink_threshold and occlusion_iou must be in [0, 1], got {self.shrink_threshold}, "
                             f"{self.occlusion_iou}")
        if self.confirmation_frames < 0 or self.max_unmatched_tentative < 1 or self.duplicate_frames < 1:
            raise ValueError("confirmation_frames must be >= 0; max_unmatched_tentative, duplicate_frames >= 1")


@dataclass
class Track:
    id: int
    prompt_id: int
    concept: str
    first_frame: int
    state: str = TENTATIVE
    keep_alive: int = 0
    unmatched: int = 0  # frames with a detection run but no match (while tentative)
    duplicate: int = 0  # frames sharing a detection with an older track (while tentative)
    score: float = 0.0  # detection score at the last match
    published: bool = False
    last_occluded: int = -1  # last frame its mask was empty or suppressed by the occlusion rule (-1: never)


@dataclass
class TrackedInstance:
    id: int
    prompt_id: int
    concept: str
    state: int  # STATE_NEW / STATE_TRACKED / STATE_LOST
    score: float
    tracker_score: float
    age: int
    mask: torch.Tensor  # (h, w) probabilities at the model's mask size (zeros when lost)


@dataclass
class TrackerFrame:
    frame: int
    detected: bool  # the detector ran on this frame
    instances: list[TrackedInstance]  # confirmed tracks only
    started: list[int] = field(default_factory=list)  # new tentative tracks
    confirmed: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    reconditioned: list[int] = field(default_factory=list)


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, h, w) x (M, h, w) bool → (N, M) IoU on the masks' device."""
    a = a.flatten(1).float()
    b = b.flatten(1).float()
    intersection = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.zeros_like(intersection))


def group_winners(values: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """(N, h, w) values, (N,) group of each -> (N, h, w) bool: True where an object has the highest value of its
    group at that pixel (ties: the lowest index, as torch.argmax). One pass for all groups, no host sync."""
    count = values.shape[0]
    if count == 0:
        return torch.zeros_like(values, dtype=torch.bool)
    _, inverse = torch.unique(groups, return_inverse=True)
    flat = values.flatten(1)
    pixels = flat.shape[1]
    index = inverse[:, None].expand(-1, pixels)
    best = torch.full((int(inverse.max()) + 1, pixels), -math.inf, dtype=flat.dtype, device=flat.device)
    best = best.scatter_reduce(0, index, flat, reduce="amax")
    rows = torch.arange(count, device=flat.device)[:, None].expand(-1, pixels)
    candidates = torch.where(flat == best[inverse], rows, count)
    first = torch.full_like(best, count, dtype=torch.long).scatter_reduce(0, index, candidates, reduce="amin")
    return (first[inverse] == rows).view_as(values)


def suppress_shrunk(probabilities: torch.Tensor, groups: torch.Tensor, threshold: float,
                    mask_threshold: float = 0.5) -> torch.Tensor:
    """The reference's memory rule, per group of two or more masks: give every pixel to the mask with the
    highest probability there; a mask that then keeps less than `threshold` of its area (above
    `mask_threshold`) is blanked (every probability clamped to SUPPRESSED_PROBABILITY, as the reference clamps
    logits to -10). The other masks are returned unchanged (overlapping): the non-overlap only decides which
    are blanked. An empty mask in a group of two or more is blanked too, as in the reference.

    Probabilities are compared, not logits: where two masks both round to 1.0 in float32 (logits above ~16.6)
    the lower index owns the pixel, where the reference would compare the logits."""
    count = probabilities.shape[0]
    if count < 2 or threshold <= 0:
        return probabilities
    foreground = probabilities > mask_threshold
    owned = foreground & group_winners(probabilities, groups)
    before = foreground.flatten(1).sum(1).clamp(min=1)
    after = owned.flatten(1).sum(1)
    _, inverse, sizes = torch.unique(groups, return_inverse=True, return_counts=True)
    blank = (after < threshold * before) & (sizes[inverse] > 1)
    return torch.where(blank[:, None, None], probabilities.clamp(max=SUPPRESSED_PROBABILITY), probabilities)


def partition_by_score(probabilities: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor,
                       mask_threshold: float = 0.5) -> torch.Tensor:
    """The reference's output rule: per group, a pixel in several masks (probability > mask_threshold) stays
    only in the mask of the highest score (ties: the lower index). The others are lowered there to at most
    2 * mask_threshold - (the winner's probability): the masks of a group are then disjoint, and stay so after
    any bilinear resampling of them when mask_threshold >= 0.5 (any two masks sum to <= 2 * mask_threshold
    at every pixel, so a weighted mean of pixels cannot put both above the threshold)."""
    if probabilities.shape[0] < 2:
        return probabilities
    foreground = probabilities > mask_threshold
    ranked = torch.where(foreground, scores.to(probabilities.dtype)[:, None, None], -math.inf)
    winner = group_winners(ranked, groups) & foreground
    _, inverse = torch.unique(groups, return_inverse=True)
    # the winner's probability at each pixel of each group, 0 where the group has none
    flat = torch.where(winner, probabilities, 0.0).flatten(1)
    claimed = torch.zeros(int(inverse.max()) + 1, flat.shape[1], dtype=flat.dtype, device=flat.device)
    claimed = claimed.scatter_reduce(0, inverse[:, None].expand_as(flat), flat, reduce="amax")
    claimed = claimed[inverse].view_as(probabilities)
    ceiling = (2.0 * mask_threshold - claimed).clamp(min=0.0)
    lowered = torch.minimum(probabilities, ceiling)
    return torch.where(winner | (claimed <= 0), probabilities, lowered)


def occlusion_suppressed(binary: torch.Tensor, groups: torch.Tensor, last_occluded: torch.Tensor,
                         iou_threshold: float) -> torch.Tensor:
    """The reference's rule against two tracks on one object: for each pair of masks ((N, h, w) bool) of one
    group overlapping by IoU >= iou_threshold, the one occluded more recently (`last_occluded`, (N,) frame
    indices, -1 = never) is suppressed, provided the other has been occluded at some point too. (N,) bool."""
    iou = mask_iou(binary, binary)
    pairs = torch.triu((iou >= iou_threshold) & (groups[:, None] == groups[None, :]), diagonal=1)
    later, earlier = last_occluded[:, None], last_occluded[None, :]
    first_later = pairs & (later > earlier) & (earlier > -1)
    second_later = pairs & (earlier > later) & (later > -1)
    return first_later.any(1) | second_later.any(0)


def _shares_a_group(groups: list[int]) -> bool:
    """Whether two of these belong to one group (else the non-overlap rules have nothing to do)."""
    return len(set(groups)) < len(groups)


class ConceptTracker:
    def __init__(self, session: TrackingSession, config: TrackerConfig = TrackerConfig()):
        self.session = session
        self.config = config
        self.tracks: dict[int, Track] = {}
        self._next_id = 1
        self._frames = 0  # frames stepped (detection cadence, re-anchoring)
        self.last_frame: int | None = None
        self.last_size: tuple[int, int] | None = None  # (height, width) of the last frame: prompts must lie inside

    # -- concepts and manual prompts ----------------------------------------------------------------------

    def drop_concepts(self, prompt_ids: set[int]) -> list[int]:
        """Remove every track of these concepts (called when concepts are removed)."""
        ids = [track.id for track in self.tracks.values() if track.prompt_id in prompt_ids]
        self._remove(ids)
        return ids

    def prompt(self, points=None, labels=None, box=None, concept: str = "object", obj_id: int | None = None) -> int:
        """Start (obj_id None) or correct a track from clicks/box on the last frame. User-given objects are
        confirmed at once (no hot-start). A refused prompt raises BadInputError and changes nothing: no track is
        added and no id is taken (an id is only used once the model has accepted the prompt)."""
        if self.last_frame is None:
            raise BadInputError("prompt", "no frame yet to prompt on")
        if obj_id is not None and obj_id not in self.tracks:
            known = ", ".join(str(i) for i in sorted(self.tracks)[:20]) or "none"
            raise BadInputError("prompt", f"no tracked object {obj_id} to correct (tracked now: {known}); "
                                          "use object id 0 to start a new object")
        self._check_in_image(points, box)
        if obj_id is None and len(self.tracks) >= self.config.max_objects:
            raise BadInputError("prompt", f"already tracking max_objects={self.config.max_objects} objects")
        new = obj_id is None
        if new:
            obj_id = self._next_id  # taken below, once the session has accepted the prompt
        self.session.prompt_object(self.last_frame, obj_id, points, labels, box)
        if new:
            self._next_id += 1
            self.tracks[obj_id] = Track(obj_id, MANUAL_PROMPT_ID, concept, self.last_frame, state=CONFIRMED,
                                        keep_alive=self.config.keep_alive, score=1.0)
        return obj_id

    def _check_in_image(self, points, box) -> None:
        """Clicks and boxes must be finite and inside the last frame. A click outside the image is not clamped:
        it is almost always a bug upstream (a scaled or cropped view's coordinates), and clamping it would
        start a track on whatever lies at the border."""
        height, width = self.last_size
        if points is not None and np.size(points):
            points = np.asarray(points, np.float64).reshape(-1, 2)
            if not np.isfinite(points).all():
                raise BadInputError("prompt", "click coordinates must be finite")
            outside = (points[:, 0] < 0) | (points[:, 0] >= width) | (points[:, 1] < 0) | (points[:, 1] >= height)
            if outside.any():
                x, y = points[np.argmax(outside)]
                raise BadInputError("prompt", f"click ({x:g}, {y:g}) is outside the {width}x{height} image (pixels: "
                                              f"0 <= x < {width}, 0 <= y < {height})")
        if box is not None:
            box = np.asarray(box, np.float64).reshape(-1)
            if box.shape != (4,) or not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
                raise BadInputError("prompt", f"a box must be finite xyxy pixels with x0 < x1 and y0 < y1, got {box}")
            if box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height:
                raise BadInputError("prompt", f"box {box.tolist()} (xyxy) is outside the {width}x{height} image")

    # -- the frame ----------------------------------------------------------------------------------------

    def step(self, image: np.ndarray, concepts: dict[int, Concept]) -> TrackerFrame:
        config = self.config
        frame = self.session.add_frame(image)
        self.last_frame, self.last_size = frame, image.shape[:2]
        detect = bool(concepts) and self._frames % config.detect_every == 0
        recondition_due = config.recondition_every > 0 and self._frames % config.recondition_every == 0
        self._frames += 1

        propagation = self.session.propagate(frame)
        track_ids = [obj_id for obj_id in propagation.obj_ids if obj_id in self.tracks]
        keep = [i for i, obj_id in enumerate(propagation.obj_ids) if obj_id in self.tracks]
        track_masks = propagation.masks[keep] if len(keep) != len(propagation.obj_ids) else propagation.masks
        track_scores = propagation.scores[keep] if len(keep) != len(propagation.obj_ids) else propagation.scores
        track_binary = track_masks > config.mask_threshold
        nonempty = track_binary.flatten(1).any(1).cpu().numpy() if len(track_ids) else np.zeros(0, bool)

        result = TrackerFrame(frame=frame, detected=detect, instances=[])
        matched = np.zeros(len(track_ids), bool)
        new_masks: dict[int, torch.Tensor] = {}
        anchors: dict[int, int] = {}  # track index -> detection index it is re-anchored on
        detections = None
        if detect:
            detections = self.session.detect(frame, {pid: c.encoded for pid, c in concepts.items()})
            matched, new_masks, anchors = self._associate(
                frame, detections, track_ids, track_binary, track_scores, concepts, recondition_due)
            result.started = list(new_masks)

        # the occlusion rule (memory and outputs): of two tracks of one concept on the same pixels, the one
        # occluded more recently gives way this frame; an empty or suppressed track counts as occluded now
        track_prompts = [self.tracks[obj_id].prompt_id for obj_id in track_ids]
        if config.occlusion_iou > 0 and track_ids:
            suppressed = np.zeros(len(track_ids), bool)
            if _shares_a_group(track_prompts):
                last = torch.as_tensor([self.tracks[obj_id].last_occluded for obj_id in track_ids],
                                       device=track_masks.device)
                groups = torch.as_tensor(track_prompts, device=track_masks.device)
                suppressed = occlusion_suppressed(track_binary, groups, last, config.occlusion_iou).cpu().numpy()
            for i, obj_id in enumerate(track_ids):
                if suppressed[i] or not nonempty[i]:
                    self.tracks[obj_id].last_occluded = frame
            if suppressed.any():
                hide = torch.as_tensor(suppressed, device=track_masks.device)[:, None, None]
                track_masks = torch.where(hide, track_masks.clamp(max=SUPPRESSED_PROBABILITY), track_masks)

        # memory masks of this frame, decided over every track the tracker propagated (as the reference, which
        # encodes memory before it removes anything): the tracker's masks, re-anchored ones from the source
        # chosen, then the shrink rule per concept
        memory_masks = track_masks
        if anchors:
            memory_masks = track_masks.clone()
            if config.recondition_on == "detection":
                for j, i in anchors.items():
                    memory_masks[j] = (detections.masks[i] > config.mask_threshold).to(memory_masks.dtype)
        if config.shrink_threshold > 0 and _shares_a_group(track_prompts):
            groups = torch.as_tensor(track_prompts, device=memory_masks.device)
            memory_masks = suppress_shrunk(memory_masks, groups, config.shrink_threshold, config.mask_threshold)

        # lifetime
        for i, obj_id in enumerate(track_ids):
            track = self.tracks[obj_id]
            if detect and matched[i]:
                track.keep_alive = min(config.keep_alive, track.keep_alive + 1)
            elif detect or not nonempty[i]:
                # unmatched by a detection that ran, or the tracker lost it: one step closer to removal
                track.keep_alive -= 1
                if detect and track.state == TENTATIVE:
                    track.unmatched += 1
        removed = [obj_id for obj_id in track_ids if self._should_remove(self.tracks[obj_id], frame)]
        self._remove(removed)
        result.removed = removed

        # memory: new tracks were conditioned on add; re-anchored ones store this frame as a conditioning frame
        gone = set(removed)
        reconditioned = {track_ids[j] for j in anchors if track_ids[j] not in gone}
        commit = {obj_id: memory_masks[i] for i, obj_id in enumerate(track_ids) if obj_id not in gone}
        if commit:
            self.session.commit(frame, commit, conditioning=sorted(reconditioned))
        result.reconditioned = sorted(reconditioned)

        # outputs: tracker masks, the detection's mask where re-anchored (as the reference), new tracks' detection
        # masks; confirmed tracks only
        index = {obj_id: i for i, obj_id in enumerate(track_ids)}
        anchored = {track_ids[j]: i for j, i in anchors.items()}
        outputs = []
        for obj_id, track in self.tracks.items():
            if track.state == TENTATIVE and frame - track.first_frame >= config.confirmation_frames:
                track.state = CONFIRMED
                result.confirmed.append(obj_id)
            if track.state != CONFIRMED:
                continue
            i = index.get(obj_id)
            if obj_id in anchored:
                mask = detections.masks[anchored[obj_id]]
            elif i is not None:
                mask = track_masks[i]
            else:
                mask = new_masks.get(obj_id)
            if mask is None:  # prompted on this frame: in memory from the next propagation on
                continue
            tracker_score = float(track_scores[i]) if i is not None else track.score
            outputs.append((obj_id, track, mask, tracker_score))
        if not outputs:
            return result
        masks = torch.stack([mask for _, _, mask, _ in outputs])
        output_prompts = [track.prompt_id for _, track, _, _ in outputs]
        if config.non_overlapping_outputs and _shares_a_group(output_prompts):
            scores = torch.tensor([score for *_, score in outputs], device=masks.device)
            groups = torch.as_tensor(output_prompts, device=masks.device)
            masks = partition_by_score(masks, scores, groups, config.mask_threshold)
        visible = (masks > config.mask_threshold).flatten(1).any(1).tolist()
        for (obj_id, track, _, tracker_score), mask, seen in zip(outputs, masks, visible):
            state = STATE_NEW if not track.published else (STATE_TRACKED if seen else STATE_LOST)
            track.published = True
            result.instances.append(TrackedInstance(
                id=obj_id, prompt_id=track.prompt_id, concept=track.concept, state=state, score=track.score,
                tracker_score=tracker_score, age=frame - track.first_frame,
                mask=mask if seen else torch.zeros_like(mask),
            ))
        return result

    def _associate(self, frame, detections, track_ids, track_binary, track_scores, concepts, recondition_due):
        """Matches, new tracks (added to the session) and re-anchoring assignments {track index: detection
        index} (at most one detection per track and one track per detection)."""
        config = self.config
        n, m = len(detections), len(track_ids)
        matched = np.zeros(m, bool)
        new_masks, anchors = {}, {}
        if n == 0:
            return matched, new_masks, anchors
        det_binary = detections.masks > config.mask_threshold
        scores = detections.scores.float().cpu().numpy()
        prompt_ids = detections.prompt_ids.cpu().numpy()
        if m:
            ious = mask_iou(det_binary, track_binary).cpu().numpy()
            track_prompts = np.array([self.tracks[obj_id].prompt_id for obj_id in track_ids])
            ious[prompt_ids[:, None] != track_prompts[None, :]] = 0.0  # never across concepts
        else:
            ious = np.zeros((n, 0), np.float32)
        matched = (ious >= config.track_match_iou).any(axis=0)
        for j in np.flatnonzero(matched):  # remember the best-matching detection's score
            self.tracks[track_ids[j]].score = float(scores[np.argmax(ious[:, j])])
        # duplicates: one detection matching several tracks; all but the oldest are suspects
        for i in range(n):
            sharing = [track_ids[j] for j in np.flatnonzero(ious[i] >= config.association_iou)]
            if len(sharing) > 1:
                oldest = min(sharing, key=lambda obj_id: (self.tracks[obj_id].first_frame, obj_id))
                for obj_id in sharing:
                    if obj_id != oldest and self.tracks[obj_id].state == TENTATIVE:
                        self.tracks[obj_id].duplicate += 1
        # new tracks from confident detections that overlap nothing. With no track at all, every detection
        # starts one (the detector's own score threshold is the only gate), as SAM 3's reference does (Meta's
        # sam3 and transformers: "all detections are new" when there is no masklet, whatever new_det_thresh)
        new_track_score = config.new_track_score if m else 0.0
        is_new = (scores >= new_track_score) & ~(ious >= config.association_iou).any(axis=1)
        new = np.flatnonzero(is_new)
        room = config.max_objects - len(self.tracks)
        new = new[np.argsort(-scores[new], kind="stable")][:max(room, 0)]
        for i in sorted(new):
            obj_id = self._new_id()
            concept = concepts[int(prompt_ids[i])]
            self.tracks[obj_id] = Track(obj_id, concept.prompt_id, concept.text, frame,
                                        keep_alive=config.keep_alive, score=float(scores[i]),
                                        state=CONFIRMED if config.confirmation_frames == 0 else TENTATIVE)
            new_masks[obj_id] = detections.masks[i]
        if new_masks:
            self.session.add_objects(frame, new_masks)
        # re-anchoring, as the reference assigns it: each confident detection (not a new track) whose best IoU
        # is high goes to that one track (its best; ties: the oldest); a track claimed by several keeps one, so
        # each detection re-anchors at most one track and each track at most one detection. Which one: the
        # reference keeps the last in its detector's query order (arbitrary); ours keeps the highest IoU (ties:
        # the higher score). Then the track must be confirmed and its tracker confident.
        if recondition_due and m:
            best = ious.argmax(axis=1)
            best_iou = ious[np.arange(n), best]
            confident = np.flatnonzero((scores >= config.recondition_score) & ~is_new
                                       & (best_iou >= config.recondition_iou))
            for i in confident[np.lexsort((scores[confident], best_iou[confident]))]:  # best last: it stays
                anchors[int(best[i])] = int(i)
            tracker_scores = track_scores.float().cpu().numpy()
            anchors = {j: i for j, i in anchors.items()
                       if self.tracks[track_ids[j]].state == CONFIRMED
                       and tracker_scores[j] > config.recondition_tracker_score}
        return matched, new_masks, anchors

    def _should_remove(self, track: Track, frame: int) -> bool:
        if track.keep_alive <= 0:
            return True
        if track.state == TENTATIVE:
            return (track.unmatched >= self.config.max_unmatched_tentative
                    or track.duplicate >= self.config.duplicate_frames)
        return False

    def _remove(self, obj_ids) -> None:
        obj_ids = [obj_id for obj_id in obj_ids if obj_id in self.tracks]
        if obj_ids:
            self.session.remove_objects(obj_ids)
            for obj_id in obj_ids:
                del self.tracks[obj_id]

    def _new_id(self) -> int:
        obj_id = self._next_id
        self._next_id += 1
        return obj_id
