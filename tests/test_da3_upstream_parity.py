"""Our DA3 path against upstream's own code (the installed depth-anything-3 package) on identical random weights:
processed sizes (upper_bound_resize), the resampled pixels, the reference-view strategies through
DepthAnything3.inference(), and one pixel convention for both pose methods.

Upstream's api imports torchvision, moviepy, pycolmap, imageio and plyfile for its exporters; where they are
missing, stand-ins from tests/upstream_stubs are importable only while upstream is imported (see its README).
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from perception_fm.hookspecs import ModelOptions, Task
from perception_fm.plugin_manager import PluginManager
from perception_fm.plugins import da3

STUBS = Path(__file__).parent / "upstream_stubs"
STUBBED = ("torchvision", "moviepy", "pycolmap", "imageio", "plyfile")
MANAGER = PluginManager(entry_points=False)


@pytest.fixture(scope="module")
def upstream():
    """(InputProcessor class, DepthAnything3 class, unproject_depth) from the installed package."""
    missing = [name for name in STUBBED if importlib.util.find_spec(name) is None]
    before = set(sys.modules)
    if missing:
        sys.path.insert(0, str(STUBS))
    try:
        api = importlib.import_module("depth_anything_3.api")
        processor = importlib.import_module("depth_anything_3.utils.io.input_processor")
        geometry = importlib.import_module("depth_anything_3.utils.geometry")
    finally:
        if missing:
            sys.path.remove(str(STUBS))
            # Nothing else in the session may see the stand-ins (or an api that imported them).
            for name in set(sys.modules) - before:
                if name.split(".")[0] in missing or name.startswith("depth_anything_3.api") \
                        or name.startswith("depth_anything_3.utils.export"):
                    del sys.modules[name]
    return processor.InputProcessor, api.DepthAnything3, geometry.unproject_depth


@pytest.fixture(scope="module")
def loaded(da3_small_checkpoint):
    return MANAGER.create(Task.DEPTH, "da3-small", ModelOptions(weights=str(da3_small_checkpoint), device="cpu",
                                                                extra={"process_res": 70}))


def model_like(loaded, **options):
    """Another Da3DepthModel on the same network (same weights), with other options."""
    settings = dict(process_res=loaded.process_res, pose_method=loaded.pose_method, resize=loaded.resize,
                    ref_view_strategy=loaded.ref_view_strategy)
    settings.update(options)
    return da3.Da3DepthModel(loaded.variant, loaded.net, weights=loaded.weights, device="cpu", **settings)


@functools.lru_cache(maxsize=1)
def photographs() -> tuple[np.ndarray, ...]:
    """Real photographs where an installed package ships one (matplotlib's sample Grace Hopper portrait), plus
    frames of our synthetic textured room; crops and rescales of them give shrinking, enlarging and mixed
    cases of both resize steps."""
    images = []
    try:
        import matplotlib.cbook

        import cv2

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
            data = np.frombuffer(handle.read(), np.uint8)
        photo = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        images += [photo, photo[40:340, 10:410], cv2.resize(photo, (1280, 800), interpolation=cv2.INTER_CUBIC),
                   photo[:435, :]]
    except (ImportError, OSError, FileNotFoundError):
        pass
    from perception_fm.bench.common import sample_frames

    room = sample_frames(2)
    images += [room[0], room[1][:400, :], room[1][100:240, 200:431]]
    return tuple(np.ascontiguousarray(image) for image in images)


# ----------------------------------------------------------------------------------------------------------
# 1. Processed size


def upstream_size(InputProcessor, height: int, width: int, process_res: int) -> tuple[int, int]:
    _, size, _, _ = InputProcessor()._process_one(np.zeros((height, width, 3), np.uint8), process_res=process_res,
                                                   process_res_method="upper_bound_resize")
    return tuple(size)


def test_processed_size_is_upstreams_for_every_size_of_a_grid(upstream):
    InputProcessor = upstream[0]
    rng = np.random.default_rng(0)
    cases = [(h, w, 70) for h in range(7, 160, 3) for w in range(7, 160, 5)]  # every ratio at a small scale
    cameras = [(800, 1280), (400, 640), (1200, 1920), (435, 640), (480, 640), (720, 1280), (1080, 1920),
               (480, 848), (768, 1024), (480, 752), (1536, 2048), (376, 504), (504, 378)]
    cases += [(h, w, res) for h, w in cameras for res in (504, 518, 280)]
    cases += [(int(h), int(w), 504) for h, w in rng.integers(60, 2000, (150, 2))]
    different = [(h, w, res, da3.processed_size(h, w, res), upstream_size(InputProcessor, h, w, res))
                 for h, w, res in cases
                 if min(da3.bounded_size(h, w, res)) >= 7  # below, upstream snaps a side to 1 px (no network input)
                 and da3.processed_size(h, w, res) != upstream_size(InputProcessor, h, w, res)]
    assert not different, different[:10]
    # The cases the issue names (the previous single rounding gave 308 and 336 rows).
    assert da3.processed_size(800, 1280, 504) == (322, 504)
    assert da3.processed_size(435, 640, 504) == (350, 504)


# ----------------------------------------------------------------------------------------------------------
# 2. Resampling


def test_default_resize_gives_upstreams_pixels_on_photographs(upstream, loaded):
    InputProcessor = upstream[0]
    assert loaded.resize == "upstream"
    for process_res in (504, 70):
        model = model_like(loaded, process_res=process_res)
        for image in photographs():
            theirs, _, _ = InputProcessor()([image], process_res=process_res, num_workers=1)
            ours = model.prepare(image).data
            assert ours.shape == theirs[0].shape, image.shape
            # Same uint8 pixels and the same float operations: equal bit for bit.
            assert torch.equal(ours, theirs[0]), (image.shape, (ours - theirs[0]).abs().max())


def test_fast_resize_stays_close_to_upstreams_pixels(upstream, loaded):
    """The option trades exactness for no host work; its difference, in 1/255 of the input range."""
    InputProcessor = upstream[0]
    model = model_like(loaded, process_res=504, resize="fast")
    std = torch.tensor(da3.IMAGENET_STD).view(3, 1, 1)
    means, peaks = [], []
    for image in photographs():
        theirs, _, _ = InputProcessor()([image], process_res=504, num_workers=1)
        difference = ((model.prepare(image).data - theirs[0]) * std).abs() * 255
        means.append(float(difference.mean()))
        peaks.append(float(difference.max()))
    assert max(peaks) > 1.0  # really another resampling
    assert max(means) < 3.0, means  # yet the same image: a few levels at edges, well under one level on average


# ----------------------------------------------------------------------------------------------------------
# 3. Reference view


def fp32_upstream(DepthAnything3, model, monkeypatch):
    """Upstream's api around our network. Its forward() autocasts to fp16 wherever CUDA lacks bf16 (always on a
    CPU); our CPU path is fp32, so the api's network call is made in fp32 - everything else is upstream's."""
    api = DepthAnything3(model_name="da3-small")
    api.model = model.net

    def forward(image, extrinsics=None, intrinsics=None, export_feat_layers=None, infer_gs=False,
                use_ray_pose=False, ref_view_strategy="saddle_balanced"):
        with torch.no_grad():
            return api.model(image, extrinsics, intrinsics, export_feat_layers, infer_gs, use_ray_pose,
                             ref_view_strategy)

    monkeypatch.setattr(api, "forward", forward)
    return api


def test_reference_view_default_and_choices_are_upstreams(loaded):
    import inspect

    from depth_anything_3.model.reference_view_selector import RefViewStrategy

    assert set(da3.REF_VIEW_STRATEGIES) == set(RefViewStrategy.__args__)
    net_default = inspect.signature(type(loaded.net).forward).parameters["ref_view_strategy"].default
    assert loaded.ref_view_strategy == da3.DEFAULT_REF_VIEW_STRATEGY == net_default
    with pytest.raises(ValueError, match="ref_view_strategy"):
        model_like(loaded, ref_view_strategy="best")


@pytest.mark.parametrize("strategy", da3.REF_VIEW_STRATEGIES)
def test_each_reference_view_strategy_equals_upstream_inference(strategy, upstream, loaded, monkeypatch):
    DepthAnything3 = upstream[1]
    rng = np.random.default_rng(3)
    images = [image[: 300, : 400] for image in photographs()][:4]
    while len(images) < 4:
        images.append(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    model = model_like(loaded, ref_view_strategy=strategy)
    ours = model.predict([model.prepare(image) for image in images])
    theirs = fp32_upstream(DepthAnything3, model, monkeypatch).inference(
        images, ref_view_strategy=strategy, process_res=70)
    np.testing.assert_allclose(ours.depth, theirs.depth, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.confidence, theirs.conf, rtol=1e-5, atol=1e-6)
    # Upstream's world is the reference view's camera; ours is view 0's, whichever view was the reference.
    w2c = da3._homogeneous(theirs.extrinsics.astype(np.float64))
    np.testing.assert_allclose(ours.world_to_camera, w2c @ np.linalg.inv(w2c[0]), atol=2e-5)
    np.testing.assert_allclose(ours.intrinsics, da3.from_upstream_pixel_convention(theirs.intrinsics), rtol=1e-5)
    if strategy == "middle":  # view 2 of 4 as the reference really changes the computation
        first = model_like(loaded, ref_view_strategy="first").predict([model.prepare(image) for image in images])
        assert not np.allclose(first.depth, ours.depth)


# ----------------------------------------------------------------------------------------------------------
# 5. One pixel convention for both pose methods


def test_both_pose_methods_give_the_same_intrinsics_for_the_same_camera(upstream, loaded, monkeypatch):
    """Both heads are made to predict the same plausible cameras (random weights predict degenerate ones): the
    camera head a fixed pose encoding (translation, quaternion, fields of view), the ray head the rays of the
    cameras upstream decodes from it, built with upstream's own unprojection of its normalised grid. Both
    methods must then report the same K, in ROS's convention (pixel centres at integers)."""
    unproject_depth = upstream[2]
    model = model_like(loaded, ref_view_strategy="first")
    views = [model.prepare(image[:300, :400]) for image in photographs()[:3]]
    height, width = views[0].size
    rng = np.random.default_rng(5)
    quaternions = rng.normal(size=(3, 4)) * [0.1, 0.1, 0.1, 1.0]
    encoding = np.concatenate([rng.normal(size=(3, 3)), quaternions / np.linalg.norm(quaternions, axis=1)[:, None],
                               rng.uniform(0.8, 1.3, (3, 2))], axis=1)
    encoding = torch.from_numpy(encoding).float()[None]
    monkeypatch.setattr(model.net.cam_dec, "forward", lambda *args, **kwargs: encoding)
    with torch.inference_mode():
        raw = model.net(torch.stack([v.data for v in views])[None], use_ray_pose=False, ref_view_strategy="first")
    head = model.predict(views, pose_method="camera_head")
    np.testing.assert_allclose(head.intrinsics, da3.from_upstream_pixel_convention(raw["intrinsics"][0].numpy()))

    original = model.net.head.forward

    def head_with_exact_rays(*args, **kwargs):
        output = original(*args, **kwargs)
        grid = output["ray"].shape[2:4]
        K = raw["intrinsics"].clone()  # upstream: image spans [0, W]; normalised: spans [0, 2]
        K[..., 0, :] *= 2.0 / width
        K[..., 1, :] *= 2.0 / height
        c2w = torch.linalg.inv(da3_homogeneous(raw["extrinsics"]))
        # (upstream's grid is float32, so the whole unprojection is)
        points = unproject_depth(torch.ones(1, len(views), *grid, 1), K, c2w,
                                 ixt_normalized=True, num_patches_x=grid[1], num_patches_y=grid[0])
        centres = c2w[..., :3, 3][:, :, None, None, :].expand_as(points)
        output["ray"] = torch.cat([points - centres, centres], dim=-1).to(output["ray"].dtype)
        output["ray_conf"] = torch.ones_like(output["ray_conf"])
        return output

    monkeypatch.setattr(model.net.head, "forward", head_with_exact_rays)
    ray = model.predict(views, pose_method="ray")
    np.testing.assert_allclose(ray.intrinsics, head.intrinsics, atol=2e-3)
    np.testing.assert_allclose(ray.world_to_camera, head.world_to_camera, atol=1e-4)


