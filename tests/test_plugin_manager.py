"""The plugin contract: built-in and third-party plugins, lookup by task and name, clear errors."""
import subprocess
import sys
import textwrap

import pytest

from perception_fm.errors import PerceptionFmError, PluginNotFoundError, PluginUnavailableError
from perception_fm.hookspecs import ModelOptions, ModelSpec, Task, hookimpl
from perception_fm.plugin_manager import PluginManager


class EchoModel:
    def __init__(self, options):
        self.options = options


class EchoPlugin:
    @hookimpl
    def register_models(self):
        return [ModelSpec(name="echo", task=Task.DEPTH, summary="test double", create=EchoModel, license="MIT")]


def test_builtin_plugins_register_da3_variants_with_licences():
    manager = PluginManager(entry_points=False)
    models = {entry.spec.name: entry.spec for entry in manager.models(Task.DEPTH)}
    assert {"da3-small", "da3-base", "da3-large", "da3-giant", "da3mono-large", "da3metric-large",
            "da3nested-giant-large"} <= set(models)
    assert models["da3-small"].license == "Apache-2.0"
    assert "non-commercial" in models["da3-large"].license
    assert models["da3-small"].default_weights == "depth-anything/DA3-SMALL"
    # filtering by task returns exactly that task's models: the built-in SAM 3 and none of the depth models
    assert [e.spec.name for e in manager.models(Task.SEGMENTATION)] == ["sam3"]
    assert {e.spec.task for e in manager.models(Task.DEPTH)} == {Task.DEPTH}


def test_unknown_model_names_what_was_asked_and_what_exists():
    manager = PluginManager(entry_points=False)
    with pytest.raises(PluginNotFoundError) as caught:
        manager.create(Task.DEPTH, "da4-huge")
    message = str(caught.value)
    assert "da4-huge" in message and "depth" in message and "da3-small" in message


def test_registered_plugin_object_is_created_by_name_with_options():
    manager = PluginManager(entry_points=False)
    manager.register(EchoPlugin(), name="echo-plugin")
    options = ModelOptions(weights="/some/dir", device="cpu")
    model = manager.create("depth", "echo", options)
    assert isinstance(model, EchoModel) and model.options is options
    assert [e.plugin for e in manager.models("depth") if e.spec.name == "echo"] == ["echo-plugin"]


def test_two_plugins_claiming_one_name_is_an_error():
    manager = PluginManager(entry_points=False)
    manager.register(EchoPlugin(), name="first")

    class Again(EchoPlugin):
        pass

    manager.register(Again(), name="second")
    with pytest.raises(PerceptionFmError, match="first.*second|second.*first"):
        manager.models()


def test_missing_dependency_is_reported_not_crashed():
    class NeedsNothingThatExists:
        @hookimpl
        def register_models(self):
            return [ModelSpec(name="ghost", task=Task.DEPTH, summary="", create=EchoModel,
                              requires=("no_such_module_xyz",))]

    manager = PluginManager(entry_points=False)
    manager.register(NeedsNothingThatExists())
    entry = next(e for e in manager.models() if e.spec.name == "ghost")
    assert entry.missing == ["no_such_module_xyz"]
    with pytest.raises(PluginUnavailableError, match="no_such_module_xyz"):
        manager.create(Task.DEPTH, "ghost")


def test_third_party_plugin_found_through_entry_point(tmp_path):
    """A distribution on sys.path declaring the perception_fm entry point is loaded by the manager and
    listed by `perception-fm plugins` (run in a fresh interpreter, as a user would)."""
    (tmp_path / "acme_depth.py").write_text(textwrap.dedent("""
        from perception_fm.hookspecs import ModelSpec, Task, hookimpl

        @hookimpl
        def register_models():
            return [ModelSpec(name="acme-depth", task=Task.DEPTH, summary="Acme's depth", license="MIT",
                              create=lambda options: "acme model")]
    """))
    dist = tmp_path / "acme_depth-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-depth\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[perception_fm]\nacme = acme_depth\n")
    code = ("import sys; sys.path.insert(0, sys.argv[1]);"
            "from perception_fm.plugin_manager import PluginManager;"
            "m = PluginManager(); print(m.create('depth', 'acme-depth'));"
            "from perception_fm.cli import main; main(['plugins', '--task', 'depth'])")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "acme model"
    assert any(line.split()[:2] == ["depth", "acme-depth"] and "MIT" in line for line in lines)


