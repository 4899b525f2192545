"""The segmentation task: every instance of a concept (a noun phrase) in a stream, with stable ids.

The split of work: a plugin's model provides the *operations* (encode a frame once, detect concepts on it,
propagate the objects in its memory, write memory, add/remove objects); perception_fm's ConceptTracker
(perception_fm.pipelines.concept_tracker) owns the *decisions* (which detection is which track, when a track
is confirmed, kept alive, re-anchored or removed). So the tracking logic is the same for every model and is
tested without a network, and a model plugin stays a thin adapter.

Conventions: masks are float probabilities in [0, 1] at the model's mask resolution (`mask_size`, e.g. 288 x
288 for SAM 3), covering the whole image (resized, not cropped); boxes are xyxy normalised to [0, 1] of the
image; tensors live on the model's device (torch), so a frame needs no host round trip until its outputs are
published. Object ids are chosen by the tracker (positive ints, never reused in a session).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class SegmentationCapabilities:
    mask_size: tuple[int, int]  # (h, w) of masks the session returns
    max_concept_tokens: int  # longest concept the text encoder takes (tokens, special tokens included)
    point_prompts: bool = False  # TrackingSession.prompt_object accepts clicks / boxes


@dataclass
class Detections:
    masks: Any  # (N, h, w) float tensor, probabilities
    boxes: Any  # (N, 4) float tensor, xyxy normalised
    scores: Any  # (N,) float tensor, detection confidence (presence included)
    prompt_ids: Any  # (N,) int64 tensor: which concept found each detection

    def __len__(self) -> int:
        return int(self.scores.shape[0])


@dataclass
class Propagation:
    obj_ids: list[int]  # objects in the session's memory, in this order below
    masks: Any  # (M, h, w) float tensor, probabilities
    scores: Any  # (M,) float tensor: the tracker's belief that the object is visible


@runtime_checkable
class TrackingSession(Protocol):
    """One stream's state inside a model: the current frame's features and each object's memory. Memory is
    bounded: a session keeps a fixed number of recent and conditioning frames per object, whatever the
    stream length."""

    def add_frame(self, image: np.ndarray) -> int:
        """Preprocess an RGB uint8 (H, W, 3) image on the device and encode it once (features shared by
        detection, propagation and memory); returns the frame's index. Only the newest frame's features are
        kept."""

    def detect(self, frame: int, concepts: Mapping[int, Any]) -> Detections:
        """Detections of every concept ({prompt_id: encoded concept}) on `frame`, after the model's own
        score threshold and per-concept non-maximum suppression."""

    def propagate(self, frame: int) -> Propagation:
        """Masks of every object in memory on `frame` (nothing is written to memory)."""

    def add_objects(self, frame: int, masks: Mapping[int, Any]) -> None:
        """Start tracking new objects {obj_id: (h, w) mask} from `frame` (conditioning memory)."""

    def prompt_object(self, frame: int, obj_id: int, points: np.ndarray | None, labels: np.ndarray | None,
                      box: np.ndarray | None) -> Any:
        """Segment an object from clicks ((K, 2) pixels of the input image, labels 1 = on the object,
        0 = background) and/or a box (xyxy pixels) on `frame`, and condition `obj_id` on the result (a new
        object or a correction). Returns its (h, w) mask."""

    def commit(self, frame: int, masks: Mapping[int, Any], conditioning: Iterable[int] = ()) -> None:
        """Write `frame` into the memory of the objects in `masks` ({obj_id: (h, w) mask}: the tracker's
        final masks for this frame). Objects in `conditioning` store it as a conditioning frame (re-anchored
        by a confident detection). Evicts what falls out of the memory bounds."""

    def remove_objects(self, obj_ids: Iterable[int]) -> None:
        """Forget objects (their memory is freed)."""

    def memory_stats(self) -> dict[str, int]:
        """Retained state, for bounds checks: e.g. frames with features, memory entries per kind."""


@runtime_checkable
class SegmentationModel(Protocol):
    name: str
    weights: str
    device: str
    capabilities: SegmentationCapabilities

    def encode_concept(self, text: str) -> Any:
        """A concept ready for `TrackingSession.detect` (tokens / text embedding, cached by the caller).
        Raises BadInputError("concept", ...) for an empty or over-long phrase."""

    def new_session(self) -> TrackingSession:
        """A fresh tracking state for one stream."""
