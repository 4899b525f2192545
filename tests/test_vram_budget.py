"""Memory estimates (the estimate_memory hook) against real models, and the budget `perception-fm up` enforces.

Activation estimates are checked against the peak of the tensor memory a real forward pass allocates on the
CPU, measured by torch.profiler (profile_memory: every allocation and free of torch's CPU allocator, kernel
scratch included), summed in time order. The stated factor: within 1.25x either way."""
import sys
from pathlib import Path

import pytest
import torch

from perception_fm import cli
from perception_fm.hookspecs import ModelOptions, Task
from perception_fm.plugin_manager import PluginManager
from perception_fm.runtime import budget

sys.path.insert(0, str(Path(__file__).parent))
from sam3_tiny import save_tiny_sam3  # noqa: E402

ACTIVATION_FACTOR = 1.25


@pytest.fixture(scope="module")
def manager():
    return PluginManager(entry_points=False)


@pytest.fixture(scope="module")
def sam3_checkpoint(tmp_path_factory):
    return save_tiny_sam3(tmp_path_factory.mktemp("sam3"))


def parameter_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def profiled_peak(forward) -> int:
    """Peak bytes of live tensor allocations during forward() (torch.profiler's memory events in time order)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = forward()
        del result
    live = peak = 0
    for event in sorted(prof.profiler.kineto_results.events(), key=lambda e: e.start_ns()):
        if event.name() == "[memory]":
            live += event.nbytes()
            peak = max(peak, live)
    return peak


def test_da3_parameters_and_activations_match_the_real_model(manager):
    options = ModelOptions(random_weights=True, device="cpu", extra={"process_res": 140, "precision": "fp32"})
    estimate = manager.estimate_memory(Task.DEPTH, "da3-small", options, {"views": 2})
    model = manager.create(Task.DEPTH, "da3-small", options)
    assert estimate.parameters == sum(p.numel() for p in model.net.parameters())
    assert estimate.parameter_bytes == parameter_bytes(model.net)
    assert estimate.dtype == "float32"

    from perception_fm.plugins.da3 import ESTIMATE_IMAGE, processed_size

    height, width = processed_size(*ESTIMATE_IMAGE, 140)  # what the estimate assumes: a 640x480 camera
    assert estimate.workload.startswith(f"{width}x{height} px, 2 views")
    x = torch.randn(1, 2, 3, height, width)
    with torch.inference_mode():
        model.net(x)  # first call's one-time allocations (e.g. caches) out of the way
    measured = profiled_peak(lambda: model.net(x))
    assert measured > 0
    assert 1 / ACTIVATION_FACTOR <= estimate.activation_bytes / measured <= ACTIVATION_FACTOR, (
        estimate.activation_bytes, measured)


def test_activation_estimate_grows_with_resolution_and_views(manager):
    def activations(process_res, views):
        options = ModelOptions(device="cpu", extra={"process_res": process_res})
        return manager.estimate_memory(Task.DEPTH, "da3-small", options, {"views": views}).activation_bytes

    assert activations(140, 1) < activations(280, 1) < activations(280, 2)


def test_sam3_parameters_match_and_bf16_halves_them(manager, sam3_checkpoint):
    fp32 = ModelOptions(weights=str(sam3_checkpoint), device="cpu", extra={"precision": "fp32"})
    bf16 = ModelOptions(weights=str(sam3_checkpoint), device="cpu", extra={"precision": "bf16"})
    estimate32 = manager.estimate_memory(Task.SEGMENTATION, "sam3", fp32, {"concepts": 2})
    estimate16 = manager.estimate_memory(Task.SEGMENTATION, "sam3", bf16, {"concepts": 2})
    model32 = manager.create(Task.SEGMENTATION, "sam3", fp32)
    real32 = parameter_bytes(model32.network)
    del model32
    model16 = manager.create(Task.SEGMENTATION, "sam3", bf16)
    real16 = parameter_bytes(model16.network)
    assert {p.dtype for p in model16.network.parameters()} == {torch.bfloat16}
    assert estimate32.parameter_bytes == real32
    assert estimate16.parameter_bytes == real16 == real32 // 2
    assert estimate16.dtype == "bfloat16"
    assert estimate32.activation_bytes > 0


def test_da3_bf16_halves_the_backbone_on_cuda(manager):
    """On CUDA (estimated without one: nothing is loaded), bf16 stores the ViT backbone in bf16; the heads
    and camera encoder/decoder stay fp32 as upstream runs them."""
    import torch.nn as nn

    def estimate(precision):
        return manager.estimate_memory(Task.DEPTH, "da3-small",
                                       ModelOptions(device="cuda", extra={"precision": precision}), {})

    with budget.build_on_meta():
        from perception_fm.plugins.da3 import build_network

        net = build_network("da3-small")
    assert isinstance(net.backbone, nn.Module)
    backbone = sum(p.numel() for p in net.backbone.parameters())
    total = sum(p.numel() for p in net.parameters())
    assert estimate("fp32").parameter_bytes == 4 * total
    assert estimate("bf16").parameter_bytes == 4 * total - 2 * backbone
    assert backbone > 0.5 * total  # so bf16 takes off most of the fp32 bytes
    assert estimate("auto").parameter_bytes == 4 * total  # upstream's default: fp32 weights under autocast


@pytest.mark.skipif(not torch.cuda.is_available(), reason="loading weights in bf16 on a GPU needs one")
def test_da3_loads_its_backbone_in_bf16_on_cuda(manager):
    options = ModelOptions(random_weights=True, device="cuda", extra={"precision": "bf16", "process_res": 140})
    model = manager.create(Task.DEPTH, "da3-small", options)
    estimate = manager.estimate_memory(Task.DEPTH, "da3-small", options, {})
    assert {p.dtype for p in model.net.backbone.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.net.head.parameters()} == {torch.float32}
    assert estimate.parameter_bytes == parameter_bytes(model.net)
    import numpy as np

    prediction = model.predict([model.prepare(np.zeros((48, 64, 3), np.uint8))])
    assert np.isfinite(np.asarray(prediction.depth)).all()


def write_graph(path, device="cpu"):
    path.write_text(f"""