# -- `perception-fm plugins`: whether each model can run here, weights included, and full licences ------------

def fake_hub_cache(root, repo_id: str, files: dict[str, bytes]):
    """The hub cache layout huggingface_hub writes (blobs, a snapshot of symlinks, refs/main)."""
    import hashlib

    repo = root / ("models--" + repo_id.replace("/", "--"))
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for name, content in files.items():
        blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        (snapshot / name).symlink_to(blob)
    return root


def test_weights_state_is_found_without_network(tmp_path, monkeypatch):
    from perception_fm import plugin_manager
    from perception_fm.plugin_manager import cached_hub_repos, weights_state

    cache = fake_hub_cache(tmp_path, "depth-anything/DA3-SMALL", {"config.json": b"{}", "model.safetensors": b"x" * 10})
    fake_hub_cache(tmp_path, "depth-anything/DA3-BASE", {"config.json": b"{}"})  # no weights file: not cached
    cached = cached_hub_repos(cache)
    assert set(cached) == {"depth-anything/DA3-SMALL"}
    manager = PluginManager(entry_points=False)
    entries = {entry.spec.name: entry for entry in manager.models()}
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(plugin_manager, "_hub_token", lambda: False)
    small = weights_state(entries["da3-small"].spec, cached)
    assert small.state == "cached" and small.usable
    assert weights_state(entries["da3-base"].spec, cached).state == "download"
    sam3 = weights_state(entries["sam3"].spec, cached)
    assert sam3.state == "gated" and "hf auth login" in sam3.detail and "huggingface.co/facebook/sam3" in sam3.detail
    assert "hf auth login" in entries["sam3"].status(sam3, cuda=False)
    assert weights_state(entries["pocketsphinx"].spec, cached).state == "none"
    if not entries["da3-small"].missing:
        assert entries["da3-small"].status(small, cuda=False) == "ready"
    assert "download" in entries["da3-base"].status(weights_state(entries["da3-base"].spec, cached), cuda=False)
    assert "CUDA" in entries["sam3d-objects"].status(weights_state(entries["sam3d-objects"].spec, cached), cuda=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert weights_state(entries["da3-base"].spec, cached).state == "unavailable"
    assert weights_state(entries["da3-small"].spec, cached).state == "cached"


def test_plugins_listing_shows_weights_and_full_licences(tmp_path):
    import os

    cache = fake_hub_cache(tmp_path / "hub", "depth-anything/DA3-SMALL", {"model.safetensors": b"x" * 10})
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "home"), HF_HUB_CACHE=str(cache), COLUMNS="120")
    result = subprocess.run([sys.executable, "-m", "perception_fm.cli", "plugins"], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    rows = {line.split()[1]: line for line in out.splitlines() if line[:1].strip() and len(line.split()) > 1}
    assert "cached" in rows["da3-small"] and "download" not in rows["da3-small"]
    assert "to download" in rows["da3-base"] and "ready" not in rows["da3-base"]
    assert "hf auth login" in out and "gated: facebook/sam3" in rows["sam3"]
    assert "…" not in out
    from perception_fm.plugin_manager import PluginManager

    # A fresh manager, like the subprocess's: other tests register stand-in plugins in this process's default one.
    for entry in PluginManager().models():  # every licence, whole, across its wrapped lines
        for word in entry.spec.license.split():
            assert word in out, (entry.spec.name, word)
