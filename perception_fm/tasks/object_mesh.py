"""The object-mesh task: one object (image + its mask, optionally a pointmap) in; a textured mesh and its
layout in the camera out.

Conventions: the mesh is in the object's own frame; a vertex v lands in the camera's optical frame (REP 103)
at  R @ (s * v) + t  with R = rotation (3x3), s = scale (3,) (per axis), t = translation (3,), in the units
of the pointmap when one was given (metres for metric depth), else the model's own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class ObjectMeshCapabilities:
    uses_pointmap: bool  # a pointmap (H, W, 3) conditions the layout
    sampling_steps: tuple[int, ...] = ()  # supported step counts (few-step / shortcut sampling)


@dataclass
class ObjectMeshRequest:
    image: np.ndarray  # (H, W, 3) uint8 RGB, the whole frame
    mask: np.ndarray  # (H, W) bool, the object
    pointmap: np.ndarray | None = None  # (H, W, 3) float32 in the camera optical frame (NaN: unknown)
    intrinsics: np.ndarray | None = None  # K of `image`
    steps: int | None = None  # sampling steps (None: the model's default)
    seed: int = 0


@dataclass
class ObjectReconstruction:
    vertices: np.ndarray  # (V, 3) float32, object frame
    faces: np.ndarray  # (F, 3) int32
    vertex_colors: np.ndarray  # (V, 3) uint8 RGB
    rotation: np.ndarray  # (3, 3) object -> camera
    translation: np.ndarray  # (3,)
    scale: np.ndarray  # (3,)
    timings_ms: dict[str, float] = field(default_factory=dict)

    def camera_vertices(self) -> np.ndarray:
        """Vertices in the camera's optical frame."""
        return (self.rotation @ (self.vertices * self.scale).T).T + self.translation


@runtime_checkable
class ObjectMeshModel(Protocol):
    name: str
    weights: str
    device: str
    capabilities: ObjectMeshCapabilities

    def reconstruct(self, request: ObjectMeshRequest) -> ObjectReconstruction:
        """Lift one masked object. Raises BadInputError for an empty mask or mismatched sizes."""
