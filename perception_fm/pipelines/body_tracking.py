"""People's bodies over a stream: which instances are people, one body estimate per person per frame, and
temporal smoothing of each track's body parameters (One Euro filter: smooth when still, responsive when
moving), from which the mesh and skeleton are posed again. State is per track and forgotten when a track
is not seen for a while, so memory stays bounded."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from perception_fm.geometry.mesh import Mesh, decimate
from perception_fm.tasks.body_mesh import BodyEstimate, BodyMeshModel, BodyRequest

STATE_LOST = 2  # perception_fm/Instance


class OneEuroFilter:
    """One Euro filter (Casiez, Roussel, Vogel, CHI 2012) over a vector, element-wise and vectorised.

    min_cutoff (Hz): smoothing at rest (lower = smoother); beta: how fast the cutoff rises with speed (higher
    = less lag on fast motion); d_cutoff (Hz): smoothing of the speed estimate."""

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.05, d_cutoff: float = 1.0):
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    @staticmethod
    def _alpha(cutoff, dt: float):
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or self._t is None or t <= self._t or x.shape != self._x.shape:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), t
            return x.copy()
        dt = t - self._t
        dx = (x - self._x) / dt
        a_d = self._alpha(self.d_cutoff, dt)
        self._dx = a_d * dx + (1 - a_d) * self._dx
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx)
        a = self._alpha(cutoff, dt)
        self._x = a * x + (1 - a) * self._x
        self._t = t
        return self._x.copy()


@dataclass(frozen=True)
class BodyConfig:
    person_concepts: frozenset[str] = frozenset({"person"})
    min_box_area: int = 900  # pixels
    max_people: int = 8
    use_masks: bool = False
    smoothing: bool = True
    min_cutoff: float = 1.0
    beta: float = 0.05
    d_cutoff: float = 1.0
    forget_after_s: float = 2.0
    marker_max_faces: int = 4000


@dataclass
class Person:
    track_id: int
    estimate: BodyEstimate  # smoothed when `smoothed`
    smoothed: bool


def pack(params: dict[str, np.ndarray], camera_translation: np.ndarray) -> tuple[np.ndarray, list]:
    """Parameters as one vector (for filtering) and the layout to unpack it."""
    layout = [(name, np.asarray(value).shape) for name, value in params.items()]
    vector = np.concatenate([np.asarray(v, np.float64).ravel() for v in params.values()]
                            + [np.asarray(camera_translation, np.float64).ravel()])
    return vector, layout


def unpack(vector: np.ndarray, layout: list) -> tuple[dict[str, np.ndarray], np.ndarray]:
    params, offset = {}, 0
    for name, shape in layout:
        size = int(np.prod(shape))
        params[name] = vector[offset:offset + size].reshape(shape).astype(np.float32)
        offset += size
    return params, vector[offset:offset + 3].astype(np.float32)


class BodyTracker:
    def __init__(self, model: BodyMeshModel, config: BodyConfig = BodyConfig()):
        self.model = model
        self.config = config
        self.filters: dict[int, tuple[OneEuroFilter, float]] = {}  # track -> (filter, last time seen)
        self._marker_topology: tuple[np.ndarray, np.ndarray] | None = None

    def people(self, instances) -> list:
        """The instances that are people worth estimating (perception_fm/Instance messages)."""
        config = self.config
        chosen = [i for i in instances if i.concept in config.person_concepts and i.state != STATE_LOST
                  and i.box.width * i.box.height >= config.min_box_area]
        chosen.sort(key=lambda i: -(i.box.width * i.box.height))  # biggest (closest) first
        return chosen[:config.max_people]

    def step(self, image: np.ndarray, people: list, masks: np.ndarray | None, intrinsics, time_s: float) -> list[Person]:
        if not people:
            self._forget(time_s)
            return []
        boxes = np.array([[p.box.x_offset, p.box.y_offset, p.box.x_offset + p.box.width,
                           p.box.y_offset + p.box.height] for p in people], np.float32)
        estimates = self.model.estimate(BodyRequest(image=image, boxes=boxes,
                                                    masks=masks if self.config.use_masks else None,
                                                    intrinsics=intrinsics))
        results = [self._smooth(person.id, estimate, time_s) for person, estimate in zip(people, estimates)]
        self._forget(time_s)
        return results

    def _smooth(self, track_id: int, estimate: BodyEstimate, time_s: float) -> Person:
        if not self.config.smoothing:
            return Person(track_id, estimate, False)
        vector, layout = pack(estimate.params, estimate.camera_translation)
        entry = self.filters.get(track_id)
        filt = entry[0] if entry else OneEuroFilter(self.config.min_cutoff, self.config.beta, self.config.d_cutoff)
        self.filters[track_id] = (filt, time_s)
        smoothed = filt(vector, time_s)
        params, translation = unpack(smoothed, layout)
        vertices, joints = self.model.pose_from_params(params, translation)
        result = BodyEstimate(params=params, camera_translation=translation, vertices=vertices, joints=joints,
                              keypoints_2d=estimate.keypoints_2d, keypoints_3d=estimate.keypoints_3d,
                              timings_ms=estimate.timings_ms, root_rotation=estimate.root_rotation)
        return Person(track_id, result, entry is not None)

    def _forget(self, time_s: float) -> None:
        stale = [t for t, (_, seen) in self.filters.items() if time_s - seen > self.config.forget_after_s
                 or time_s < seen]
        for track_id in stale:
            del self.filters[track_id]

    def marker_mesh(self, vertices: np.ndarray) -> Mesh:
        """The posed mesh at marker size: the model's topology is fixed, so it is decimated once (on the first
        mesh seen) and every later mesh reuses those faces and vertex picks."""
        if self._marker_topology is None:
            decimated, source = decimate(Mesh(np.asarray(vertices, np.float32), np.asarray(self.model.faces, np.int32)),
                                         self.config.marker_max_faces)
            self._marker_topology = (decimated.faces, source)
        faces, source = self._marker_topology
        return Mesh(np.asarray(vertices, np.float32)[source], faces)
