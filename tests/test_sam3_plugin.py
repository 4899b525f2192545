"""The SAM 3 plugin on a tiny random checkpoint of the real architecture (tests/sam3_tiny.py), loaded through the
plugin manager: loading and its errors, concepts, every session operation, post-processing, parity with
transformers' own tracker, eviction equivalence and bounded memory. CPU only, no network."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from sam3_tiny import TINY_MASK_SIZE, save_tiny_sam3

from perception_fm.errors import BadInputError, WeightsMismatchError, WeightsNotFoundError
from perception_fm.hookspecs import ModelOptions, Task
from perception_fm.plugin_manager import PluginManager
from perception_fm.plugins.sam3.postprocess import fill_holes, greedy_nms, mask_iou, small_components
from perception_fm.tasks.segmentation import SegmentationModel, TrackingSession

H, W = TINY_MASK_SIZE


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_sam3(tmp_path_factory.mktemp("sam3-tiny"))


def create(checkpoint, **extra):
    return PluginManager(entry_points=False).create(
        Task.SEGMENTATION, "sam3", ModelOptions(weights=str(checkpoint), device="cpu", extra=extra))


@pytest.fixture(scope="module")
def model(checkpoint):
    # every query is a detection (random weights score ~0.4); NMS and hole filling at their defaults
    return create(checkpoint, score_threshold=0.0)


def video(count: int, height: int = 96, width: int = 128) -> list[np.ndarray]:
    """Moving coloured shapes on a grey background."""
    frames = []
    yy, xx = np.mgrid[:height, :width]
    for t in range(count):
        image = np.full((height, width, 3), 90, np.uint8)
        image[10 + t % 20:40 + t % 20, 15 + 2 * t % 60:45 + 2 * t % 60] = (220, 40, 40)
        disc = (yy - 60) ** 2 + (xx - (90 - t % 30)) ** 2 < 14 ** 2
        image[disc] = (40, 200, 60)
        frames.append(image)
    return frames


def box_mask(y0, y1, x0, x1) -> torch.Tensor:
    mask = torch.zeros(H, W)
    mask[y0:y1, x0:x1] = 1.0
    return mask


# -- registration and loading ----------------------------------------------------------------------------------


def test_registration_is_cheap_and_describes_the_model():
    code = ("import sys, perception_fm.plugins.sam3 as p; specs = p.register_models(); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'; "
            "print(specs[0].name, specs[0].task, specs[0].default_weights)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["sam3", "segmentation", "facebook/sam3"]
    spec = PluginManager(entry_points=False).spec(Task.SEGMENTATION, "sam3")
    assert "SAM License" in spec.license
    assert {"torch", "transformers"} <= set(spec.requires)


def test_loads_through_the_plugin_manager(model, checkpoint):
    assert isinstance(model, SegmentationModel)
    assert model.name == "sam3" and model.device == "cpu" and model.weights == str(checkpoint)
    assert model.capabilities.mask_size == TINY_MASK_SIZE
    assert model.capabilities.max_concept_tokens == 32
    assert model.capabilities.point_prompts
    assert isinstance(model.new_session(), TrackingSession)


def test_image_size_option_resizes_the_model(checkpoint):
    small = create(checkpoint, image_size=84)
    assert small.capabilities.mask_size == (24, 24)
    session = small.new_session()
    frame = session.add_frame(video(1)[0])
    session.add_objects(frame, {1: torch.ones(24, 24)})
    assert session.propagate(frame).masks.shape == (1, 24, 24)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        create(checkpoint, image_size=100)
    with pytest.raises(ValueError, match="max_conditioning_frames"):
        create(checkpoint, max_conditioning_frames=0)
    with pytest.raises(ValueError, match="precision"):
        create(checkpoint, precision="int8")


def test_missing_weights_are_clear_errors(tmp_path, monkeypatch):
    manager = PluginManager(entry_points=False)
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        manager.create(Task.SEGMENTATION, "sam3", ModelOptions(weights=str(tmp_path / "nowhere"), device="cpu"))
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "config.json").write_text("{}")
    with pytest.raises(WeightsNotFoundError, match="model.safetensors"):
        manager.create(Task.SEGMENTATION, "sam3", ModelOptions(weights=str(tmp_path / "partial"), device="cpu"))
    cache = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(cache))
    with pytest.raises(WeightsNotFoundError) as error:
        manager.create(Task.SEGMENTATION, "sam3", ModelOptions(offline=True, cache_dir=str(cache), device="cpu"))
    message = str(error.value)
    assert "facebook/sam3" in message and "offline" in message and "hf auth login" in message
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the environment switch alone has the same effect
    with pytest.raises(WeightsNotFoundError, match="offline"):
        manager.create(Task.SEGMENTATION, "sam3", ModelOptions(cache_dir=str(cache), device="cpu"))


def test_checkpoint_with_a_missing_tensor_is_refused(checkpoint, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    state = load_file(str(broken / "model.safetensors"))
    # (key names in the file follow transformers' serialisation, which may prefix them differently)
    [name] = [key for key in state if key.endswith("memory_encoder.projection.weight")]
    del state[name]
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(WeightsMismatchError, match=r"lacks 1 of the network's tensors .*memory_encoder\.projection"):
        create(broken)


def test_an_image_only_checkpoint_is_refused(checkpoint, tmp_path):
    import json
    import shutil

    other = tmp_path / "image-only"
    shutil.copytree(checkpoint, other)
    config = json.loads((other / "config.json").read_text())
    config["model_type"] = "sam3"
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsMismatchError, match="sam3_video"):
        create(other)


def test_random_weights_are_labelled(checkpoint, monkeypatch):
    from transformers import Sam3VideoModel

    from perception_fm.plugins.sam3 import loading
    from perception_fm.bench.sam3_tiny import tiny_config

    # the default architecture has ~860 M parameters: build the tiny one through the same code path
    monkeypatch.setattr(loading, "random_network", lambda device, image_size=0: Sam3VideoModel(tiny_config()))
    model = PluginManager(entry_points=False).create(
        Task.SEGMENTATION, "sam3", ModelOptions(random_weights=True, device="cpu"))
    assert model.weights == "random-init"
    assert model.encode_concept("a cat").input_ids[0, :4].tolist() == [49406, 320, 2368, 49407]


# -- concepts ---------------------------------------------------------------------------------------------------


def test_encode_concept_validates(model):
    for bad in ("", "   \t"):
        with pytest.raises(BadInputError) as error:
            model.encode_concept(bad)
        assert error.value.reason == "concept"
    long = " ".join(["red"] * 31)  # 31 words + start and end = 33 tokens
    with pytest.raises(BadInputError) as error:
        model.encode_concept(long)
    assert error.value.reason == "concept" and "33 tokens" in str(error.value) and "32" in str(error.value)
    longest = model.encode_concept(" ".join(["red"] * 30))
    assert longest.tokens == 32
    concept = model.encode_concept("  A photo of a RED mug! ")
    assert concept.text == "A photo of a RED mug!"
    assert concept.input_ids.shape == concept.attention_mask.shape == (1, 32)
    # CLIP's ids (facebook/sam3's tokenizer gives the same)
    assert concept.input_ids[0, :9].tolist() == [49406, 320, 1125, 539, 320, 736, 9722, 256, 49407]
    assert concept.attention_mask[0].sum() == 9 and concept.tokens == 9


# -- the session ------------------------------------------------------------------------------------------------


def test_session_operations_shapes_and_ranges(model):
    session = model.new_session()
    frames = video(6)
    red, green = model.encode_concept("red square"), model.encode_concept("green disc")
    assert session.add_frame(frames[0]) == 0
    detections = session.detect(0, {4: red, 9: green})
    n = len(detections)
    assert n >= 2
    assert detections.masks.shape == (n, H, W) and detections.masks.dtype == torch.float32
    assert detections.boxes.shape == (n, 4) and detections.scores.shape == (n,)
    assert detections.prompt_ids.dtype == torch.int64
    assert set(detections.prompt_ids.tolist()) == {4, 9}
    assert ((detections.masks >= 0) & (detections.masks <= 1)).all()
    assert ((detections.boxes >= 0) & (detections.boxes <= 1)).all()
    assert (detections.boxes[:, 2:] >= detections.boxes[:, :2]).all()
    assert ((detections.scores > 0) & (detections.scores <= 1)).all()
    ids = detections.prompt_ids.tolist()
    assert ids == sorted(ids, key=[4, 9].index)  # grouped by concept, in the order given
    for key in (4, 9):
        scores = detections.scores[detections.prompt_ids == key]
        assert (scores[:-1] >= scores[1:]).all()  # best first
    assert len(session.detect(0, {})) == 0

    session.add_objects(0, {1: detections.masks[0], 2: detections.masks[1]})
    same_frame = session.propagate(0)  # objects conditioned on this frame: their (resampled) input masks
    assert same_frame.obj_ids == [1, 2]
    agreement = ((same_frame.masks[0] > 0.5) == (detections.masks[0] >= 0.5)).float().mean()
    assert agreement > 0.9
    for t in range(1, 6):
        assert session.add_frame(frames[t]) == t
        propagation = session.propagate(t)
        assert propagation.obj_ids == [1, 2]
        assert propagation.masks.shape == (2, H, W) and propagation.masks.dtype == torch.float32
        assert ((propagation.masks >= 0) & (propagation.masks <= 1)).all()
        assert propagation.scores.shape == (2,) and ((propagation.scores >= 0) & (propagation.scores <= 1)).all()
        assert torch.equal(session.propagate(t).masks, propagation.masks)  # nothing written by propagate
        session.commit(t, dict(zip(propagation.obj_ids, propagation.masks)), conditioning=[2] if t == 3 else [])
    stats = session.memory_stats()
    assert stats["objects"] == 2 and stats["frames"] == 1 and stats["conditioning_entries"] == 3
    session.remove_objects([1])
    after = session.memory_stats()
    assert after["objects"] == 1 and after["memory_bytes"] < stats["memory_bytes"]
    assert session.propagate(5).obj_ids == [2]
    session.remove_objects([2, 99])  # unknown ids are ignored
    assert session.memory_stats()["memory_bytes"] == 0
    assert session.propagate(5).masks.shape == (0, H, W)


def test_prompt_object_with_box_and_clicks(model):
    session = model.new_session()
    frames = video(3)
    session.add_frame(frames[0])
    mask = session.prompt_object(0, 7, None, None, np.array([15.0, 10.0, 45.0, 40.0]))
    assert mask.shape == (H, W) and ((mask >= 0) & (mask <= 1)).all()
    clicked = session.prompt_object(0, 8, np.array([[90.0, 60.0]]), np.array([1]), None)
    assert clicked.shape == (H, W)
    assert session.propagate(0).obj_ids == [7, 8]
    session.add_frame(frames[1])
    propagation = session.propagate(1)
    assert propagation.obj_ids == [7, 8]
    session.commit(1, dict(zip(propagation.obj_ids, propagation.masks)))
    # a correction on a tracked frame: conditioned from then on
    corrected = session.prompt_object(1, 8, np.array([[90.0, 60.0], [10.0, 10.0]]), np.array([1, 0]), None)
    assert corrected.shape == (H, W)
    assert 1 in session._objects[8].cond
    for bad in [dict(points=None, box=None), dict(points=np.array([[1.0, 2.0]]), labels=np.array([3])),
                dict(box=np.array([10.0, 10.0, 5.0, 20.0])), dict(points=np.array([[np.nan, 1.0]]))]:
        with pytest.raises(BadInputError) as error:
            session.prompt_object(1, 9, bad.get("points"), bad.get("labels"), bad.get("box"))
        assert error.value.reason == "prompt"


def test_session_refuses_misuse(model):
    session = model.new_session()
    with pytest.raises(ValueError, match="add_frame"):
        session.propagate(0)
    with pytest.raises(BadInputError) as error:
        session.add_frame(np.zeros((10, 10, 3), np.float32))
    assert error.value.reason == "encoding"
    session.add_frame(video(1)[0])
    session.add_frame(video(2)[1])
    with pytest.raises(ValueError, match="newest"):
        session.detect(0, {1: model.encode_concept("cat")})
    with pytest.raises(KeyError):
        session.commit(1, {5: torch.zeros(H, W)})
    session.add_objects(1, {5: box_mask(4, 12, 4, 12)})
    with pytest.raises(ValueError, match="no mask"):
        session.commit(1, {5: torch.zeros(H, W)}, conditioning=[6])
    session.add_frame(video(3)[2])
    with pytest.raises(ValueError, match="propagate"):
        session.commit(2, {5: torch.zeros(H, W)})
    with pytest.raises(TypeError):
        session.detect(2, {1: "cat"})


# -- post-processing --------------------------------------------------------------------------------------------


def test_nms_keeps_the_best_of_overlapping_masks_per_concept():
    a = box_mask(0, 10, 0, 10).bool()
    b = box_mask(0, 10, 2, 12).bool()  # IoU with a: 80 / 120
    c = box_mask(20, 30, 20, 30).bool()
    masks = torch.stack([a, b, c])
    iou = mask_iou(masks, masks).numpy()
    assert iou[0, 1] == pytest.approx(80 / 120) and iou[0, 2] == 0
    scores = np.array([0.8, 0.9, 0.7])
    assert greedy_nms(scores, iou, np.array([0, 0, 0]), 0.5).tolist() == [False, True, True]
    assert greedy_nms(scores, iou, np.array([0, 1, 0]), 0.5).tolist() == [True, True, True]  # other concept
    assert greedy_nms(scores, iou, np.array([0, 0, 0]), 0.7).tolist() == [True, True, True]  # below threshold


def test_detect_suppresses_duplicates_within_a_concept(checkpoint):
    loose = create(checkpoint, score_threshold=0.0, nms_iou=0.0)  # NMS off: every query
    strict = create(checkpoint, score_threshold=0.0, nms_iou=0.1)
    image = video(1)[0]
    results = []
    for model in (loose, strict):
        session = model.new_session()
        session.add_frame(image)
        results.append(session.detect(0, {1: model.encode_concept("red square")}))
    assert len(results[0]) == 16  # num_queries of the tiny model
    assert 0 < len(results[1]) < len(results[0])
    kept = results[1].masks > 0.5
    overlaps = mask_iou(kept, kept) - torch.eye(len(kept))
    assert (overlaps <= 0.1 + 1e-6).all()


def test_fill_holes_exact():
    logits = torch.full((1, 16, 16), -5.0)
    logits[0, 2:10, 2:10] = 5.0
    logits[0, 5, 4:7] = -5.0  # a 3-pixel hole
    filled = fill_holes(logits, max_area=4)
    assert (filled[0, 5, 4:7] == 0.1).all() and (filled[0, 5, 4:7].sigmoid() > 0.5).all()
    assert torch.equal(fill_holes(logits, max_area=2), logits)  # hole larger than the limit
    assert torch.equal(fill_holes(logits, max_area=0), logits)
    sprinkled = logits.clone()
    sprinkled[0, 0, 15] = 5.0  # a 1-pixel sprinkle
    sprinkled[0, 13:15, 0:2] = 5.0  # a 4-pixel one
    sprinkled[0, 10, 10] = 5.0  # touching the object diagonally: part of it (8-connected)
    cleaned = fill_holes(sprinkled, max_area=4)
    assert cleaned[0, 0, 15] == -0.1 and (cleaned[0, 13:15, 0:2] == -0.1).all()
    assert cleaned[0, 10, 10] == 5.0
    assert (cleaned[0, 2:10, 2:10] > 0).all()  # the object and its filled hole stay
    lone = torch.full((1, 16, 16), -5.0)
    lone[0, 3:5, 3:5] = 5.0  # a tiny object alone is not a sprinkle (limit: half the foreground)
    assert torch.equal(fill_holes(lone, max_area=16), lone)


def test_small_components_match_scipy():
    from scipy import ndimage

    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        height, width = (int(v) for v in torch.randint(4, 30, (2,), generator=generator))
        masks = torch.rand(3, height, width, generator=generator) < float(torch.rand(1, generator=generator))
        limit = int(torch.randint(1, 25, (1,), generator=generator))
        got = small_components(masks, limit).numpy()
        for i in range(3):
            labels, _ = ndimage.label(masks[i].numpy(), structure=np.ones((3, 3)))
            sizes = np.bincount(labels.ravel())
            assert np.array_equal(got[i], (labels > 0) & (sizes[labels] <= limit))


# -- tracker fidelity, eviction, memory -------------------------------------------------------------------------


def test_propagation_matches_transformers_tracker(checkpoint):
    """Our batched, bounded tracker against transformers' Sam3VideoModel functions on the same frames (hole
    filling off: transformers skips it without its CUDA kernel). Memory window (7) and pointer window (16)
    are both exceeded, so eviction happens on our side."""
    from transformers.models.sam3_video.modeling_sam3_video import Sam3VideoInferenceSession

    model = create(checkpoint, fill_hole_area=0)
    network = model.network
    network.fill_hole_area = 0
    frames = video(19, 112, 112)
    ours = model.new_session()
    theirs = Sam3VideoInferenceSession(video=torch.zeros(len(frames), 3, 112, 112), inference_device="cpu",
                                       inference_state_device="cpu", dtype=torch.float32)
    masks = torch.stack([box_mask(8, 20, 5, 14), box_mask(2, 9, 18, 30)])
    with torch.no_grad():
        for t, image in enumerate(frames):
            frame = ours.add_frame(image)
            vision = network.detector_model.get_vision_features(pixel_values=model.preprocess(image))
            features, positions = network.get_vision_features_for_tracker(vision)
            theirs.cache.cache_vision_features(t, {"vision_feats": features, "vision_pos_embeds": positions})
            if t == 0:
                ours.add_objects(frame, {1: masks[0], 2: masks[1]})
                theirs.obj_id_to_prompt_id.update({1: 0, 2: 1})  # own prompts: no overlap suppression
                network._tracker_add_new_objects(theirs, 0, [1, 2], masks)
                continue
            logits, scores = network.run_tracker_propagation(theirs, t, reverse=False)
            network._tracker_update_memories(theirs, t, logits.clone())
            propagation = ours.propagate(frame)
            ours.commit(frame, dict(zip(propagation.obj_ids, propagation.masks)))
            assert logits.abs().max() > 2  # non-trivial masks
            torch.testing.assert_close(propagation.masks, logits.sigmoid(), atol=1e-5, rtol=0)
            torch.testing.assert_close(propagation.scores, scores.sigmoid(), atol=1e-6, rtol=0)
    # per object: 1 conditioning, the 6 recent frames this frame reads, and this frame's own
    assert ours.memory_stats()["spatial_memories"] == 2 * (1 + 6 + 1)


def run_script(session, model, frames):
    """Every operation, with conditioning beyond the cap, objects coming and going; returns per-frame masks."""
    outputs = []
    red = model.encode_concept("red square")
    for t, image in enumerate(frames):
        frame = session.add_frame(image)
        propagation = session.propagate(frame)
        outputs.append((propagation.obj_ids, propagation.masks.clone(), propagation.scores.clone()))
        if t == 0:
            session.add_objects(frame, {1: box_mask(4, 14, 4, 14), 2: box_mask(16, 28, 10, 30)})
            continue
        if t == 12:
            detections = session.detect(frame, {1: red})
            session.add_objects(frame, {3: detections.masks[0]})
        if t == 20:
            outputs.append(session.prompt_object(frame, 4, None, None, np.array([60.0, 40.0, 100.0, 80.0])).clone())
        if t == 33:
            session.remove_objects([3])
        final = {obj_id: mask for obj_id, mask in zip(propagation.obj_ids, propagation.masks)
                 if obj_id in session._objects}
        conditioning = [1] if t % 4 == 0 else []  # object 1 exceeds max_conditioning_frames
        if conditioning:
            final[1] = box_mask(4, 14, 4 + t % 5, 14 + t % 5)
        session.commit(frame, final, conditioning=conditioning)
        if t == 30:
            outputs.append(session.prompt_object(frame, 2, np.array([[30.0, 30.0]]), np.array([1]), None).clone())
    return outputs


def test_eviction_changes_nothing(model):
    frames = video(40)
    bounded, unbounded = model.new_session(), model.new_session(keep_all_history=True)
    first = run_script(bounded, model, frames)
    second = run_script(unbounded, model, frames)
    assert len(first) == len(second)
    for a, b in zip(first, second):
        if isinstance(a, tuple):
            assert a[0] == b[0]
            assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])  # bitwise
        else:
            assert torch.equal(a, b)
    kept, everything = bounded.memory_stats(), unbounded.memory_stats()
    assert kept["conditioning_entries"] == 4 + 2 + 1  # object 1 at the cap, 2 twice, 4 once (3 removed)
    assert everything["conditioning_entries"] > kept["conditioning_entries"]
    assert everything["memory_bytes"] > 2 * kept["memory_bytes"]


def test_memory_stops_growing(model):
    session = model.new_session()
    frames = video(30)
    samples = {}
    frame = session.add_frame(frames[0])
    session.add_objects(frame, {1: box_mask(4, 14, 4, 14), 2: box_mask(16, 28, 10, 30), 3: box_mask(2, 8, 20, 30)})
    for t in range(1, 300):
        frame = session.add_frame(frames[t % len(frames)])
        propagation = session.propagate(frame)
        final = dict(zip(propagation.obj_ids, propagation.masks))
        session.commit(frame, final, conditioning=[1, 2] if t % 16 == 0 else [])
        if t in (100, 196, 292):  # same phase of the re-conditioning cycle
            samples[t] = session.memory_stats()
    assert samples[100] == samples[196] == samples[292]
    stats = samples[292]
    assert stats["frames"] == 1 and stats["objects"] == 3
    assert stats["conditioning_entries"] == 4 + 4 + 1
    # conditioning + the last num_maskmem - 1 frames + the current one
    assert stats["spatial_memories"] <= 3 * (4 + 6 + 1)
    # pointer window (max_object_pointers_in_encoder - 1) + the current frame + demoted conditioning frames
    assert stats["recent_entries"] <= 3 * (15 + 1) + 2 * 7


def test_mixed_precision_path(checkpoint):
    """precision=bf16 runs the GPU's autocast code path (on CPU here): dtypes meet where they should."""
    model = create(checkpoint, score_threshold=0.0, precision="bf16")
    assert model.amp_dtype == torch.bfloat16
    session = model.new_session()
    outputs = run_script(session, model, video(14))
    masks = outputs[-1][1]
    assert masks.dtype == torch.float32 and masks.shape == (3, H, W)
    detections = session.detect(13, {1: model.encode_concept("red square"), 2: model.encode_concept("disc")})
    assert detections.masks.dtype == detections.boxes.dtype == detections.scores.dtype == torch.float32
    assert session._objects[1].cond[12].features.dtype == torch.bfloat16  # memories are stored in bf16