nodes:
  depth_node:
    parameters: {{model: da3-small, random_weights: true, device: {device}, process_res: 140, window_size: 2}}
""")
    return path


def test_up_prints_the_budget_and_refuses_a_graph_that_does_not_fit(tmp_path, monkeypatch, capsys):
    config = write_graph(tmp_path / "graph.yaml")
    monkeypatch.setattr(budget, "device_memory", lambda device: (64 << 20, 128 << 20, "available RAM"))
    assert cli.main(["up", str(config), "--dry-run"]) == 2
    out, err = capsys.readouterr()
    assert "depth_node: da3-small on cpu" in out and "DOES NOT FIT" in out
    errors = [line for line in err.splitlines() if line.strip()]
    assert len(errors) == 1 and "does not fit in the memory of cpu" in errors[0] and "--allow-over-budget" in errors[0]

    assert cli.main(["up", str(config), "--dry-run", "--allow-over-budget"]) == 0
    out, err = capsys.readouterr()
    assert "DOES NOT FIT" in out and "perception_fm.nodes.depth_node" in out and not err.strip()


def test_up_passes_a_graph_that_fits_and_prints_its_total(tmp_path, monkeypatch, capsys, manager):
    config = write_graph(tmp_path / "graph.yaml")
    monkeypatch.setattr(budget, "device_memory", lambda device: (64 << 30, 128 << 30, "available RAM"))
    assert cli.main(["up", str(config), "--dry-run", "--one-process"]) == 0
    out, _ = capsys.readouterr()
    estimate = manager.estimate_memory(Task.DEPTH, "da3-small",
                                       ModelOptions(device="cpu", extra={"process_res": 140}), {"views": 2})
    assert f"cpu: {budget.format_bytes(estimate.total_bytes)} needed of 64.00 GiB available RAM" in out
    assert "fits" in out and "perception_fm.runtime.container" in out


def test_plugins_memory_prints_the_graphs_models(tmp_path, capsys, manager):
    config = write_graph(tmp_path / "graph.yaml")
    assert cli.main(["plugins", "--memory", "--config", str(config)]) == 0
    out, _ = capsys.readouterr()
    model = manager.create(Task.DEPTH, "da3-small", ModelOptions(random_weights=True, device="cpu"))
    row = next(line for line in out.splitlines() if line.startswith("depth_node"))
    assert f"{sum(p.numel() for p in model.net.parameters()):,}" in row
    assert "140x112 px, 2 views" in row and "float32" in row


def test_checkpoint_parameters_read_shapes_without_loading(tmp_path):
    """Plugins whose architecture only upstream's CUDA code builds (sam3d-objects, sam3d-body) count the
    checkpoint's tensors: safetensors headers and torch checkpoints opened on meta (optimiser state skipped)."""
    from safetensors.torch import save_file

    module = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.BatchNorm1d(20))
    state = module.state_dict()
    save_file(dict(state), tmp_path / "model.safetensors")
    torch.save({"state_dict": state, "optimizer_states": [{"exp_avg": torch.zeros(10_000)}]}, tmp_path / "model.ckpt")
    expected = sum(t.numel() * t.element_size() for t in state.values())
    count = sum(t.numel() for t in state.values())
    assert budget.checkpoint_parameters([tmp_path / "model.safetensors"]) == (count, expected, "float32+int64")
    assert budget.checkpoint_parameters([tmp_path / "model.ckpt"]) == (count, expected, "float32+int64")
    as_bf16 = budget.checkpoint_parameters([tmp_path / "model.ckpt"], torch.bfloat16)
    assert as_bf16[1] == expected - 2 * sum(t.numel() for t in state.values() if t.is_floating_point())


def test_whisper_estimate_matches_the_real_model(tmp_path, manager):
    from test_speech_plugins import save_tiny_whisper

    directory = save_tiny_whisper(tmp_path / "whisper")
    options = ModelOptions(weights=str(directory), device="cpu", offline=True)
    estimate = manager.estimate_memory(Task.SPEECH, "whisper", options, {})
    model = manager.create(Task.SPEECH, "whisper", options)
    assert estimate.parameter_bytes == parameter_bytes(model.net) and estimate.dtype == "float32"
    assert estimate.activation_bytes > 0
    on_gpu = manager.estimate_memory(Task.SPEECH, "whisper", ModelOptions(weights=str(directory), device="cuda",
                                                                          offline=True), {})
    assert on_gpu.dtype == "float16" and on_gpu.parameter_bytes == estimate.parameter_bytes // 2  # upstream's fp16
