"""Shared test set-up.

Every test session gets its own ROS domain and localhost-only discovery, so parallel sessions on the same
machine (CI, developers) never see each other's nodes.
"""
import os
import random

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100)))

import perception_fm  # noqa: E402,F401  before any test imports torch: sets OMP_WAIT_POLICY (see its __init__)
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def da3_small_checkpoint(tmp_path_factory):
    """The real DA3-Small architecture with random weights, saved in the hub layout (config.json +
    model.safetensors) so tests load it through the plugin's real loading code. Returns the directory."""
    import torch

    from perception_fm.plugins.da3 import build_network, save_pretrained

    torch.manual_seed(1234)
    net = build_network("da3-small")
    return save_pretrained(net, tmp_path_factory.mktemp("da3-small"), "da3-small")


@pytest.fixture(scope="module")
def da3_nested_model():
    """DA3 Nested (Giant any-view + Large metric, 1.4 B parameters) with random weights: ~7 GB of RAM and
    the suite's slowest build. Deliberately one instance per module that uses it (built once: only
    test_da3_plugin.py does), freed when that module ends so the 7 GB are not held through the node tests; at
    the smallest input (process_res 14: one 14-pixel patch per side); its tests are marked `slow` (run by
    default, CI included)."""
    import gc

    from perception_fm.hookspecs import ModelOptions, Task
    from perception_fm.plugin_manager import PluginManager

    model = PluginManager(entry_points=False).create(
        Task.DEPTH, "da3nested-giant-large", ModelOptions(random_weights=True, device="cpu",
                                                          extra={"process_res": 14}))
    yield model
    del model
    gc.collect()
