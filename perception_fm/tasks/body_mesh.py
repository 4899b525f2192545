"""The body-mesh task: an image and person boxes in; per person a parametric body (MHR: Meta's Momentum
Human Rig) with its posed mesh, skeleton and keypoints out.

Conventions: 3D outputs are in the camera's optical frame (REP 103), metres; `faces`, `joint_names` and
`joint_parents` describe the model's fixed topology and skeleton.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@dataclass
class BodyRequest:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    boxes: np.ndarray  # (N, 4) float xyxy pixels, one per person
    masks: np.ndarray | None = None  # (N, H, W) bool, optional
    intrinsics: np.ndarray | None = None  # K of `image` (None: the model estimates a field of view)


@dataclass
class BodyEstimate:
    params: dict[str, np.ndarray]  # named parameter vectors (e.g. body_pose, shape, scale, hand_pose, global_rot)
    camera_translation: np.ndarray  # (3,) root/camera translation the mesh was placed with
    vertices: np.ndarray  # (V, 3) float32 posed mesh, camera frame
    joints: np.ndarray  # (J, 3) float32 camera frame
    keypoints_2d: np.ndarray  # (K, 2) pixels
    keypoints_3d: np.ndarray  # (K, 3) camera frame
    timings_ms: dict[str, float] = field(default_factory=dict)
    root_rotation: np.ndarray | None = None  # (3, 3) the root joint's orientation in the camera frame, if known


@runtime_checkable
class BodyMeshModel(Protocol):
    name: str
    weights: str
    device: str
    faces: np.ndarray  # (F, 3) int32, shared by every estimate
    joint_names: Sequence[str]  # (J,)
    joint_parents: np.ndarray  # (J,) int, -1 for the root
    keypoint_names: Sequence[str]  # (K,)

    def estimate(self, request: BodyRequest) -> list[BodyEstimate]:
        """One estimate per box, in order."""

    def pose_from_params(self, params: dict[str, np.ndarray], camera_translation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(vertices, joints) of the body model for given parameters (used after temporal smoothing of the
        parameters)."""
