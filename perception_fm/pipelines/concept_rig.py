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
    (every camera's), `drop_concepts`, `prompt` (which takes the camera; a correction finds it from the id)."""

    def __init__(self, model, cameras: Sequence[str], config: TrackerConfig = TrackerConfig()):
        cameras = tuple(cameras)
        if not cameras or len(set(cameras)) != len(cameras):
            raise ValueError(f"a rig needs unique camera names, got {list(cameras)}")
        self.model = model
        self.ids = RigIds(cameras)
        self.batched = callable(getattr(model, "encode_frames", None))
        self._sessions = {camera: _GroupFrameSession(model.new_session()) for camera in cameras}
        self.trackers = {camera: ConceptTracker(self._sessions[camera], config) for camera in cameras}
        self.frame_ids: dict[str, str] = {}  # camera -> frame id of its last image (note_frame)

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

    def prompt(self, points=None, labels=None, box=None, concept: str = "object", obj_id: int | None = None,
               camera: str = "") -> int:
        """ConceptTracker.prompt on one camera of the rig; returns the rig id. A new object (obj_id None) goes
        to `camera`, which must be named (a click or box means nothing without the image it was made on). A
        correction goes to the camera its id belongs to; a `camera` that disagrees with the id is refused,
        not silently overridden (the caller mixed up its cameras). Refusals raise BadInputError and take no id."""
        if obj_id is not None:
            if obj_id not in self.tracks:
                known = ", ".join(str(i) for i in sorted(self.tracks)[:20]) or "none"
                raise BadInputError("prompt", f"no tracked object {obj_id} to correct (tracked now: {known}); "
                                              "use object id 0 to start a new object")
            owner, local = self.ids.to_camera(obj_id)
            if camera and camera != owner:
                raise BadInputError("prompt", f"object {obj_id} is tracked on camera {owner!r}, not {camera!r} "
                                              "(leave camera empty to correct it on its own camera)")
            self.trackers[owner].prompt(points, labels, box, concept=concept, obj_id=local)
            return obj_id
        self._check_camera(camera)
        return self.ids.to_rig(camera, self.trackers[camera].prompt(points, labels, box, concept=concept))

    def _check_camera(self, camera: str) -> None:
        if camera in self.trackers:
            return
        names = ", ".join(repr(c) for c in self.cameras)
        if not camera:
            raise BadInputError("prompt", f"this node tracks a camera rig: a prompt must name its camera, "
                                          f"one of {names}")
        raise BadInputError("prompt", f"unknown camera {camera!r}; the rig's cameras are {names}")

    def note_frame(self, camera: str, frame_id: str) -> None:
        """The frame id of the camera's last image (the one its prompts apply to), for camera_of_frame."""
        self.frame_ids[camera] = frame_id

    def camera_of_frame(self, frame_id: str) -> str:
        """The camera whose last image was in `frame_id` (how a PointStamped click names its camera).
        BadInputError when no camera, or more than one, has that frame."""
        matches = [camera for camera in self.cameras if self.frame_ids.get(camera) == frame_id]
        if len(matches) == 1:
            return matches[0]
        seen = ", ".join(f"{camera}: {self.frame_ids[camera]!r}" for camera in self.cameras
                         if camera in self.frame_ids) or "no image yet"
        if matches:
            raise BadInputError("prompt_frame", f"frame {frame_id!r} is the frame of several cameras "
                                                f"({', '.join(matches)}): name the camera on ~/prompt_object")
        raise BadInputError("prompt_frame", f"no camera's last image is in frame {frame_id!r} (cameras' frames: "
                                            f"{seen})")

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
