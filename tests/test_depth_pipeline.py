"""DepthPipeline: sliding windows, pose chaining, known poses, memory bounds, clouds.

Random-weight networks cannot show that chaining recovers a trajectory, so most tests use a scripted model
(declared here) that answers like a relative-depth multi-view model would: for each call it returns the
ground truth of the synthetic sample expressed in the call's first view and divided by a per-call scale.
The pipeline must undo those arbitrary scales and frames. The last test runs the real DA3 network.
"""
import numpy as np
import pytest

from perception_fm.pipelines.depth_pipeline import DepthInput, DepthPipeline, DepthPipelineConfig
from perception_fm.replay.synthetic import SampleConfig, render_frame
from perception_fm.tasks.depth import DepthCapabilities, DepthPrediction, PreparedView

SAMPLE = SampleConfig(width=64, height=48, frames=40, camera_path="walk")  # chained poses checked at 1e-9: the walk's scale
FRAMES = [render_frame(SAMPLE, i) for i in range(SAMPLE.frames)]


class ScriptedRelativeModel:
    """Stand-in for a multi-view relative-depth network with exact answers (see module docstring)."""

    name, weights, device = "scripted", "none", "cpu"

    def __init__(self, metric=False, sky=False):
        self.capabilities = DepthCapabilities(metric=metric, multi_view=True, pose_methods=("camera_head",),
                                              known_poses=True)
        self.sky = sky
        self.calls = []  # (frame indices, conditioned?)
        self._index = {frame.rgb.tobytes(): frame.index for frame in FRAMES}

    @staticmethod
    def call_scale(indices):
        return 1.0 if len(indices) == 1 and indices[0] == 0 else 0.3 + (sum(indices) * 7919 % 97) / 40.0

    def prepare(self, image, intrinsics=None):
        return PreparedView(data=self._index[image.tobytes()], image_size=image.shape[:2], size=image.shape[:2],
                            intrinsics=intrinsics)

    def predict(self, views, *, dense_views=None, known_world_to_camera=None, pose_method=None):
        indices = [view.data for view in views]
        self.calls.append((indices, known_world_to_camera is not None))
        scale = 1.0 if self.capabilities.metric else self.call_scale(indices)
        dense = list(range(len(views))) if dense_views is None else [i % len(views) for i in dense_views]
        first = np.linalg.inv(FRAMES[indices[0]].camera_to_world)
        camera_to_window = np.stack([first @ FRAMES[i].camera_to_world for i in indices])
        camera_to_window[:, :3, 3] /= scale
        depth = np.stack([FRAMES[indices[i]].depth / scale for i in dense]).astype(np.float32)
        sky = None
        if self.sky:
            sky = np.zeros(depth.shape, bool)
            sky[:, :5] = True
        return DepthPrediction(views=dense, depth=depth, confidence=np.ones_like(depth), is_metric=self.capabilities.metric,
                               world_to_camera=np.linalg.inv(camera_to_window),
                               intrinsics=np.stack([FRAMES[i].K for i in indices]), pose_method="camera_head", sky=sky)


def run(pipeline, frames, known=False, stamps=None):
    outputs = []
    for n, frame in enumerate(frames):
        stamp = frame.stamp_ns if stamps is None else stamps[n]
        pose = frame.camera_to_world if known else None
        outputs.append(pipeline.process(DepthInput(frame.rgb, stamp, frame.K, pose)))
    return outputs


def relative_truth(index, first=0):
    return np.linalg.inv(FRAMES[first].camera_to_world) @ FRAMES[index].camera_to_world


@pytest.mark.parametrize("window_size, keyframe_every", [(2, 1), (4, 3), (6, 2)])
def test_window_chaining_recovers_the_trajectory_and_consistent_depth(window_size, keyframe_every):
    model = ScriptedRelativeModel()
    pipeline = DepthPipeline(model, DepthPipelineConfig(window_size=window_size, keyframe_every=keyframe_every))
    outputs = run(pipeline, FRAMES)
    # Every call had its own scale; the outputs must all be in the first frame's (scale 1, frame 0's camera).
    assert len({round(model.call_scale(c[0]), 6) for c in model.calls}) > 3
    for frame, output in zip(FRAMES, outputs):
        np.testing.assert_allclose(output.camera_to_world, relative_truth(frame.index), atol=1e-9)
        np.testing.assert_allclose(output.depth, frame.depth, rtol=1e-5)
        assert output.scale_source == "window_chain" and not output.is_metric
    assert max(len(c[0]) for c in model.calls) == window_size
    assert outputs[0].new_sequence and not any(o.new_sequence for o in outputs[1:])


def test_memory_is_bounded_over_a_long_stream():
    model = ScriptedRelativeModel()
    pipeline = DepthPipeline(model, DepthPipelineConfig(window_size=4, keyframe_every=1))
    forward_and_back = FRAMES + FRAMES[::-1]
    stamps = [FRAMES[0].stamp_ns + n * 100_000_000 for n in range(len(forward_and_back))]
    for repeat in range(3):
        run(pipeline, forward_and_back, stamps=[s + repeat * 10**10 for s in stamps])
        assert pipeline.keyframes == 3
    assert all(len(indices) <= 4 for indices, _ in model.calls)


