"""Every instance of the active concepts, tracked with stable ids over a live stream.

A model's TrackingSession (perception_fm.tasks.segmentation) does the operations; this class makes the
decisions, frame by frame:

1. propagate: the tracker's masks for every track in its memory;
2. detect (every `detect_every` frames): the detector's instances of every concept;
3. associate: mask IoU between detections and tracks of the same concept. A track overlapping a detection
   by >= `track_match_iou` is matched; a confident detection (>= `new_track_score`) overlapping no track by
   >= `association_iou` starts a new track;
4. lifetime: a matched track gains keep-alive (up to `keep_alive`), an unmatched or empty one loses one and
   is removed at zero. A new track is tentative (not published) until it has lived `confirmation_frames`
   frames; a tentative track unmatched for `max_unmatched_tentative` frames, or duplicating an older track
   (both matched by one detection) for `duplicate_frames` frames, is removed before anyone saw it;
5. re-anchoring: every `recondition_every` frames, a confirmed track matched by a detection with score >=
   `recondition_score` and IoU >= `recondition_iou` takes that detection's mask as a conditioning frame;
6. memory: the frame's final masks are committed to the session (which bounds its memory).

Defaults follow SAM 3's video configuration (keep-alive 30, hot-start 15 frames, re-conditioning every 16).
Nothing here knows SAM 3: tests drive it with scripted sessions.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from perception_fm.errors import BadInputError
from perception_fm.pipelines.concepts import Concept
from perception_fm.tasks.segmentation import TrackingSession

TENTATIVE, CONFIRMED = "tentative", "confirmed"
STATE_NEW, STATE_TRACKED, STATE_LOST = 0, 1, 2  # perception_fm/Instance states
MANUAL_PROMPT_ID = 0  # tracks started by clicks/boxes belong to no concept prompt


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
    max_objects: int = 100

    def __post_init__(self):
        if self.detect_every < 1 or self.keep_alive < 1 or self.max_objects < 1:
            raise ValueError("detect_every, keep_alive and max_objects must be >= 1")
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
        final_masks = {obj_id: track_masks[i] for i, obj_id in enumerate(track_ids)}
        track_binary = track_masks > config.mask_threshold
        nonempty = track_binary.flatten(1).any(1).cpu().numpy() if len(track_ids) else np.zeros(0, bool)

        result = TrackerFrame(frame=frame, detected=detect, instances=[])
        matched = np.zeros(len(track_ids), bool)
        new_masks: dict[int, torch.Tensor] = {}
        reconditioned: dict[int, torch.Tensor] = {}
        if detect:
            detections = self.session.detect(frame, {pid: c.encoded for pid, c in concepts.items()})
            matched, new_masks, reconditioned = self._associate(
                frame, detections, track_ids, track_binary, concepts, recondition_due)
            result.started = list(new_masks)

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
        for obj_id in removed:
            final_masks.pop(obj_id, None)
            reconditioned.pop(obj_id, None)

        # memory: tracker masks, detection masks where re-anchored; new tracks were conditioned on add
        final_masks.update(reconditioned)
        if final_masks:
            self.session.commit(frame, final_masks, conditioning=reconditioned.keys())
        result.reconditioned = sorted(reconditioned)

        # confirmation and outputs (confirmed tracks only)
        index = {obj_id: i for i, obj_id in enumerate(track_ids)}
        for obj_id, track in self.tracks.items():
            if track.state == TENTATIVE and frame - track.first_frame >= config.confirmation_frames:
                track.state = CONFIRMED
                result.confirmed.append(obj_id)
            if track.state != CONFIRMED:
                continue
            mask = final_masks.get(obj_id, new_masks.get(obj_id))
            if mask is None:  # prompted on this frame: in memory from the next propagation on
                continue
            i = index.get(obj_id)
            visible = bool((mask > config.mask_threshold).any())
            state = STATE_NEW if not track.published else (STATE_TRACKED if visible else STATE_LOST)
            track.published = True
            tracker_score = float(track_scores[i]) if i is not None else track.score
            result.instances.append(TrackedInstance(
                id=obj_id, prompt_id=track.prompt_id, concept=track.concept, state=state, score=track.score,
                tracker_score=tracker_score, age=frame - track.first_frame,
                mask=mask if visible else torch.zeros_like(mask),
            ))
        return result

    def _associate(self, frame, detections, track_ids, track_binary, concepts, recondition_due):
        config = self.config
        n, m = len(detections), len(track_ids)
        matched = np.zeros(m, bool)
        new_masks, reconditioned = {}, {}
        if n == 0:
            return matched, new_masks, reconditioned
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
        # new tracks from confident detections that overlap nothing
        new = np.flatnonzero((scores >= config.new_track_score) & ~(ious >= config.association_iou).any(axis=1))
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
        # re-anchoring confirmed tracks on confident, well-overlapping detections
        if recondition_due and m:
            best = ious.argmax(axis=0)
            for j, obj_id in enumerate(track_ids):
                i = best[j]
                if (self.tracks[obj_id].state == CONFIRMED and scores[i] >= config.recondition_score
                        and ious[i, j] >= config.recondition_iou):
                    reconditioned[obj_id] = detections.masks[i]
        return matched, new_masks, reconditioned

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
