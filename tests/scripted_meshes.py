"""Stand-in object and body models for tests (SAM 3D's networks need CUDA and weights). Same protocols and
output types as the real adapters (perception_fm/tasks/object_mesh.py, body_mesh.py); their answers are
simple functions of the input, so tests can say where results must land. Never used outside tests.

Also a pluggy plugin (`register_models`), so node processes started by tests can load them through the
"perception_fm" entry-point group (see `plugin_path`)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from perception_fm.errors import BadInputError
from perception_fm.hookspecs import ModelSpec, Task, hookimpl
from perception_fm.tasks.body_mesh import BodyEstimate
from perception_fm.tasks.object_mesh import ObjectMeshCapabilities, ObjectReconstruction

CUBE_VERTICES = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float32)
CUBE_FACES = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                       [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]], np.int32)


class CubeObjectModel:
    """An object = a box around the masked pointmap's points: centre at their median, half extents at their
    spread; the cube is coloured with the mask's mean colour. Without a pointmap it sits 2 units away."""

    name, weights, device = "scripted-objects", "none", "cpu"
    capabilities = ObjectMeshCapabilities(uses_pointmap=True, sampling_steps=(1, 4))

    def __init__(self, subdivisions: int = 0):
        self.subdivisions = subdivisions
        self.calls = 0

    def reconstruct(self, request):
        self.calls += 1
        mask = np.asarray(request.mask, bool)
        if mask.shape != request.image.shape[:2] or not mask.any():
            raise BadInputError("mask", "empty mask or size mismatch")
        colour = request.image[mask].mean(axis=0).astype(np.uint8)
        if request.pointmap is not None:
            points = request.pointmap[mask]
            points = points[np.isfinite(points).all(axis=1)]
            centre = np.median(points, axis=0)
            half = np.maximum((np.percentile(points, 95, axis=0) - np.percentile(points, 5, axis=0)) / 2, 1e-3)
        else:
            centre, half = np.array([0.0, 0.0, 2.0]), np.array([0.1, 0.1, 0.1])
        vertices, faces = CUBE_VERTICES, CUBE_FACES
        for _ in range(self.subdivisions):  # more faces, for decimation tests
            edges = vertices[faces].mean(axis=1)
            base = len(vertices)
            vertices = np.concatenate([vertices, edges]).astype(np.float32)
            faces = np.concatenate([np.stack([faces[:, 0], faces[:, 1], base + np.arange(len(faces))], 1),
                                    np.stack([faces[:, 1], faces[:, 2], base + np.arange(len(faces))], 1),
                                    np.stack([faces[:, 2], faces[:, 0], base + np.arange(len(faces))], 1)]).astype(np.int32)
        return ObjectReconstruction(vertices=vertices, faces=faces,
                                    vertex_colors=np.tile(colour, (len(vertices), 1)),
                                    rotation=np.eye(3), translation=centre.astype(np.float64),
                                    scale=half.astype(np.float32))


JOINTS = ("pelvis", "spine", "head", "left_wrist", "right_wrist")
PARENTS = np.array([-1, 0, 1, 1, 1])
REST = np.array([[0, 0, 0], [0, -0.3, 0], [0, -0.6, 0], [-0.3, -0.4, 0], [0.3, -0.4, 0]], np.float32)


class StickBodyModel:
    """A five-joint body whose arms are raised by `body_pose` (2 angles) and which is turned by `global_rot`;
    its mesh is a small cube at every joint. The estimate for a box is placed from the box: centre → x, y at
    depth 3 m, arm angles from the box's aspect ratio."""

    name, weights, device = "scripted-body", "none", "cpu"
    joint_names = JOINTS
    joint_parents = PARENTS
    keypoint_names = ("nose", "left_wrist", "right_wrist")
    faces = np.concatenate([CUBE_FACES + 8 * j for j in range(len(JOINTS))]).astype(np.int32)
    ROOT_ROTATION = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # a quarter turn about z

    def pose_from_params(self, params, camera_translation):
        from scipy.spatial.transform import Rotation

        joints = REST.copy()
        left, right = np.asarray(params["body_pose"], np.float64)
        joints[3] = joints[1] + 0.35 * np.array([-np.cos(left), -np.sin(left), 0])
        joints[4] = joints[1] + 0.35 * np.array([np.cos(right), -np.sin(right), 0])
        rotation = Rotation.from_rotvec(np.asarray(params["global_rot"], np.float64)).as_matrix()
        joints = joints @ rotation.T + np.asarray(camera_translation)
        vertices = (joints[:, None, :] + 0.03 * CUBE_VERTICES[None]).reshape(-1, 3)
        return vertices.astype(np.float32), joints.astype(np.float32)

    def estimate(self, request):
        results = []
        for box in np.asarray(request.boxes, np.float64):
            x0, y0, x1, y1 = box
            centre = np.array([(x0 + x1) / 2 - request.image.shape[1] / 2, (y0 + y1) / 2 - request.image.shape[0] / 2])
            translation = np.array([centre[0] / 200, centre[1] / 200, 3.0])
            angle = float(np.arctan2(y1 - y0, x1 - x0))
            params = {"global_rot": np.zeros(3, np.float32), "body_pose": np.array([angle, angle], np.float32),
                      "shape": np.zeros(2, np.float32)}
            vertices, joints = self.pose_from_params(params, translation)
            results.append(BodyEstimate(params=params, camera_translation=translation.astype(np.float32),
                                        vertices=vertices, joints=joints,
                                        keypoints_2d=np.array([[x0, y0], [x0, y1], [x1, y1]], np.float32),
                                        keypoints_3d=joints[[2, 3, 4]], root_rotation=self.ROOT_ROTATION))
        return results


@hookimpl
def register_models():
    return [
        ModelSpec(name="scripted-objects", task=Task.OBJECT_MESH, summary="test stand-in", license="test",
                  create=lambda options: CubeObjectModel()),
        ModelSpec(name="scripted-body", task=Task.BODY_MESH, summary="test stand-in", license="test",
                  create=lambda options: StickBodyModel()),
    ]


def plugin_path(directory: Path) -> Path:
    """A directory for PYTHONPATH that makes node processes load this module as a perception_fm plugin."""
    dist = directory / "scripted_meshes_plugin-1.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: scripted-meshes-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""
        [perception_fm]
        scripted_meshes = scripted_meshes
    """))
    return directory