def test_known_poses_put_estimates_in_the_known_frame_in_metres():
    model = ScriptedRelativeModel()
    pipeline = DepthPipeline(model, DepthPipelineConfig(window_size=3, keyframe_every=2))
    outputs = run(pipeline, FRAMES, known=True)
    assert any(conditioned for _, conditioned in model.calls)
    for frame, output in zip(FRAMES[2:], outputs[2:]):
        np.testing.assert_allclose(output.camera_to_world, frame.camera_to_world, atol=1e-9)
        np.testing.assert_allclose(output.depth, frame.depth, rtol=1e-5)
        assert output.is_metric and output.scale_source == "known_poses"


def test_metric_model_keeps_its_scale_and_sky_becomes_infinity():
    model = ScriptedRelativeModel(metric=True, sky=True)
    pipeline = DepthPipeline(model, DepthPipelineConfig(window_size=3, keyframe_every=1))
    outputs = run(pipeline, FRAMES[:8])
    for frame, output in zip(FRAMES[:8], outputs):
        assert output.is_metric and output.scale_source == "model" and output.scale == 1.0
        assert np.all(np.isinf(output.depth[:5])) and np.allclose(output.depth[5:], frame.depth[5:], rtol=1e-6)
        assert len(output.points) == (48 - 5) * 64  # sky never reaches the cloud
        np.testing.assert_allclose(output.camera_to_world, relative_truth(frame.index), atol=1e-9)


def test_time_going_backwards_starts_a_new_sequence():
    model = ScriptedRelativeModel()
    pipeline = DepthPipeline(model, DepthPipelineConfig(window_size=3, keyframe_every=1))
    run(pipeline, FRAMES[:10])
    assert pipeline.keyframes == 2
    output = pipeline.process(DepthInput(FRAMES[5].rgb, FRAMES[5].stamp_ns, FRAMES[5].K))
    assert output.new_sequence and output.window_size == 1
    np.testing.assert_allclose(output.camera_to_world, np.eye(4))


def test_cloud_is_the_unprojected_depth_with_image_colours():
    model = ScriptedRelativeModel()
    pipeline = DepthPipeline(model, DepthPipelineConfig(window_size=1, cloud_stride=2))
    frame = FRAMES[0]
    output = pipeline.process(DepthInput(frame.rgb, frame.stamp_ns, frame.K))
    assert output.camera_to_world is None and output.pose_method == "none"
    rows, cols = np.mgrid[0:48:2, 0:64:2]
    z = frame.depth[rows, cols].ravel()
    expected = np.stack([(cols.ravel() - frame.K[0, 2]) * z / frame.K[0, 0],
                         (rows.ravel() - frame.K[1, 2]) * z / frame.K[1, 1], z], axis=1)
    np.testing.assert_allclose(output.points, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(output.colors, frame.rgb[rows, cols].reshape(-1, 3))


def test_confidence_threshold_and_max_depth_filter_the_cloud():
    model = ScriptedRelativeModel()
    frame = FRAMES[0]
    far = float(np.median(frame.depth))
    pipeline = DepthPipeline(model, DepthPipelineConfig(max_cloud_depth=far, confidence_threshold=2.0))
    assert len(pipeline.process(DepthInput(frame.rgb, frame.stamp_ns, frame.K)).points) == 0  # all conf = 1
    pipeline = DepthPipeline(model, DepthPipelineConfig(max_cloud_depth=far))
    output = pipeline.process(DepthInput(frame.rgb, frame.stamp_ns, frame.K))
    assert len(output.points) == int((frame.depth <= far).sum()) and output.points[:, 2].max() <= far


def test_configuration_that_does_not_fit_the_model_is_refused():
    single = ScriptedRelativeModel()
    single.capabilities = DepthCapabilities(metric=False, multi_view=False)
    with pytest.raises(ValueError, match="window_size 4 needs a multi-view model"):
        DepthPipeline(single, DepthPipelineConfig(window_size=4))
    with pytest.raises(ValueError, match="cannot estimate poses with 'ray'"):
        DepthPipeline(ScriptedRelativeModel(), DepthPipelineConfig(pose_method="ray"))


def test_real_da3_network_runs_a_window(da3_small_checkpoint):
    from perception_fm.hookspecs import ModelOptions, Task
    from perception_fm.plugin_manager import PluginManager

    model = PluginManager(entry_points=False).create(
        Task.DEPTH, "da3-small", ModelOptions(weights=str(da3_small_checkpoint), device="cpu",
                                              extra={"process_res": 56}))
    pipeline = DepthPipeline(model, DepthPipelineConfig(window_size=3, keyframe_every=1, pose_method="ray"))
    outputs = run(pipeline, FRAMES[:5])
    last = outputs[-1]
    assert last.window_size == 3 and last.depth.shape == (42, 56) and last.pose_method == "ray"
    assert np.all(np.isfinite(last.camera_to_world)) and np.all(last.depth > 0)
    assert last.points.shape[1] == 3 and len(last.points) == len(last.colors) == 42 * 56
