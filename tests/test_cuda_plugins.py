"""CUDA variants of the DA3 and SAM 3 plugin tests: device placement, bf16/fp16 autocast against fp32 on the same
weights, and no host synchronisation in the per-frame path beyond the output copy (torch.cuda.set_sync_debug_mode
"error" raises on any). They need a CUDA GPU and skip elsewhere; the device check (perception-fm bench device,
step 1) runs them on a lent GPU. Models: the real DA3-Small architecture and the tiny SAM 3, random weights.
"""
import contextlib
import warnings

import numpy as np
import pytest
import torch
from sam3_tiny import save_tiny_sam3

from perception_fm.hookspecs import ModelOptions, Task
from perception_fm.plugin_manager import PluginManager

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

K = np.array([[200.0, 0, 79.5], [0, 200.0, 59.5], [0, 0, 1]])


def frames(count: int, height: int = 120, width: int = 160) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.integers(0, 255, (height, width, 3), dtype=np.uint8) for _ in range(count)]


def da3_model(checkpoint, precision: str):
    return PluginManager(entry_points=False).create(Task.DEPTH, "da3-small", ModelOptions(
        weights=str(checkpoint), device="cuda", extra={"process_res": 112, "precision": precision}))


@pytest.fixture(scope="module")
def sam3_checkpoint(tmp_path_factory):
    return save_tiny_sam3(tmp_path_factory.mktemp("sam3-cuda"))


def sam3_model(checkpoint, precision: str):
    return PluginManager(entry_points=False).create(Task.SEGMENTATION, "sam3", ModelOptions(
        weights=str(checkpoint), device="cuda", extra={"precision": precision}))


@contextlib.contextmanager
def no_host_sync():
    """Any CUDA host synchronisation inside raises (torch's sync debug mode "error")."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def host_syncs(function) -> int:
    """How many CUDA host synchronisations `function()` makes (sync debug mode "warn", one warning each)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            function()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def test_cuda_da3_lives_on_the_gpu(da3_small_checkpoint):
    model = da3_model(da3_small_checkpoint, "bf16")
    assert model.device.startswith("cuda")
    assert all(p.is_cuda for p in model.net.parameters())
    view = model.prepare(frames(1)[0], K)
    assert view.data.is_cuda and view.data.dtype == torch.float32


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_da3_autocast_matches_fp32(da3_small_checkpoint, precision):
    images = frames(2)
    reference = da3_model(da3_small_checkpoint, "fp32")
    low = da3_model(da3_small_checkpoint, precision)
    assert low._amp_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    expected = reference.predict([reference.prepare(i, K) for i in images])
    got = low.predict([low.prepare(i, K) for i in images])
    assert got.depth.dtype == np.float32 and np.isfinite(got.depth).all()
    # bf16 keeps 8 bits of mantissa: a relative error of a few per cent in depth through 12 blocks
    error = np.abs(got.depth - expected.depth) / np.abs(expected.depth).clip(1e-6)
    assert float(np.median(error)) < {"bf16": 0.05, "fp16": 0.02}[precision]


def test_cuda_da3_per_frame_path_has_no_host_sync_beyond_the_output_copy(da3_small_checkpoint):
    model = da3_model(da3_small_checkpoint, "bf16")
    images = frames(3)
    window = [model.prepare(i, K) for i in images[:2]]
    model.predict(window + [model.prepare(images[2], K)], dense_views=[-1])  # warm-up
    with no_host_sync():  # upload, resize and normalise on the device: no sync at all
        view = model.prepare(images[2], K)
    # predict's host copies: depth, confidence, extrinsics, intrinsics (one each); nothing else may synchronise
    syncs = host_syncs(lambda: model.predict(window + [view], dense_views=[-1]))
    assert syncs <= 4, f"DA3 predict synchronised with the host {syncs} times (its 4 output copies allowed)"


def test_cuda_sam3_lives_on_the_gpu_and_autocasts(sam3_checkpoint):
    model = sam3_model(sam3_checkpoint, "bf16")
    assert model.device.startswith("cuda") and model.amp_dtype == torch.bfloat16
    assert all(p.is_cuda for p in model.network.parameters())
    assert model.preprocess(frames(1)[0]).is_cuda


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_sam3_autocast_tracks_like_fp32(sam3_checkpoint, precision):
    images = frames(4)
    results = {}
    for name in ("fp32", precision):
        model = sam3_model(sam3_checkpoint, name)
        session = model.new_session()
        first = session.add_frame(images[0])
        mask = torch.zeros(model.mask_size, device="cuda")
        mask[4:20, 6:22] = 1.0
        session.add_objects(first, {1: mask})
        for image in images[1:]:
            frame = session.add_frame(image)
            propagation = session.propagate(frame)
            session.commit(frame, dict(zip(propagation.obj_ids, propagation.masks)))
        results[name] = (propagation.obj_ids, propagation.masks.float().cpu())
    assert results[precision][0] == results["fp32"][0]
    assert torch.isfinite(results[precision][1]).all()
    difference = (results[precision][1] - results["fp32"][1]).abs()
    assert float(difference.mean()) < 0.05, f"{precision} masks differ from fp32 by {float(difference.mean()):.3f}"


def test_cuda_sam3_tracking_path_has_no_host_sync(sam3_checkpoint):
    """Encoding a frame and propagating the tracks (the tracker's per-frame work between detections) stays on
    the device; the host copy of the final masks is the caller's."""
    model = sam3_model(sam3_checkpoint, "bf16")
    images = frames(3)
    session = model.new_session()
    first = session.add_frame(images[0])
    mask = torch.zeros(model.mask_size, device="cuda")
    mask[4:20, 6:22] = 1.0
    session.add_objects(first, {1: mask, 2: mask.roll(8, 1)})
    frame = session.add_frame(images[1])
    session.commit(frame, dict(zip(*(lambda p: (p.obj_ids, p.masks))(session.propagate(frame)))))  # warm-up
    with no_host_sync():
        frame = session.add_frame(images[2])
        propagation = session.propagate(frame)
    assert propagation.masks.is_cuda and propagation.obj_ids == [1, 2]
