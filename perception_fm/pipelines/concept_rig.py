"""Concept segmentation over a camera rig, group by group, without ROS: the cameras' images of one instant go
through the model's vision backbone in ONE batched pass (when the model offers `encode_frames`), then each
camera's own tracker (perception_fm.pipelines.concept_tracker: detection, association, memory) runs on its
share of the features. The concepts are the rig's (one ConceptSet for every camera).

Track ids are unique across the rig's cameras and stable: each camera's tracker numbers its tracks 1, 2, ...
(never reused), and the rig publishes them in an interleaved id space (RigIds): id = (local - 1) * N + index + 1
for the camera at `index` of N. So an id never changes while its track lives, is never reused, never collides
with another camera's, and names its camera ((id - 1) % N), whatever the order groups and cameras arrive in.

A camera missing from a group (camera grouping: perception_fm.core.camera_group) simply steps no frame: its
tracks wait in memory, as over a dropped frame. Memory is each camera's session's (bounded).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np

from perception_fm.errors import BadInputError
from perception_fm.pipelines.concept_tracker import ConceptTracker, TrackerConfig, TrackerFrame
from perception_fm.pipelines.concepts import Concept


@dataclass(frozen=True)
class RigIds:
    """The rig's id space: camera `index` of `count` publishes its local track id `local` as
    (local - 1) * count + index + 1."""

    cameras: tuple[str, ...]

    def to_rig(self, camera: str, local: int) -> int:
        return (int(local) - 1) * len(self.cameras) + self.cameras.index(camera) + 1

    def to_camera(self, rig_id: int) -> tuple[str, int]:
        """(camera, its local id) of a rig id. ValueError for 0 or negative."""
        if rig_id < 1:
            raise ValueError(f"track ids start at 1, got {rig_id}")
        index, local = (rig_id - 1) % len(self.cameras), (rig_id - 1) // len(self.cameras) + 1
        return self.cameras[index], local


class _GroupFrameSession:
    """A camera's TrackingSession whose next add_frame takes the features the group's batched backbone pass
    made for it (set by `feed`), so that ConceptTracker.step stays the single-camera code."""

    def __init__(self, session):
        self.session = session
        self._encoded = None

    def feed(self, encoded) -> None:
        self._encoded = encoded

    def add_frame(self, image: np.ndarray) -> int:
        encoded, self._encoded = self._encoded, None
        if encoded is None:  # the model encodes one image at a time
            return self.session.add_frame(image)
        return self.session.add_encoded_frame(encoded)

    def detect(self, frame, concepts):
        return self.session.detect(frame, concepts)

    def propagate(self, frame):
        return self.session.propagate(frame)

    def add_objects(self, frame, masks):
        return self.session.add_objects(frame, masks)

    def prompt_object(self, frame, obj_id, points, labels, box):
        return self.session.prompt_object(frame, obj_id, points, labels, box)

    def commit(self, frame, masks, conditioning=()):
        return self.session.commit(frame, masks, conditioning)

    def remove_objects(self, obj_ids):
        return self.session.remove_objects(obj_ids)

    def memory_stats(self):
        return self.session.memory_stats()


@dataclass
class RigConceptOutput:
    frames: dict[str, TrackerFrame]  # camera -> its frame, instances with rig ids (cameras of the group only)
    encode_ms: float  # the batched backbone pass
    inference_ms: float  # the whole group (encode + every camera's tracker)


class ConceptRig:
    """Per-camera trackers over one model. `step` takes a group's images ({camera: RGB uint8}, any subset
    of the rig, any sizes). The same interface as a ConceptTracker where the node needs one: `tracks`
    (every camera's), `drop_concepts`; manual prompts are per camera (`prompt` refuses: say which camera)."""

    def __init__(self, model, cameras: Sequence[str], config: TrackerConfig = TrackerConfig()):
        cameras = tuple(cameras)
        if not cameras or len(set(cameras)) != len(cameras):
            raise ValueError(f"a rig needs unique camera names, got {list(cameras)}")
        self.model = model
        self.ids = RigIds(cameras)
        self.batched = callable(getattr(model, "encode_frames", None))
        self._sessions = {camera: _GroupFrameSession(model.new_session()) for camera in cameras}
        self.trackers = {camera: ConceptTracker(self._sessions[camera], config) for camera in cameras}

    @property
    def cameras(self) -> tuple[str, ...]:
        return self.ids.cameras

    @property
    def tracks(self) -> dict[int, object]:
        """Every camera's live tracks by rig id."""
        return {self.ids.to_rig(camera, local): track for camera, tracker in self.trackers.items()
                for local, track in tracker.tracks.items()}

    def drop_concepts(self, prompt_ids: set[int]) -> list[int]:
        return [self.ids.to_rig(camera, local) for camera, tracker in self.trackers.items()
                for local in tracker.drop_concepts(prompt_ids)]

    def prompt(self, *args, **kwargs) -> int:
        raise BadInputError("prompt", "click and box prompts are not supported on a camera rig yet (the prompt "
                                      "would have to name its camera); use concepts")

    def step(self, images: Mapping[str, np.ndarray], concepts: dict[int, Concept]) -> RigConceptOutput:
        unknown = [camera for camera in images if camera not in self.trackers]
        if unknown:
            raise KeyError(f"unknown cameras {unknown}; the rig has {list(self.cameras)}")
        started = time.perf_counter()
        order = [camera for camera in self.cameras if camera in images]
        if self.batched and order:
            for camera, encoded in zip(order, self.model.encode_frames([images[c] for c in order])):
                self._sessions[camera].feed(encoded)
        encode_ms = (time.perf_counter() - started) * 1e3
        frames = {camera: self._to_rig(camera, self.trackers[camera].step(images[camera], concepts))
                  for camera in order}
        return RigConceptOutput(frames, encode_ms, (time.perf_counter() - started) * 1e3)

    def _to_rig(self, camera: str, frame: TrackerFrame) -> TrackerFrame:
        ids = lambda values: [self.ids.to_rig(camera, value) for value in values]  # noqa: E731
        return replace(frame, instances=[replace(i, id=self.ids.to_rig(camera, i.id)) for i in frame.instances],
                       started=ids(frame.started), confirmed=ids(frame.confirmed), removed=ids(frame.removed),
                       reconditioned=ids(frame.reconditioned))