def test_new_objects_are_binarised_as_metas_sam3(model):
    """A new object's mask is its pixels of probability > 0.5 (logit > 0, as Meta's sam3 binarises the
    detector's logits; transformers' ">= 0.5" on logits would drop the pixels of logits in (0, 0.5)): a
    probability of exactly 0.5 is outside, 0.5 + 1e-3 (logit 0.004) inside."""
    outputs = []
    for edge in (0.5, 0.0, 0.501, 1.0):
        session = model.new_session()
        frame = session.add_frame(video(1)[0])
        mask = box_mask(4, 14, 4, 14)
        mask[14:18, 4:14] = edge
        session.add_objects(frame, {1: mask})
        frame = session.add_frame(video(2)[1])
        outputs.append(session.propagate(frame).masks)
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[2], outputs[3])
    assert not torch.equal(outputs[0], outputs[2])


def test_session_does_not_import_the_model_module():
    """model.py -> session.py -> concept.py: the dependency runs one way."""
    import ast
    from pathlib import Path

    import perception_fm.plugins.sam3 as package

    source = Path(package.__file__).with_name("session.py").read_text()
    imported = {node.module for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Import)
                 for alias in node.names}
    assert "perception_fm.plugins.sam3.model" not in imported
    assert "perception_fm.plugins.sam3.concept" in imported