def da3_homogeneous(extrinsics: torch.Tensor) -> torch.Tensor:
    bottom = torch.zeros(*extrinsics.shape[:-2], 1, 4, dtype=extrinsics.dtype)
    bottom[..., 0, 3] = 1.0
    return torch.cat([extrinsics[..., :3, :], bottom], dim=-2)


# ----------------------------------------------------------------------------------------------------------
# 6. Known poses reach the network normalised as upstream's api normalises them


@pytest.mark.parametrize("views", [2, 3, 4, 5])
def test_known_poses_are_normalised_as_upstream_normalises_them(views, upstream, loaded):
    """Upstream divides the translations by torch.median of the camera distances from the first view: the lower
    middle value for an even count (a stereo pair: the clamp at 0.1, whatever its baseline)."""
    from scipy.spatial.transform import Rotation

    DepthAnything3 = upstream[1]
    rng = np.random.default_rng(views)
    w2c = np.tile(np.eye(4), (views, 1, 1))
    for i in range(views):
        w2c[i, :3, :3] = Rotation.from_rotvec(rng.normal(scale=0.2, size=3)).as_matrix()
        w2c[i, :3, 3] = rng.normal(scale=2.0, size=3)
    K = np.array([[60.0, 0, 35], [0, 60.0, 26], [0, 0, 1]])
    prepared = [loaded.prepare(image[:300, :400], K) for image in photographs()[:views]]
    ours, _ = loaded._conditioning(prepared, w2c)
    theirs = DepthAnything3._normalize_extrinsics(None, torch.from_numpy(w2c).float()[None])
    np.testing.assert_allclose(ours.cpu().numpy(), theirs.numpy(), atol=1e-5)
