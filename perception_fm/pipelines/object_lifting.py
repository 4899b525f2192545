"""Which tracked objects to reconstruct, when, and what is kept: work per track, not per frame.

A track is lifted once, when it is first seen confirmed (and passes the policy: concept, mask area, object
budget); again when asked, or when its mask changed a lot since the last lift (the object moved or was first
seen partly). Results are cached by track id, placed in the fixed frame with the camera's pose at the lifted
frame, so objects stay put as the camera moves. Memory is bounded by the object budget.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from perception_fm.core.masks import mask_iou
from perception_fm.geometry.mesh import Mesh, decimate
from perception_fm.tasks.object_mesh import ObjectMeshModel, ObjectMeshRequest

STATE_LOST = 2  # perception_fm/Instance


@dataclass(frozen=True)
class LiftPolicy:
    concepts: frozenset[str] = frozenset()  # empty: every concept
    min_mask_area: int = 400  # pixels
    max_objects: int = 20
    relift_iou: float = 0.5  # lift again when the mask's IoU with the lifted one falls below (0: never)
    relift_interval: int = 30  # frames between two lifts of one track, at least
    max_faces: int = 5000  # decimate meshes to this many faces (markers stay light)


@dataclass
class LiftJob:
    """What the worker needs to lift one track (built on the subscription side, cheaply)."""

    id: int
    concept: str
    frame: int
    stamp_ns: int
    request: ObjectMeshRequest
    fixed_from_camera: np.ndarray  # 4x4: the camera's pose in parent_frame at stamp_ns
    parent_frame: str  # the fixed frame, or the camera's own frame when TF could not place it

    @property
    def key(self) -> int:  # one queued job per track: a newer one replaces it
        return self.id


@dataclass
class LiftedObject:
    id: int
    concept: str
    stamp_ns: int
    mesh: Mesh  # in the object's frame, scale applied
    fixed_from_object: np.ndarray  # 4x4 rigid
    scale: np.ndarray  # (3,) predicted scale (already in mesh)
    used_pointmap: bool
    steps: int
    inference_ms: float
    mask: np.ndarray = field(repr=False)  # (H, W) bool at the lift, for the re-lift rule
    frame: int = 0
    parent_frame: str = ""  # the frame fixed_from_object is in


class ObjectLifter:
    def __init__(self, model: ObjectMeshModel, policy: LiftPolicy = LiftPolicy()):
        self.model = model
        self.policy = policy
        self.objects: OrderedDict[int, LiftedObject] = OrderedDict()
        self.pending: set[int] = set()
        # Selection runs where instances arrive, lifting in a worker: the cache and the pending set are
        # shared (the model itself runs outside the lock).
        self.lock = threading.RLock()

    def wanted(self, instance_id: int, concept: str, state: int, mask: np.ndarray, frame: int,
               requested: bool = False) -> bool:
        """Should this instance be (re)lifted from this frame?"""
        with self.lock:
            return self._wanted(instance_id, concept, state, mask, frame, requested)

    def _wanted(self, instance_id, concept, state, mask, frame, requested) -> bool:
        policy = self.policy
        if instance_id in self.pending or state == STATE_LOST:
            return False
        if policy.concepts and concept not in policy.concepts:
            return False
        if int(mask.sum()) < policy.min_mask_area:
            return False
        lifted = self.objects.get(instance_id)
        if lifted is None:
            return len(self.objects) + len(self.pending) < policy.max_objects
        if requested:
            return True
        if policy.relift_iou <= 0 or frame - lifted.frame < policy.relift_interval:
            return False
        if lifted.mask.shape != mask.shape:
            return True
        return float(mask_iou(mask[None], lifted.mask[None])[0, 0]) < policy.relift_iou

    def lift(self, job: LiftJob) -> LiftedObject:
        """Run the model on one job (the worker thread) and cache the result."""
        started = time.perf_counter()
        try:
            reconstruction = self.model.reconstruct(job.request)
        finally:
            with self.lock:
                self.pending.discard(job.id)
        mesh, _ = decimate(Mesh(reconstruction.vertices.astype(np.float32) * reconstruction.scale.astype(np.float32),
                                reconstruction.faces.astype(np.int32), reconstruction.vertex_colors),
                           self.policy.max_faces)
        camera_from_object = np.eye(4)
        camera_from_object[:3, :3] = reconstruction.rotation
        camera_from_object[:3, 3] = reconstruction.translation
        lifted = LiftedObject(
            id=job.id, concept=job.concept, stamp_ns=job.stamp_ns, mesh=mesh,
            fixed_from_object=job.fixed_from_camera @ camera_from_object, scale=np.asarray(reconstruction.scale),
            used_pointmap=job.request.pointmap is not None, steps=job.request.steps or 0,
            inference_ms=(time.perf_counter() - started) * 1e3, mask=job.request.mask, frame=job.frame,
            parent_frame=job.parent_frame)
        with self.lock:
            self.objects[job.id] = lifted
            self.objects.move_to_end(job.id)
        return lifted

    def claim(self, instance_id: int) -> None:
        """Mark a track as queued for lifting (no second job until it is done)."""
        with self.lock:
            self.pending.add(instance_id)

    def release(self, instance_id: int) -> None:
        with self.lock:
            self.pending.discard(instance_id)

    def snapshot(self) -> list[LiftedObject]:
        with self.lock:
            return list(self.objects.values())

    def forget(self, ids) -> None:
        with self.lock:
            for instance_id in ids:
                self.objects.pop(instance_id, None)
                self.pending.discard(instance_id)
