"""A depth model for tests only (never shipped): it answers each image of the synthetic rig with that image's
ground-truth depth (random-weight networks cannot give meaningful depth), so the rig's geometry can be checked
exactly. Images are matched to the sample's frames by their bytes; an image that is not one of them is a
clear error. It records what it was given (known poses), like a network would receive them.

Also a pluggy plugin ("rig-truth"); `use_in_default_manager()` registers it for in-process nodes."""
import hashlib

import numpy as np

from perception_fm.hookspecs import ModelSpec, Task, hookimpl
from perception_fm.replay.synthetic import SampleConfig, render_frame
from perception_fm.tasks.depth import DepthCapabilities, DepthPrediction, PreparedView

RIG = SampleConfig(width=64, height=48, frames=3, rig_cameras=2)
FRAMES = {(index, camera): render_frame(RIG, index, camera) for index in range(RIG.frames) for camera in range(2)}
# a longer stream of the moving rig, for sliding windows over past groups (tests/test_depth_rig_window.py)
MOVING = SampleConfig(width=64, height=48, frames=6, rig_cameras=2)
MOVING_FRAMES = {(index, camera): render_frame(MOVING, index, camera) for index in range(MOVING.frames)
                 for camera in range(2)}


def _key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


_DEPTH_BY_IMAGE = {_key(frame.rgb): frame.depth for frame in [*FRAMES.values(), *MOVING_FRAMES.values()]}


class RigTruthModel:
    name, weights, device = "rig-truth", "ground-truth", "cpu"
    capabilities = DepthCapabilities(metric=True, multi_view=True, known_poses=True)  # records them

    def __init__(self):
        self.calls = []  # (number of views, known_world_to_camera)
        self.prepared = 0  # images prepared (a window must never prepare a kept view again)

    def prepare(self, image, intrinsics=None):
        self.prepared += 1
        key = _key(image)
        if key not in _DEPTH_BY_IMAGE:
            raise KeyError("rig-truth answers only the synthetic rig's own images")
        height, width = image.shape[:2]
        K = None if intrinsics is None else np.asarray(intrinsics, dtype=np.float64)
        return PreparedView(data=_DEPTH_BY_IMAGE[key], image_size=(height, width), size=(height, width),
                            intrinsics=K)

    def predict(self, views, *, dense_views=None, known_world_to_camera=None, pose_method=None):
        self.calls.append((len(views), known_world_to_camera))
        dense = list(range(len(views))) if dense_views is None else list(dense_views)
        return DepthPrediction(views=dense, depth=np.stack([views[i].data for i in dense]), confidence=None,
                               is_metric=True)


@hookimpl
def register_models():
    return [ModelSpec(name="rig-truth", task=Task.DEPTH, summary="test double: ground-truth depth of the "
                      "synthetic rig", license="test", create=lambda options: RigTruthModel())]


def use_in_default_manager() -> None:
    import sys

    from perception_fm.plugin_manager import default_manager

    manager = default_manager()
    if "rig-truth" not in {entry.spec.name for entry in manager.models(Task.DEPTH)}:
        manager.register(sys.modules[__name__], name="rig-truth")
