"""Loading damaged weights: every way a checkpoint directory can be broken gives a PerceptionFmError whose
one-line message names the file and the problem (a node shows it on /diagnostics, replay prints it and exits 2),
never a library traceback; non-finite weights are refused rather than loaded as "ok"."""
import re

import pytest
import torch
import yaml

from corrupt_weights import EXPECTED, make_corrupt_checkpoints
from perception_fm.cli import main
from perception_fm.errors import PerceptionFmError, WeightsCorruptError
from perception_fm.hookspecs import ModelOptions, Task
from perception_fm.plugin_manager import PluginManager
from perception_fm.plugins.weights import check_finite
from perception_fm.replay.synthetic import SampleConfig, write_sample_bag


@pytest.fixture(scope="module")
def corrupt(da3_small_checkpoint, tmp_path_factory):
    return make_corrupt_checkpoints(da3_small_checkpoint, tmp_path_factory.mktemp("corrupt-da3"))


def create_da3(directory):
    return PluginManager(entry_points=False).create(
        Task.DEPTH, "da3-small", ModelOptions(weights=str(directory), device="cpu", extra={"process_res": 56}))


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_damaged_da3_checkpoint_is_one_clear_error(corrupt, kind):
    with pytest.raises(PerceptionFmError) as caught:
        create_da3(corrupt[kind])
    message = str(caught.value)
    assert re.search(EXPECTED[kind], message, re.IGNORECASE), message
    assert str(corrupt[kind]) in message  # which checkpoint
    assert "\n" not in message


def test_good_checkpoint_still_loads(da3_small_checkpoint):
    assert create_da3(da3_small_checkpoint).weights == str(da3_small_checkpoint)


def test_finite_check_is_exact_where_a_half_precision_sum_overflows():
    large = torch.full((4096,), 1000.0, dtype=torch.float16)  # finite values whose fp16 sum is inf
    assert not torch.isfinite(large.sum())
    check_finite([("large", large), ("ints", torch.arange(5))], "test")
    large[7] = float("nan")
    with pytest.raises(WeightsCorruptError, match=r"test holds non-finite values .* 1 tensor \(e\.g\. large\)"):
        check_finite([("large", large)], "test")


SAM3_EXPECTED = {kind: EXPECTED[kind] for kind in ("empty", "truncated", "bad_header", "config_list",
                                                   "config_invalid_json")}
SAM3_EXPECTED["nan"] = r"SAM 3 checkpoint in .* holds non-finite values \(NaN or Inf\)"


@pytest.fixture(scope="module")
def corrupt_sam3(tmp_path_factory):
    from sam3_tiny import save_tiny_sam3

    good = save_tiny_sam3(tmp_path_factory.mktemp("sam3-tiny"))
    return make_corrupt_checkpoints(good, tmp_path_factory.mktemp("corrupt-sam3"), kinds=tuple(SAM3_EXPECTED))


@pytest.mark.parametrize("kind", sorted(SAM3_EXPECTED))
def test_damaged_sam3_checkpoint_is_one_clear_error(corrupt_sam3, kind):
    with pytest.raises(PerceptionFmError) as caught:
        PluginManager(entry_points=False).create(Task.SEGMENTATION, "sam3",
                                                 ModelOptions(weights=str(corrupt_sam3[kind]), device="cpu"))
    message = str(caught.value)
    assert re.search(SAM3_EXPECTED[kind], message, re.IGNORECASE), message
    assert str(corrupt_sam3[kind]) in message and "\n" not in message


@pytest.fixture(scope="module")
def sample_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("sample") / "bag"
    write_sample_bag(path, SampleConfig(width=64, height=48, frames=2))
    return path


@pytest.mark.parametrize("kind", ["truncated", "config_list", "wrong_shape", "nan"])
def test_replay_with_a_damaged_checkpoint_exits_2_with_one_line(tmp_path, sample_bag, corrupt, kind, capsys):
    config = tmp_path / "graph.yaml"
    config.write_text(yaml.safe_dump({"nodes": {"depth_node": {
        "remappings": {"image": "/camera/color/image_raw", "camera_info": "/camera/color/camera_info"},
        "parameters": {"weights": str(corrupt[kind]), "process_res": 56}}}}))
    code = main(["replay", str(sample_bag), "--config", str(config), "--out", str(tmp_path / "out"), "--quiet"])
    printed = capsys.readouterr()
    assert code == 2
    lines = printed.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("perception-fm: error: "), printed.err
    assert re.search(EXPECTED[kind], lines[0], re.IGNORECASE), lines[0]
    assert "Traceback" not in printed.out + printed.err
