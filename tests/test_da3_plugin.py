"""The DA3 plugin with the real network (random weights) saved and loaded through the real loading code."""
import json

import numpy as np
import pytest
import torch

from perception_fm.errors import BadInputError, WeightsMismatchError, WeightsNotFoundError
from perception_fm.hookspecs import ModelOptions, Task
from perception_fm.plugin_manager import PluginManager
from perception_fm.plugins import da3
from perception_fm.tasks.depth import DepthModel

MANAGER = PluginManager(entry_points=False)


def load(directory, **extra):
    options = ModelOptions(weights=str(directory), device="cpu", extra={"process_res": 70, **extra})
    return MANAGER.create(Task.DEPTH, "da3-small", options)


@pytest.fixture(scope="module")
def model(da3_small_checkpoint):
    return load(da3_small_checkpoint)


def rgb(height=48, width=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def K_for(height=48, width=64, f=50.0):
    return np.array([[f, 0, width / 2 - 0.5], [0, f * 1.1, height / 2 - 0.5], [0, 0, 1]])


def test_loaded_weights_are_the_saved_ones(model, da3_small_checkpoint):
    assert isinstance(model, DepthModel)
    assert model.weights == str(da3_small_checkpoint) and model.device == "cpu"
    torch.manual_seed(1234)
    reference = da3.build_network("da3-small").eval()
    for (name, ours), (_, theirs) in zip(model.net.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(ours, theirs), name


def test_prediction_matches_the_network_called_directly(model):
    view = model.prepare(rgb(), K_for())
    prediction = model.predict([view])
    with torch.inference_mode():
        direct = model.net(view.data[None, None], use_ray_pose=False, ref_view_strategy="first")
    np.testing.assert_allclose(prediction.depth[0], direct["depth"][0, 0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(prediction.confidence[0], direct["depth_conf"][0, 0].numpy(), rtol=1e-6)
    assert prediction.is_metric is False


def test_prepare_resizes_to_patch_multiples_and_scales_intrinsics(model):
    view = model.prepare(rgb(48, 64), K_for(48, 64))
    assert view.size == (56, 70) and view.image_size == (48, 64)  # 70 / 64 * 48 = 52.5 -> 56
    assert tuple(view.data.shape) == (3, 56, 70) and view.data.dtype == torch.float32
    sx, sy = 70 / 64, 56 / 48
    np.testing.assert_allclose(view.intrinsics[0, 0], 50 * sx)
    np.testing.assert_allclose(view.intrinsics[1, 2], (23.5 + 0.5) * sy - 0.5)
    # normalisation: a mid-grey image becomes (0.5 - mean) / std
    grey = model.prepare(np.full((14, 14, 3), 128, np.uint8))
    expected = (128 / 255 - np.array(da3.IMAGENET_MEAN)) / np.array(da3.IMAGENET_STD)
    np.testing.assert_allclose(grey.data.mean(dim=(1, 2)).numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("image, reason", [
    (np.zeros((48, 64), np.uint8), "encoding"),
    (np.zeros((48, 64, 3), np.float32), "encoding"),
    (np.zeros((1, 64, 3), np.uint8), "empty"),
])
def test_prepare_rejects_bad_images(model, image, reason):
    with pytest.raises(BadInputError) as caught:
        model.prepare(image)
    assert caught.value.reason == reason


@pytest.mark.parametrize("pose_method", ["camera_head", "ray"])
def test_multi_view_poses_are_relative_to_the_first_view(model, pose_method):
    views = [model.prepare(rgb(seed=i), K_for()) for i in range(3)]
    prediction = model.predict(views, dense_views=[-1], pose_method=pose_method)
    assert prediction.views == [2] and prediction.depth.shape == (1, 56, 70)
    assert prediction.pose_method == pose_method
    w2c = prediction.world_to_camera
    assert w2c.shape == (3, 4, 4)
    np.testing.assert_allclose(w2c[0], np.eye(4), atol=1e-6)
    rotations = w2c[:, :3, :3]
    np.testing.assert_allclose(rotations @ rotations.transpose(0, 2, 1), np.broadcast_to(np.eye(3), (3, 3, 3)),
                               atol=1e-4)
    assert np.all(np.linalg.det(rotations) > 0)
    K = prediction.intrinsics
    assert K.shape == (3, 3, 3) and np.all(np.isfinite(K))


def test_known_poses_condition_the_network(model):
    views = [model.prepare(rgb(seed=i), K_for()) for i in range(3)]
    known = np.stack([np.eye(4)] * 3)
    known[1, :3, 3] = [0.5, 0, 0]
    known[2, :3, 3] = [1.0, 0.1, 0]
    free = model.predict(views, dense_views=[-1])
    conditioned = model.predict(views, dense_views=[-1], known_world_to_camera=known)
    assert conditioned.depth.shape == free.depth.shape
    assert not np.allclose(conditioned.depth, free.depth)  # the camera tokens changed the computation
    with pytest.raises(ValueError, match="intrinsics"):
        model.predict([model.prepare(rgb())] * 2, known_world_to_camera=known[:2])


def test_missing_directory_and_files_are_clear_errors(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="lack config.json, model.safetensors"):
        load(tmp_path)
    with pytest.raises(WeightsNotFoundError):
        load(tmp_path / "does-not-exist")


def test_hub_id_offline_without_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    options = ModelOptions(weights="depth-anything/DA3-SMALL", device="cpu", offline=True)
    with pytest.raises(WeightsNotFoundError, match="offline mode is on.*hf download depth-anything/DA3-SMALL"):
        MANAGER.create(Task.DEPTH, "da3-small", options)


def test_checkpoint_missing_tensors_is_refused_not_left_random(tmp_path):
    from safetensors.torch import load_file, save_file

    net = da3.build_network("da3-small")
    directory = da3.save_pretrained(net, tmp_path / "ckpt", "da3-small")
    state = load_file(str(directory / "model.safetensors"))
    dropped = sorted(k for k in state if "head" in k)[:3]
    save_file({k: v for k, v in state.items() if k not in dropped}, str(directory / "model.safetensors"))
    with pytest.raises(WeightsMismatchError, match="lacks 3 of the network's tensors"):
        load(directory)


def test_checkpoint_for_another_architecture_is_refused(da3_small_checkpoint, tmp_path):
    import shutil

    directory = tmp_path / "renamed"
    shutil.copytree(da3_small_checkpoint, directory)
    (directory / "config.json").write_text(json.dumps({"model_name": "da3-base"}))
    with pytest.raises(WeightsMismatchError, match="are for 'da3-base'"):
        load(directory)


def test_metric_variant_scales_by_focal_length_and_needs_intrinsics():
    model = MANAGER.create(Task.DEPTH, "da3metric-large",
                           ModelOptions(random_weights=True, device="cpu", extra={"process_res": 42}))
    assert model.weights == "random-init" and model.capabilities.metric and model.capabilities.needs_intrinsics
    view = model.prepare(rgb(28, 42), K_for(28, 42, f=84.0))
    prediction = model.predict([view])
    with torch.inference_mode():
        raw = model.net(view.data[None, None])["depth"][0, 0].numpy()
    focal = (view.intrinsics[0, 0] + view.intrinsics[1, 1]) / 2
    np.testing.assert_allclose(prediction.depth[0], raw * focal / 300.0, rtol=1e-5)
    assert prediction.is_metric and prediction.world_to_camera is None and prediction.confidence is None
    assert prediction.sky is not None and prediction.sky.dtype == bool
    with pytest.raises(BadInputError, match="needs camera intrinsics"):
        model.predict([model.prepare(rgb(28, 42))])


def test_single_view_models_refuse_windows():
    model = MANAGER.create(Task.DEPTH, "da3mono-large",
                           ModelOptions(random_weights=True, device="cpu", extra={"process_res": 28}))
    view = model.prepare(rgb(28, 28))
    with pytest.raises(ValueError, match="single-view"):
        model.predict([view, view])


@pytest.mark.slow
@pytest.mark.parametrize("pose_method", ["camera_head", "ray"])
def test_nested_variant_gives_metric_depth_and_poses(pose_method, da3_nested_model):
    K = K_for(28, 42, f=40.0)
    views = [da3_nested_model.prepare(rgb(28, 42, seed=i), K) for i in range(2)]
    prediction = da3_nested_model.predict(views, pose_method=pose_method)
    size = views[0].size  # depth comes out at the processed size: the smallest, one patch a side
    assert size == (14, 14)
    # Random weights: the cameras are arbitrary (the ray solve may return a focal of a few hundredths of a pixel,
    # which the nested net's own metric scaling turns into depths of ~0), so only finite, non-negative depth.
    assert prediction.is_metric and prediction.depth.shape == (2, *size)
    assert np.all(np.isfinite(prediction.depth)) and np.all(prediction.depth >= 0)
    assert prediction.world_to_camera.shape == (2, 4, 4) and prediction.sky.shape == (2, *size)
    np.testing.assert_allclose(prediction.world_to_camera[0], np.eye(4), atol=1e-5)
