"""The ONNX backend of DA3 (perception_fm.plugins.da3_onnx) against our PyTorch plugin on the same weights.

The real DA3-Small architecture with random weights (conftest's da3_small_checkpoint) at a tiny size
(process_res 70: 70x56 pixels), on real photos (scikit-image's bundled images). Every export costs ~10 s on
one core, so the graphs are few and shared: a fixed 1-view graph (exported twice: once more after its cache
entry is damaged), a dynamic 3-4 view graph, a 2-view graph with known poses and a 1-view ray graph.
"""
import logging
import sys

import numpy as np
import pytest

from perception_fm.errors import BadInputError, PluginUnavailableError
from perception_fm.hookspecs import ModelOptions, Task
from perception_fm.plugin_manager import PluginManager
from perception_fm.plugins import da3_onnx

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (dev extra) provides the photos")

MANAGER = PluginManager(entry_points=False)
PROCESS_RES = 70
TOLERANCE = 1e-4  # fp32, relative to the largest magnitude of the reference output


def photos() -> list[np.ndarray]:
    """Four real photos cropped to 4:3, so that all share one processed size (70x56)."""
    images = [skimage_data.astronaut(), skimage_data.coffee(), skimage_data.chelsea(), skimage_data.rocket()]
    cropped = []
    for image in images:
        height = min(image.shape[0], image.shape[1] * 3 // 4)
        cropped.append(np.ascontiguousarray(image[:height, : height * 4 // 3]))
    return cropped


def intrinsics_for(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    return np.array([[0.9 * width, 0, (width - 1) / 2], [0, 0.9 * width, (height - 1) / 2], [0, 0, 1]])


def create(name, checkpoint, **extra):
    return MANAGER.create(Task.DEPTH, name, ModelOptions(weights=str(checkpoint), device="cpu",
                                                         extra={"process_res": PROCESS_RES, **extra}))


def relative_error(ours, reference) -> float:
    return float(np.max(np.abs(np.asarray(ours) - reference)) / np.max(np.abs(reference)))


def assert_same_prediction(ours, reference, fields=("depth", "confidence", "world_to_camera", "intrinsics")):
    for field in fields:
        expected, got = getattr(reference, field), getattr(ours, field)
        assert got is not None and got.shape == expected.shape, field
        assert relative_error(got, expected) <= TOLERANCE, (field, relative_error(got, expected))
    assert ours.pose_method == reference.pose_method and ours.views == reference.views


@pytest.fixture(scope="module")
def torch_model(da3_small_checkpoint):
    return create("da3-small", da3_small_checkpoint)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("da3-onnx-cache")


@pytest.fixture(scope="module")
def one_view_key(da3_small_checkpoint, cache_dir):
    """The fixed 1-view graph exported into the module's cache by a first model."""
    model = create("da3-small-onnx", da3_small_checkpoint, onnx_views="1", onnx_cache_dir=str(cache_dir))
    key = model.prebuild(1, (56, 70))
    assert model.cache.exports == 1 and model.cache.check(key) is None
    return key


@pytest.fixture(scope="module")
def onnx_model(da3_small_checkpoint, cache_dir, one_view_key):
    """A second model on the same cache: any view count, graphs exported on first use."""
    return create("da3-small-onnx", da3_small_checkpoint, onnx_cache_dir=str(cache_dir))


def test_listed_next_to_the_pytorch_models():
    names = {entry.spec.name for entry in MANAGER.models(Task.DEPTH)}
    assert {"da3-small-onnx", "da3-base-onnx", "da3-large-onnx", "da3-giant-onnx"} <= names
    # single-view/metric/nested DA3 branch on their data in Python: not exported
    assert "da3mono-large-onnx" not in names


def test_second_model_loads_the_cached_graph_without_exporting(onnx_model, one_view_key):
    assert onnx_model.prebuild(1, (56, 70)) == one_view_key
    assert onnx_model.cache.exports == 0 and onnx_model.cache.rebuilds == 0


def test_prepare_command_finds_the_cached_graph(da3_small_checkpoint, cache_dir, one_view_key, capsys):
    assert da3_onnx.main(["--model", "da3-small", "--weights", str(da3_small_checkpoint), "--device", "cpu",
                          "--process-res", str(PROCESS_RES), "--image-size", "64x48", "--views", "1",
                          "--cache-dir", str(cache_dir)]) == 0
    printed = capsys.readouterr().out
    assert str(da3_onnx.GraphCache(cache_dir).entry(one_view_key)) in printed and "(0 exported, 0 rebuilt)" in printed


def test_one_view_matches_pytorch_on_photos(onnx_model, torch_model):
    for image in photos():
        K = intrinsics_for(image)
        reference = torch_model.predict([torch_model.prepare(image, K)])
        ours = onnx_model.predict([onnx_model.prepare(image, K)])
        assert_same_prediction(ours, reference)
    assert onnx_model.cache.exports == 0  # every call ran the cached fixed graph


def test_dynamic_view_axis_matches_pytorch_for_each_count(da3_small_checkpoint, cache_dir, torch_model):
    model = create("da3-small-onnx", da3_small_checkpoint, onnx_views="3-4", onnx_cache_dir=str(cache_dir))
    images = photos()
    for count in (3, 4):  # reference-view selection (3+ views) runs inside the graph
        views = [(image, intrinsics_for(image)) for image in images[:count]]
        reference = torch_model.predict([torch_model.prepare(*view) for view in views])
        ours = model.predict([model.prepare(*view) for view in views])
        assert_same_prediction(ours, reference)
        assert not np.allclose(ours.world_to_camera[1], np.eye(4))  # a real pose, not the identity of view 0
    assert model.cache.exports == 1  # one graph with a dynamic view axis served both counts
    with pytest.raises(BadInputError, match=r"3 to 4 views \(onnx_views\), got 2") as error:
        model.predict([model.prepare(images[0]), model.prepare(images[1])])
    assert error.value.reason == "view_count"


def test_known_poses_condition_the_graph_like_pytorch(onnx_model, torch_model):
    images = photos()[:2]
    world_to_camera = np.stack([np.eye(4), np.eye(4)])
    world_to_camera[1, :3, 3] = [0.3, -0.05, 0.1]
    c, s = np.cos(0.2), np.sin(0.2)
    world_to_camera[1, :3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    predictions = []
    for model in (torch_model, onnx_model):
        views = [model.prepare(image, intrinsics_for(image)) for image in images]
        predictions.append(model.predict(views, known_world_to_camera=world_to_camera))
    assert_same_prediction(predictions[1], predictions[0])
    unconditioned = torch_model.predict([torch_model.prepare(image, intrinsics_for(image)) for image in images])
    assert relative_error(unconditioned.depth, predictions[0].depth) > 1e-3  # the poses did change the output


def test_ray_graph_outputs_match_the_pytorch_network(onnx_model):
    """The ray path: the graph ends at the ray map, our solver (shared with the PyTorch plugin) runs after it.
    The raw outputs are compared (a random network's rays make the pose solve itself ill-conditioned)."""
    import torch

    view = onnx_model.prepare(photos()[1])
    x = view.data[None, None]
    session = onnx_model.session(onnx_model.graph_key(1, view.size, ray=True, conditioned=False))
    outputs = session.run(None, {"images": x.numpy()})
    with torch.inference_mode():
        features, _ = onnx_model.net.backbone(x, cam_token=None, export_feat_layers=[],
                                              ref_view_strategy=onnx_model.ref_view_strategy)
        head = onnx_model.net.head(features, *view.size, patch_start_idx=0)
    for name, got in zip(da3_onnx.output_names(ray=True), outputs):
        assert relative_error(got, head[name].numpy()) <= TOLERANCE, name
    prediction = onnx_model.predict([view], pose_method="ray")
    assert prediction.pose_method == "ray" and np.isfinite(prediction.intrinsics).all()


def test_damaged_cache_entry_is_detected_logged_and_rebuilt(da3_small_checkpoint, cache_dir, one_view_key,
                                                            torch_model, caplog):
    entry = da3_onnx.GraphCache(cache_dir).entry(one_view_key)
    data = entry / da3_onnx.DATA_FILE
    # An interrupted copy: the weights' tail is lost. A new file replaces it (not a truncation in place: the
    # other models' sessions may map the old one).
    damaged = entry / "damaged.tmp"
    damaged.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    damaged.replace(data)
    model = create("da3-small-onnx", da3_small_checkpoint, onnx_views="1", onnx_cache_dir=str(cache_dir))
    with caplog.at_level(logging.WARNING, logger=da3_onnx.__name__):
        model.prebuild(1, (56, 70))
    assert model.cache.rebuilds == 1 and model.cache.exports == 1
    assert any("damaged" in record.getMessage() and str(entry) in record.getMessage() for record in caplog.records)
    assert model.cache.check(one_view_key) is None
    image = photos()[2]
    assert_same_prediction(model.predict([model.prepare(image)]), torch_model.predict([torch_model.prepare(image)]),
                           fields=("depth", "confidence", "intrinsics"))


def test_interrupted_export_leaves_no_entry(onnx_model, tmp_path, monkeypatch):
    def export_then_fail(net, key, path):
        path.write_bytes(b"\x08\x07half an onnx graph")
        raise KeyboardInterrupt  # the process stopped mid-export

    monkeypatch.setattr(da3_onnx, "export_graph", export_then_fail)
    cache = da3_onnx.GraphCache(tmp_path / "cache")
    key = onnx_model.graph_key(1, (56, 70), ray=False, conditioned=False)
    with pytest.raises(KeyboardInterrupt):
        cache.build(key, onnx_model.net)
    assert cache.check(key) == "absent" and list(cache.directory.iterdir()) == []


def test_fixed_view_count_rejects_other_counts(da3_small_checkpoint, cache_dir):
    model = create("da3-small-onnx", da3_small_checkpoint, onnx_views="1", onnx_cache_dir=str(cache_dir))
    image = photos()[0]
    with pytest.raises(BadInputError, match=r"configured for 1 views \(onnx_views\), got 2"):
        model.predict([model.prepare(image), model.prepare(image)])
    assert model.cache.exports == 0


@pytest.mark.parametrize("extra, message", [
    ({"onnx_views": "0"}, "onnx_views must be"),
    ({"onnx_views": "5-3"}, "onnx_views must be"),
    ({"onnx_views": "many"}, "onnx_views must be"),
    ({"onnx_providers": "NoSuchExecutionProvider"}, "not available here; available"),
])
def test_bad_options_fail_at_configure(da3_small_checkpoint, extra, message):
    with pytest.raises(ValueError, match=message):
        create("da3-small-onnx", da3_small_checkpoint, **extra)


def test_missing_onnxruntime_names_the_extra(da3_small_checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(PluginUnavailableError, match=r"onnxruntime.*pip install 'perception_fm\[onnx\]'"):
        create("da3-small-onnx", da3_small_checkpoint)


def test_view_segments_follow_upstream_control_flow():
    assert [da3_onnx.segment_of(n) for n in (1, 2, 3, 8, 9, 16, 17)] == [
        (1, 1), (2, 2), (3, 8), (3, 8), (9, 16), (9, 16), (17, 24)]
    assert da3_onnx.graph_views(5, (4, 12)) == (4, 8) and da3_onnx.graph_views(12, (4, 12)) == (9, 12)


def test_auto_providers_follow_the_device():
    available = [da3_onnx.TENSORRT, da3_onnx.CUDA, da3_onnx.CPU]
    assert da3_onnx.choose_providers("auto", "cpu", available) == [da3_onnx.CPU]
    assert da3_onnx.choose_providers("auto", "cuda:0", available) == available
    assert da3_onnx.choose_providers("auto", "cuda", [da3_onnx.CPU]) == [da3_onnx.CPU]
    assert da3_onnx.choose_providers(f"{da3_onnx.CUDA}, {da3_onnx.CPU}", "cuda", available) == available[1:]


def test_memory_estimate_counts_the_fp32_weights_twice_on_the_cpu():
    options = ModelOptions(device="cpu", extra={"process_res": PROCESS_RES})
    onnx = MANAGER.estimate_memory(Task.DEPTH, "da3-small-onnx", options, {"views": 2})
    eager = MANAGER.estimate_memory(Task.DEPTH, "da3-small", options, {"views": 2})
    assert onnx.parameter_bytes == 2 * eager.parameter_bytes and onnx.dtype == "float32"
    assert "ONNX Runtime" in onnx.note


def test_compile_switch_is_off_by_default_and_validated(torch_model, da3_small_checkpoint):
    from perception_fm.plugins import da3

    assert torch_model.compile_mode == "off"
    assert torch_model.net.backbone._compiled_call_impl is None  # the eager upstream network
    assert [da3.compile_mode(v) for v in (True, False, "max-autotune")] == ["default", "off", "max-autotune"]
    with pytest.raises(ValueError, match="compile must be one of"):
        create("da3-small", da3_small_checkpoint, compile="fastest")


def test_depth_node_parameters_reach_the_onnx_backend(da3_small_checkpoint, tmp_path, monkeypatch):
    """A node's parameters (depth_io's table, defaults + a config's values) are what the backend is built with;
    empty providers / cache fall back to the environment."""
    from pathlib import Path

    from perception_fm.nodes.node_base import model_options
    from perception_fm.nodes.params import MODEL_PARAMS
    from perception_fm.ros import depth_io

    values = {param.name: param.default for param in MODEL_PARAMS + depth_io.DEPTH_PARAMS}
    values.update(model="da3-small-onnx", weights=str(da3_small_checkpoint), device="cpu", onnx_views="2-4",
                  onnx_cache_dir=str(tmp_path / "node-cache"), process_res=PROCESS_RES)
    model = MANAGER.create(Task.DEPTH, "da3-small-onnx", model_options(values, depth_io.MODEL_EXTRA_PARAMS))
    assert model.served_views == (2, 4)
    assert Path(model.cache.directory) == tmp_path / "node-cache"
    assert model.providers == ["CPUExecutionProvider"]

    monkeypatch.setenv(da3_onnx.CACHE_ENV, str(tmp_path / "env-cache"))
    values.update(onnx_cache_dir="", onnx_views="bad")
    with pytest.raises(ValueError, match="onnx_views"):
        MANAGER.create(Task.DEPTH, "da3-small-onnx", model_options(values, depth_io.MODEL_EXTRA_PARAMS))
    values.update(onnx_views="auto")
    model = MANAGER.create(Task.DEPTH, "da3-small-onnx", model_options(values, depth_io.MODEL_EXTRA_PARAMS))
    assert Path(model.cache.directory) == tmp_path / "env-cache"
