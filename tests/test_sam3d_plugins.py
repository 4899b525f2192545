"""SAM 3D Objects and SAM 3D Body plugins.

Here (no GPU, no network, no Meta code): registration and the errors of creating them; weights resolution; the
conversion of upstream outputs to our contracts, against stand-ins built with the structure Meta's code produces
(each cites the upstream lines it follows, facebookresearch/sam-3d-objects @ cf06676 and
facebookresearch/sam-3d-body @ b5c765a); the adapters' glue (request -> upstream call -> result) around a
stand-in pipeline / estimator with upstream's call signatures; pose_from_params with a stand-in TorchScript MHR
that has mhr_model.pt's interface; the benchmark's rows and its "cannot run" exit.
With Meta's code importable (and CUDA, and weights) the real adapters are checked too; otherwise those tests are
skipped with the missing piece named.
"""
import importlib
import importlib.util
import inspect
import os
import subprocess
import sys
import types
from typing import Optional

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial.transform import Rotation

from perception_fm.errors import (
    BadInputError,
    PluginUnavailableError,
    WeightsMismatchError,
    WeightsNotFoundError,
)
from perception_fm.hookspecs import ModelOptions, Task
from perception_fm.plugin_manager import PluginManager
from perception_fm.plugins import BUILTIN_PLUGINS
from perception_fm.plugins import sam3d_body as body
from perception_fm.plugins import sam3d_objects as objects
from perception_fm.tasks.body_mesh import BodyMeshModel, BodyRequest
from perception_fm.tasks.object_mesh import ObjectMeshModel, ObjectMeshRequest

PLUGINS = tuple(dict.fromkeys(BUILTIN_PLUGINS + ("perception_fm.plugins.sam3d_objects",
                                                 "perception_fm.plugins.sam3d_body")))


def manager() -> PluginManager:
    return PluginManager(builtin=PLUGINS, entry_points=False)


# -- registration and creation errors -----------------------------------------------------------------------


def test_registration_is_cheap():
    code = ("import sys, perception_fm.plugins.sam3d_objects as o, perception_fm.plugins.sam3d_body as b; "
            "specs = o.register_models() + b.register_models(); "
            "assert 'torch' not in sys.modules, 'heavy import at registration'; "
            "print(*[f'{s.name}:{s.task}:{s.default_weights}' for s in specs])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["sam3d-objects:object_mesh:facebook/sam-3d-objects",
                                     "sam3d-body:body_mesh:facebook/sam-3d-body-dinov3"]


def test_models_are_listed_with_task_licence_and_requirements():
    pm = manager()
    (obj,) = [e for e in pm.models(Task.OBJECT_MESH) if e.spec.name == "sam3d-objects"]
    (bod,) = [e for e in pm.models(Task.BODY_MESH) if e.spec.name == "sam3d-body"]
    for entry in (obj, bod):
        assert "SAM License" in entry.spec.license
        assert "torch" in entry.spec.requires and "huggingface_hub" in entry.spec.requires
    assert {"spconv", "pytorch3d", "hydra"} <= set(obj.spec.requires)
    assert {"roma", "yacs", "torchvision"} <= set(bod.spec.requires)
    assert "Apache" in bod.spec.license  # the MHR asset's licence


@pytest.mark.parametrize("task,name", [(Task.OBJECT_MESH, "sam3d-objects"), (Task.BODY_MESH, "sam3d-body")])
def test_creating_here_fails_with_an_error_naming_what_is_missing(task, name, tmp_path):
    pm = manager()
    (entry,) = [e for e in pm.models(task) if e.spec.name == name]
    options = ModelOptions(weights=str(tmp_path / "no-weights"), offline=True)
    with pytest.raises((PluginUnavailableError, WeightsNotFoundError)) as info:
        pm.create(task, name, options)
    message = str(info.value)
    if entry.missing:  # the manager names the missing modules before anything is built
        assert isinstance(info.value, PluginUnavailableError)
        assert all(module in message for module in entry.missing)
    elif not torch.cuda.is_available():
        assert isinstance(info.value, PluginUnavailableError) and "CUDA" in message
    else:
        assert isinstance(info.value, (PluginUnavailableError, WeightsNotFoundError))
        assert "not installed" in message or "no-weights" in message


@pytest.mark.parametrize("module", [objects, body])
def test_platform_problems_are_reported_together_before_weights(module, monkeypatch, tmp_path):
    model_class = objects.Sam3dObjectsModel if module is objects else body.Sam3dBodyModel
    options = ModelOptions(weights=str(tmp_path / "missing"), offline=True)
    monkeypatch.setattr(module, "upstream_source", lambda package: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PluginUnavailableError) as info:
        model_class.from_options(options)
    assert "not installed" in str(info.value) and "CUDA" in str(info.value)
    assert "sam3d" in str(info.value)  # names PyPI sam3d as an alternative source of Meta's code
    # platform present: now the weights are what is missing
    monkeypatch.setattr(module, "upstream_source", lambda package: "installed")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        model_class.from_options(options)


def test_cpu_device_is_refused_even_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert objects.cuda_problem("auto", "X") is None and objects.cuda_problem("cuda:1", "X") is None
    assert "runs only on a CUDA GPU" in objects.cuda_problem("cpu", "X")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "torch sees none" in objects.cuda_problem("auto", "X")


@pytest.mark.parametrize("model_class", [objects.Sam3dObjectsModel, body.Sam3dBodyModel])
def test_random_weights_and_unknown_options_are_refused(model_class):
    with pytest.raises(PluginUnavailableError, match="random weights"):
        model_class.from_options(ModelOptions(random_weights=True))
    with pytest.raises(ValueError, match="unknown"):
        model_class.from_options(ModelOptions(extra={"no_such_option": 1}))


def test_vendored_copy_in_pypi_sam3d_is_found_and_put_on_the_path(tmp_path, monkeypatch):
    """PyPI sam3d keeps Meta's code in sam3d/third_party/meta/{sam3d_objects,sam_3d_body} (sam3d/loaders.py)."""
    if objects.upstream_source("sam3d_objects") == "installed":
        pytest.skip("Meta's sam3d_objects is installed here; the vendored copy would not be used")
    meta = tmp_path / "sam3d" / "third_party" / "meta"
    for package in ("sam3d_objects", "sam_3d_body"):
        (meta / package).mkdir(parents=True)
        (meta / package / "__init__.py").write_text("")
    (tmp_path / "sam3d" / "__init__.py").write_text("")
    monkeypatch.setattr(sys, "path", [str(tmp_path)] + sys.path)
    importlib.invalidate_caches()
    assert objects.vendored_root("sam3d_objects") == meta
    assert objects.upstream_source("sam3d_objects").startswith("vendored")
    assert objects.use_upstream("sam3d_objects").startswith("vendored")
    assert sys.path[0] == str(meta)
    assert importlib.util.find_spec("sam3d_objects").origin == str(meta / "sam3d_objects" / "__init__.py")
    assert objects.vendored_root("no_such_package") is None


# -- weights ------------------------------------------------------------------------------------------------


def write_objects_checkpoint(directory, *, target="sam3d_objects.pipeline.inference_pipeline_pointmap."
                                                  "InferencePipelinePointMap", stage_target="sam3d_objects.x.Y",
                             skip=()):
    """A checkpoints/ folder shaped like facebook/sam-3d-objects' (pipeline.yaml naming per-stage files)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"_target_: {target}"]
    for stage in ("ss_generator", "slat_generator", "ss_decoder", "slat_decoder_gs", "slat_decoder_mesh"):
        lines += [f"{stage}_config_path: {stage}.yaml", f"{stage}_ckpt_path: {stage}.ckpt"]
        if f"{stage}.yaml" not in skip:
            (directory / f"{stage}.yaml").write_text(f"module:\n  backbone:\n    _target_: {stage_target}\n")
        if f"{stage}.ckpt" not in skip:
            (directory / f"{stage}.ckpt").write_bytes(b"0")
    lines += ["slat_decoder_gs_4_config_path: null", "depth_model:",
              "  _target_: sam3d_objects.pipeline.depth_models.moge.MoGe", "  model:",
              "    _target_: moge.model.v1.MoGeModel.from_pretrained",
              "    pretrained_model_name_or_path: Ruicheng/moge-vitl"]
    (directory / "pipeline.yaml").write_text("\n".join(lines) + "\n")
    return directory


def test_objects_weights_from_a_local_directory(tmp_path):
    folder = write_objects_checkpoint(tmp_path / "repo" / "checkpoints")
    assert objects.resolve_weights(str(folder), ModelOptions()) == folder
    # the hub repo's root (pipeline under checkpoints/) works too
    assert objects.resolve_weights(str(tmp_path / "repo"), ModelOptions()) == folder


def test_objects_weights_errors_name_the_missing_file(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        objects.resolve_weights(str(tmp_path / "nowhere"), ModelOptions())
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFoundError, match="pipeline.yaml"):
        objects.resolve_weights(str(tmp_path / "empty"), ModelOptions())
    folder = write_objects_checkpoint(tmp_path / "partial", skip=("slat_generator.ckpt",))
    with pytest.raises(WeightsNotFoundError, match="slat_generator.ckpt"):
        objects.resolve_weights(str(folder), ModelOptions())


def test_objects_pipeline_targets_outside_the_allowed_roots_are_refused(tmp_path):
    with pytest.raises(WeightsMismatchError, match="os.system"):
        objects.resolve_weights(str(write_objects_checkpoint(tmp_path / "a", target="os.system")), ModelOptions())
    with pytest.raises(WeightsMismatchError, match="builtins.eval"):
        objects.resolve_weights(str(write_objects_checkpoint(tmp_path / "b", stage_target="builtins.eval")),
                                ModelOptions())


@pytest.mark.parametrize("module,hub_id", [(objects, objects.HUB_ID), (body, body.HUB_ID)])
def test_hub_weights_offline_and_not_cached(module, hub_id, tmp_path):
    options = ModelOptions(offline=True, cache_dir=str(tmp_path / "hub-cache"))
    with pytest.raises(WeightsNotFoundError) as info:
        module.resolve_weights(hub_id, options)
    assert "offline" in str(info.value) and f"hf download {hub_id}" in str(info.value)


def write_body_checkpoint(directory, backbone="dinov3_vith16plus", mhr=True):
    (directory / "assets").mkdir(parents=True, exist_ok=True)
    (directory / "model.ckpt").write_bytes(b"0")
    (directory / "model_config.yaml").write_text(f"MODEL:\n  BACKBONE:\n    TYPE: {backbone}\n")
    if mhr:
        (directory / "assets" / "mhr_model.pt").write_bytes(b"0")
    return directory


def test_body_weights_layout_and_mhr_asset(tmp_path):
    folder = write_body_checkpoint(tmp_path / "dinov3")
    weights = body.resolve_weights(str(folder), ModelOptions())
    assert weights.checkpoint == folder / "model.ckpt" and weights.mhr == folder / "assets" / "mhr_model.pt"
    bare = write_body_checkpoint(tmp_path / "bare", mhr=False)
    with pytest.raises(WeightsNotFoundError) as info:
        body.resolve_weights(str(bare), ModelOptions())
    assert "mhr_model.pt" in str(info.value) and "MHR/releases" in str(info.value)  # says where to get it
    elsewhere = tmp_path / "mhr_model.pt"
    elsewhere.write_bytes(b"0")
    assert body.resolve_weights(str(bare), ModelOptions(), mhr_path=str(elsewhere)).mhr == elsewhere
    (folder / "model.ckpt").unlink()
    with pytest.raises(WeightsNotFoundError, match="model.ckpt"):
        body.resolve_weights(str(folder), ModelOptions())


def test_dinov3_backbone_code_must_be_cached_offline(tmp_path):
    dinov3 = write_body_checkpoint(tmp_path / "d") / "model_config.yaml"
    vith = write_body_checkpoint(tmp_path / "v", backbone="vit_hmr_512_384") / "model_config.yaml"
    hub = tmp_path / "torch-hub"
    hub.mkdir()
    assert "facebookresearch/dinov3" in body.backbone_code_problem(dinov3, offline=True, hub_dir=str(hub))
    assert body.backbone_code_problem(dinov3, offline=False, hub_dir=str(hub)) is None
    assert body.backbone_code_problem(vith, offline=True, hub_dir=str(hub)) is None
    (hub / "facebookresearch_dinov3_main").mkdir()
    assert body.backbone_code_problem(dinov3, offline=True, hub_dir=str(hub)) is None


# -- SAM 3D Objects: conventions ----------------------------------------------------------------------------

# to_glb's "rotate mesh (from z-up to y-up)": vertices @ this (postprocessing_utils.py:666)
TO_GLB = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=np.float64)


def look_at_rotation(eye, at, up) -> np.ndarray:
    """PyTorch3D's look_at_rotation (renderer/cameras.py): columns x = up x z, y = z x x, z = at - eye."""
    z = np.subtract(at, eye, dtype=np.float64)
    z /= np.linalg.norm(z)
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


# camera_to_pytorch3d_camera (inference_pipeline_pointmap.py:26-41): the rotation compute_pointmap applies to
# MoGe's (OpenCV) pointmap with Transform3d().rotate(R), i.e. p_p3d = p_cv @ R (row vectors, :253-258).
R_CV_TO_P3D = look_at_rotation(eye=(0, 0, -1), at=(0, 0, 0), up=(0, -1, 0))


def upstream_camera_points(glb_vertices, quat_wxyz, translation, scale) -> np.ndarray:
    """Where upstream puts a glb vertex, in the OpenCV camera frame: undo to_glb's y-up rotation
    (layout_post_optimization_utils.py:116), apply Transform3d().scale(s).rotate(R).translate(t) on row vectors
    (transforms_3d.py:20-30, scene_visualizer.py:190-194) with R = quaternion_to_matrix(q) (w first), then the
    inverse of camera_to_pytorch3d_camera."""
    w, x, y, z = np.asarray(quat_wxyz, np.float64).reshape(4)
    R = Rotation.from_quat([x, y, z, w]).as_matrix()
    v = np.asarray(glb_vertices, np.float64) @ TO_GLB.T
    p3d = (v * np.asarray(scale, np.float64).reshape(-1)) @ R + np.asarray(translation, np.float64).reshape(3)
    return p3d @ R_CV_TO_P3D.T


def cube():
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))  # 8 vertices at +-0.5, 12 faces
    colors = np.linspace(0.0, 1.0, len(box.vertices) * 3).reshape(-1, 3)
    return np.asarray(box.vertices), np.asarray(box.faces), colors


def upstream_object_outputs(raw_vertices, faces, colors, quat_wxyz, translation, scale, with_glb=True):
    """The dict InferencePipelinePointMap.run returns (inference_pipeline_pointmap.py:418-423): the layout as
    (1, 4) / (1, 3) / (1, 3) tensors (inference_utils.py:321-325), "mesh" the decoder's MeshExtractResult list
    (cube2mesh.py:9-16; vertex_attrs colour in [0, 1]), "glb" to_glb's trimesh (y-up, vertex colours)."""
    mesh = types.SimpleNamespace(vertices=torch.tensor(raw_vertices, dtype=torch.float32),
                                 faces=torch.tensor(faces, dtype=torch.long),
                                 vertex_attrs=torch.tensor(colors, dtype=torch.float32))
    outputs = {
        "rotation": torch.tensor(np.reshape(quat_wxyz, (1, 4)), dtype=torch.float32),
        "translation": torch.tensor(np.reshape(translation, (1, 3)), dtype=torch.float32),
        "scale": torch.tensor(np.reshape(scale, (1, 3)), dtype=torch.float32),
        "mesh": [mesh], "glb": None, "gs": object(), "coords": torch.zeros(5, 4, dtype=torch.int32),
        "pointmap": torch.zeros(4, 4, 3),
    }
    if with_glb:
        glb = trimesh.Trimesh(vertices=np.asarray(raw_vertices) @ TO_GLB, faces=faces, process=False)
        glb.visual.vertex_colors = colors  # what to_glb does with use_vertex_color (:668-670)
        outputs["glb"] = glb
    return outputs


def test_pytorch3d_camera_is_opencv_with_x_and_y_negated():
    assert np.allclose(R_CV_TO_P3D, np.diag([-1.0, -1.0, 1.0]))
    assert np.allclose(objects.P3D_TO_OPENCV, R_CV_TO_P3D.T)


def test_quaternions_are_scalar_first():
    rotations = Rotation.random(20, random_state=3)
    for rotation in rotations:
        x, y, z, w = rotation.as_quat()
        assert np.allclose(objects.quaternion_wxyz_to_matrix([w, x, y, z]), rotation.as_matrix(), atol=1e-12)
        assert np.allclose(objects.quaternion_wxyz_to_matrix(3.0 * np.array([w, x, y, z])), rotation.as_matrix())
    with pytest.raises(ValueError):
        objects.quaternion_wxyz_to_matrix([0, 0, 0, 0])


def test_known_vertex_lands_where_upstream_puts_it():
    vertices, faces, colors = cube()
    corner = int(np.argmin(np.linalg.norm(vertices - [0.5, 0.5, 0.5], axis=1)))
    # identity rotation, scale 2, 3 units ahead (PyTorch3D and OpenCV agree on z)
    outputs = upstream_object_outputs(vertices, faces, colors, [1, 0, 0, 0], [0.0, 0.0, 3.0], [2.0, 2.0, 2.0])
    result = objects.reconstruction_from_outputs(outputs)
    assert np.allclose(result.vertices, vertices)  # the decoder's z-up frame, to_glb's rotation undone
    # (0.5, 0.5, 0.5) * 2 + (0, 0, 3) = (1, 1, 4) in PyTorch3D's camera (x left, y up) = (-1, -1, 4) in OpenCV's
    assert np.allclose(result.camera_vertices()[corner], [-1.0, -1.0, 4.0], atol=1e-6)
    # PyTorch3D's x points left and y up: (-0.3, 0.2) there is 0.3 m right and 0.2 m up, (0.3, -0.2) in OpenCV's
    moved = objects.reconstruction_from_outputs(
        upstream_object_outputs(vertices, faces, colors, [1, 0, 0, 0], [-0.3, 0.2, 2.0], [1, 1, 1]))
    assert np.allclose(moved.camera_vertices().mean(axis=0), [0.3, -0.2, 2.0], atol=1e-6)


@pytest.mark.parametrize("with_glb", [True, False])
def test_cube_with_rotation_translation_scale_matches_upstream_layout(with_glb):
    vertices, faces, colors = cube()
    rng = np.random.default_rng(7)
    for rotation in Rotation.random(5, random_state=11):
        x, y, z, w = rotation.as_quat()
        quat = [w, x, y, z]
        translation = rng.uniform(-1, 1, 3) + [0, 0, 4]
        scale = np.full(3, rng.uniform(0.2, 3.0))
        outputs = upstream_object_outputs(vertices, faces, colors, quat, translation, scale, with_glb=with_glb)
        result = objects.reconstruction_from_outputs(outputs)
        expected = upstream_camera_points(vertices @ TO_GLB, quat, translation, scale)
        assert np.allclose(result.camera_vertices(), expected, atol=1e-5)
        assert np.allclose(result.rotation @ result.rotation.T, np.eye(3), atol=1e-9)
        assert np.isclose(np.linalg.det(result.rotation), 1.0)  # a rotation, not a reflection
        assert result.vertices.dtype == np.float32 and result.faces.dtype == np.int32
        assert np.array_equal(result.faces, faces)
        assert result.vertex_colors.dtype == np.uint8 and result.vertex_colors.shape == (8, 3)
        assert np.abs(result.vertex_colors.astype(int) - np.round(colors * 255)).max() <= 1


def test_anisotropic_scale_is_per_object_axis():
    vertices, faces, colors = cube()
    rotation = Rotation.from_euler("xyz", [20, -35, 50], degrees=True)
    x, y, z, w = rotation.as_quat()
    outputs = upstream_object_outputs(vertices, faces, colors, [w, x, y, z], [0, 0, 5], [1.0, 2.0, 0.5])
    result = objects.reconstruction_from_outputs(outputs)
    expected = upstream_camera_points(vertices @ TO_GLB, [w, x, y, z], [0, 0, 5], [1.0, 2.0, 0.5])
    assert np.allclose(result.camera_vertices(), expected, atol=1e-5)
    assert np.allclose(result.scale, [1.0, 2.0, 0.5])


def test_empty_mesh_and_missing_layout():
    vertices, faces, colors = cube()
    outputs = upstream_object_outputs(np.zeros((0, 3)), np.zeros((0, 3), int), np.zeros((0, 3)), [1, 0, 0, 0],
                                      [0, 0, 1], [1, 1, 1], with_glb=False)
    with pytest.raises(BadInputError) as info:
        objects.reconstruction_from_outputs(outputs)
    assert info.value.reason == "empty_mesh"
    outputs = upstream_object_outputs(vertices, faces, colors, [1, 0, 0, 0], [0, 0, 1], [1, 1, 1])
    del outputs["rotation"]
    with pytest.raises(KeyError, match="rotation"):
        objects.reconstruction_from_outputs(outputs)


def test_pointmap_goes_to_pytorch3d_camera_with_nan_for_unknown():
    pointmap = np.array([[[1.0, 2.0, 3.0], [np.inf, 0.0, 1.0]], [[np.nan, 1, 1], [-1.0, -2.0, 5.0]]], np.float32)
    converted = objects.pointmap_to_pipeline(pointmap)
    assert np.allclose(converted[0, 0], pointmap[0, 0] @ R_CV_TO_P3D)
    assert np.allclose(converted[1, 1], [1.0, 2.0, 5.0])
    assert np.isnan(converted[0, 1]).all() and np.isnan(converted[1, 0]).all()
    with pytest.raises(ValueError):
        objects.pointmap_to_pipeline(np.zeros((4, 4)))


# -- SAM 3D Objects: the adapter around a stand-in pipeline -------------------------------------------------


class StandInPipeline:
    """InferencePipelinePointMap's run() signature (inference_pipeline_pointmap.py:316-333); records its calls and
    returns upstream-shaped outputs. depth_model None = built without MoGe."""

    def __init__(self, outputs, depth_model="moge"):
        self.outputs, self.depth_model, self.calls = outputs, depth_model, []

    def run(self, image, mask=None, seed=None, stage1_only=False, with_mesh_postprocess=True,
            with_texture_baking=True, with_layout_postprocess=True, use_vertex_color=False,
            stage1_inference_steps=None, stage2_inference_steps=None, use_stage1_distillation=False,
            use_stage2_distillation=False, pointmap=None, decode_formats=None, estimate_plane=False):
        call = dict(locals())
        del call["self"]
        self.calls.append(call)
        return self.outputs


STAND_IN_QUAT_WXYZ = np.roll(Rotation.from_euler("z", 30, degrees=True).as_quat(), 1)  # scipy: xyzw
STAND_IN_TRANSLATION, STAND_IN_SCALE = [0.1, 0.0, 2.0], [0.5, 0.5, 0.5]


def objects_model(depth_model="moge", **options):
    vertices, faces, colors = cube()
    outputs = upstream_object_outputs(vertices, faces, colors, STAND_IN_QUAT_WXYZ, STAND_IN_TRANSLATION,
                                      STAND_IN_SCALE)
    pipeline = StandInPipeline(outputs, depth_model)
    return objects.Sam3dObjectsModel(pipeline, weights="stand-in", device="cpu",
                                     options=objects.ObjectsOptions(**options)), pipeline


def object_request(**changes):
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    mask = np.zeros((48, 64), bool)
    mask[10:30, 20:40] = True
    xs, ys = np.meshgrid(np.linspace(-1, 1, 64), np.linspace(-0.7, 0.7, 48))
    pointmap = np.dstack([xs, ys, np.full((48, 64), 2.0)])
    fields = dict(image=image, mask=mask, pointmap=pointmap.astype(np.float32), seed=5)
    fields.update(changes)
    return ObjectMeshRequest(**fields)


def test_reconstruct_hands_upstream_rgba_pointmap_and_seed():
    model, pipeline = objects_model()
    assert isinstance(model, ObjectMeshModel)
    request = object_request()
    result = model.reconstruct(request)
    (call,) = pipeline.calls
    rgba = call["image"]
    assert rgba.shape == (48, 64, 4) and rgba.dtype == np.uint8
    assert np.array_equal(rgba[..., :3], request.image)
    assert np.array_equal(rgba[..., 3], np.where(request.mask, 255, 0))  # mask in alpha, as Meta's notebook
    assert call["mask"] is None and call["seed"] == 5
    assert isinstance(call["pointmap"], torch.Tensor) and call["pointmap"].dtype == torch.float32
    assert np.allclose(call["pointmap"].numpy(), request.pointmap * [-1, -1, 1])  # PyTorch3D camera
    assert call["use_vertex_color"] and not call["with_texture_baking"] and not call["with_mesh_postprocess"]
    assert call["with_layout_postprocess"] and not call["stage1_only"]
    # where upstream's own conventions put the stand-in's cube (derived from its lines, not from our adapter)
    expected = upstream_camera_points(cube()[0] @ TO_GLB, STAND_IN_QUAT_WXYZ, STAND_IN_TRANSLATION, STAND_IN_SCALE)
    assert np.allclose(result.camera_vertices(), expected, atol=1e-5)
    assert result.timings_ms["pipeline"] >= 0


@pytest.mark.parametrize("sampler,steps,expected", [
    ("shortcut", None, {}),
    ("shortcut", 4, dict(stage1_inference_steps=4, stage2_inference_steps=4, use_stage1_distillation=True,
                         use_stage2_distillation=True)),
    ("flow", 12, dict(stage1_inference_steps=12, stage2_inference_steps=12, use_stage1_distillation=False,
                      use_stage2_distillation=False)),
])
def test_steps_pick_shortcut_or_flow_sampling(sampler, steps, expected):
    model, pipeline = objects_model(sampler=sampler)
    model.reconstruct(object_request(steps=steps))
    call = pipeline.calls[0]
    defaults = dict(stage1_inference_steps=None, stage2_inference_steps=None, use_stage1_distillation=False,
                    use_stage2_distillation=False)
    assert {key: call[key] for key in defaults} == {**defaults, **expected}
    assert model.capabilities.sampling_steps == (objects.SHORTCUT_STEPS if sampler == "shortcut" else ())


def test_unsupported_shortcut_step_count_is_a_bad_input():
    model, pipeline = objects_model()
    with pytest.raises(BadInputError) as info:
        model.reconstruct(object_request(steps=5))
    assert info.value.reason == "steps" and "sampler=flow" in str(info.value)
    with pytest.raises(BadInputError):
        model.reconstruct(object_request(steps=0))
    assert pipeline.calls == []


def test_bad_object_requests_are_rejected_before_the_pipeline_runs():
    model, pipeline = objects_model()
    cases = {
        "empty_mask": object_request(mask=np.zeros((48, 64), bool)),
        "size_mismatch": object_request(mask=np.ones((40, 64), bool)),
        "encoding": object_request(image=np.zeros((48, 64, 3), np.float32)),
        "pointmap": object_request(pointmap=np.full((48, 64, 3), np.nan, np.float32)),
    }
    for reason, request in cases.items():
        with pytest.raises(BadInputError) as info:
            model.reconstruct(request)
        assert info.value.reason == reason
    with pytest.raises(BadInputError) as info:
        model.reconstruct(object_request(pointmap=np.zeros((48, 64, 2), np.float32)))
    assert info.value.reason == "size_mismatch"
    no_depth, no_depth_pipeline = objects_model(depth_model=None)
    with pytest.raises(BadInputError) as info:
        no_depth.reconstruct(object_request(pointmap=None))
    assert info.value.reason == "pointmap"
    assert pipeline.calls == [] and no_depth_pipeline.calls == []
    model.reconstruct(object_request(pointmap=None))  # with a depth model, no pointmap is fine
    assert pipeline.calls[0]["pointmap"] is None


# -- SAM 3D Body: conventions and the MHR model -------------------------------------------------------------

N_VERTICES, N_JOINTS, N_KEYPOINTS = 12, 5, 7
JOINT_NAMES = ["body_world", "root", "l_upleg", "r_upleg", "c_spine0"]
JOINT_PARENTS = [-1, 0, 1, 1, 1]


class StandInMhr(torch.nn.Module):
    """mhr_model.pt's interface (mhr_head.py:227-232; the scripted MHR of facebookresearch/MHR): forward(identity
    (B, 45), model parameters (B, 204), face expression (B, 72)) -> (vertices (B, V, 3) in cm, skeleton state
    (B, J, 8): translation cm, quaternion xyzw, scale), in MHR's frame; character_torch.skeleton holds joint_names
    and joint_parents. Linear in its inputs, so every parameter moves the mesh."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        skeleton = torch.nn.Module()
        skeleton.joint_names = JOINT_NAMES
        skeleton.register_buffer("joint_parents", torch.tensor(JOINT_PARENTS, dtype=torch.int32))
        self.character_torch = torch.nn.Module()
        self.character_torch.skeleton = skeleton
        self.register_buffer("rest", 40.0 * torch.randn(N_VERTICES, 3, generator=generator))
        self.register_buffer("joint_rest", 40.0 * torch.randn(N_JOINTS, 3, generator=generator))
        self.register_buffer("shape_basis", torch.randn(45, N_VERTICES * 3, generator=generator))
        self.register_buffer("pose_basis", torch.randn(204, (N_VERTICES + N_JOINTS) * 3, generator=generator))
        self.register_buffer("face_basis", torch.randn(72, N_VERTICES * 3, generator=generator))

    def forward(self, identity_coeffs: torch.Tensor, model_parameters: torch.Tensor,
                face_expr_coeffs: Optional[torch.Tensor]):
        batch, n_vertices, n_joints = model_parameters.shape[0], self.rest.shape[0], self.joint_rest.shape[0]
        pose = (model_parameters @ self.pose_basis).reshape(batch, n_vertices + n_joints, 3)
        vertices = self.rest[None] + (identity_coeffs @ self.shape_basis).reshape(batch, n_vertices, 3)
        vertices = vertices + pose[:, :n_vertices]
        if face_expr_coeffs is not None:
            vertices = vertices + (face_expr_coeffs @ self.face_basis).reshape(batch, n_vertices, 3)
        joints = self.joint_rest[None] + pose[:, n_vertices:]
        quaternion = torch.zeros(batch, n_joints, 4)
        quaternion[:, :, 3] = 1.0
        return vertices, torch.cat([joints, quaternion, torch.ones(batch, n_joints, 1)], dim=2)


@pytest.fixture(scope="module")
def mhr_file(tmp_path_factory):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        path = tmp_path_factory.mktemp("mhr") / "mhr_model.pt"
        torch.jit.save(torch.jit.script(StandInMhr()), str(path))
    return path


@pytest.fixture(scope="module")
def mhr(mhr_file):
    return body.MhrBody.load(mhr_file)


class StandInEstimator:
    """SAM3DBodyEstimator with process_one_image's signature (sam_3d_body_estimator.py:63-75) whose outputs follow
    upstream's construction: parameters through MHR, then /100 and y, z negated (mhr_head.py:233-234, 337-343),
    keypoints a fixed linear map of vertices and joints (mhr_head.py:239-251), the camera translation from the
    camera head's (s, tx, ty) and the box (camera_head.py:78-96), 2D keypoints projected as sam3d_body.py:1628-1645,
    and the per-person dict of sam_3d_body_estimator.py:196-216."""

    def __init__(self, mhr_module):
        self.mhr = mhr_module
        self.faces = np.array([[0, 1, 2], [2, 3, 0], [4, 5, 6], [8, 9, 10]], dtype=np.int64)  # head_pose.faces
        self.calls = []
        rng = np.random.default_rng(1)
        self.keypoint_mapping = rng.dirichlet(np.ones(N_VERTICES + N_JOINTS), size=N_KEYPOINTS)

    def process_one_image(self, img, bboxes=None, masks=None, cam_int=None, det_cat_id=0, bbox_thr=0.5,
                          nms_thr=0.3, use_mask=False, inference_type="full"):
        self.calls.append(dict(img=img, bboxes=bboxes, masks=masks, cam_int=cam_int, inference_type=inference_type))
        height, width = img.shape[:2]
        if cam_int is None:  # prepare_batch.py:65-75
            diagonal = (height ** 2 + width ** 2) ** 0.5
            cam_int = torch.tensor([[[diagonal, 0, width / 2.0], [0, diagonal, height / 2.0], [0, 0, 1]]])
        focal = float(cam_int[0, 0, 0])
        outputs = []
        for index, box in enumerate(np.asarray(bboxes).reshape(-1, 4)):
            rng = np.random.default_rng(100 + index)
            params = {
                "global_rot": rng.normal(0, 0.5, 3), "body_pose_params": rng.normal(0, 0.3, 133),
                "hand_pose_params": rng.normal(0, 0.3, 108), "scale_params": rng.normal(0, 0.1, 28),
                "shape_params": rng.normal(0, 0.5, 45), "expr_params": np.zeros(72),
                "mhr_model_params": np.concatenate([np.zeros(3), rng.normal(0, 0.1, 201)]),  # global trans 0
            }
            with torch.no_grad():
                vertices, skeleton = self.mhr(torch.tensor(params["shape_params"][None], dtype=torch.float32),
                                              torch.tensor(params["mhr_model_params"][None], dtype=torch.float32),
                                              torch.tensor(params["expr_params"][None], dtype=torch.float32))
            vertices = vertices[0].numpy() / 100
            joints = skeleton[0, :, :3].numpy() / 100
            keypoints = self.keypoint_mapping @ np.concatenate([vertices, joints])
            for points in (vertices, joints, keypoints):
                points[..., [1, 2]] *= -1  # "Camera system difference"
            s, tx, ty = 0.9, 0.05, -0.02
            bbox_size = max(box[2] - box[0], box[3] - box[1])
            bs = bbox_size * s
            centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
            cam_t = np.array([tx + 2 * (centre[0] - width / 2) / bs, ty + 2 * (centre[1] - height / 2) / bs,
                              2 * focal / bs])
            placed = keypoints + cam_t
            keypoints_2d = placed[:, :2] * focal / placed[:, 2:] + [width / 2, height / 2]
            outputs.append({
                "bbox": box, "focal_length": np.float32(focal),
                "pred_keypoints_3d": keypoints.astype(np.float32), "pred_keypoints_2d": keypoints_2d.astype(np.float32),
                "pred_vertices": vertices.astype(np.float32), "pred_cam_t": cam_t.astype(np.float32),
                "pred_pose_raw": np.zeros(266, np.float32),
                **{key: value.astype(np.float32) for key, value in params.items()},
                "mask": None if masks is None else masks[index], "pred_joint_coords": joints.astype(np.float32),
                "pred_global_rots": np.tile(np.eye(3, dtype=np.float32), (N_JOINTS, 1, 1)),
            })
        return outputs


def body_model(mhr, **options):
    estimator = StandInEstimator(mhr.module)
    return body.Sam3dBodyModel(estimator, mhr, weights="stand-in", device="cpu",
                               keypoint_names=[f"kp{i}" for i in range(N_KEYPOINTS)],
                               options=body.BodyOptions(**options)), estimator


K = np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]])
BOXES = np.array([[100, 80, 260, 420], [380, 60, 560, 470]], np.float32)


def test_mhr_points_to_camera_on_a_known_point():
    # MHR: 10 cm right, 20 cm up, 30 cm towards the viewer; the body 4 m ahead and 0.5 m right of the camera
    point = body.mhr_to_camera(np.array([[10.0, 20.0, 30.0]]), [0.5, 0.0, 4.0])
    assert np.allclose(point, [[0.6, -0.2, 3.7]])  # OpenCV optical frame: y down, z forward


def test_estimates_place_upstream_outputs_in_the_camera_frame(mhr):
    outputs = StandInEstimator(mhr.module).process_one_image(np.zeros((480, 640, 3), np.uint8), bboxes=BOXES,
                                                             cam_int=torch.tensor(K[None], dtype=torch.float32))
    estimates = body.estimates_from_outputs(outputs)
    assert len(estimates) == 2
    for output, estimate in zip(outputs, estimates):
        t = output["pred_cam_t"]
        assert np.allclose(estimate.camera_translation, t)
        assert np.allclose(estimate.vertices, output["pred_vertices"] + t, atol=1e-6)
        assert np.allclose(estimate.joints, output["pred_joint_coords"] + t, atol=1e-6)
        assert estimate.vertices.dtype == np.float32 and estimate.vertices.shape == (N_VERTICES, 3)
        assert estimate.keypoints_3d.shape == (N_KEYPOINTS, 3) and estimate.keypoints_2d.shape == (N_KEYPOINTS, 2)
        # our 3D keypoints project onto upstream's 2D ones with K: the same x-right, y-down, z-forward frame
        projected = (K @ estimate.keypoints_3d.T).T
        assert (projected[:, 2] > 0).all()
        assert np.allclose(projected[:, :2] / projected[:, 2:], estimate.keypoints_2d, atol=1e-3)
        assert set(estimate.params) == {"global_rot", "body_pose", "hand_pose", "shape", "scale", "expression",
                                        "mhr_model_params"}
        assert estimate.params["mhr_model_params"].shape == (204,) and estimate.params["hand_pose"].shape == (108,)
    # each person lands inside its own box
    for box, estimate in zip(BOXES, estimates):
        u, v, w = K @ estimate.joints.mean(axis=0)
        assert box[0] < u / w < box[2] and box[1] < v / w < box[3]


def test_root_rotation_turns_the_roots_local_offsets_into_camera_frame_bones():
    """Upstream: joint coordinates = MHR points / 100 with y, z negated; pred_global_rots = each joint's rotation
    in MHR's frame. A child at root + R d (cm, MHR frame) must sit at root + root_rotation (d / 100) in ours."""
    rng = np.random.default_rng(3)
    R = Rotation.random(random_state=4).as_matrix()
    root_mhr, offset = rng.normal(0, 20, 3), np.array([0.0, 12.0, -5.0])  # cm
    joints_mhr = np.stack([root_mhr, root_mhr + R @ offset, root_mhr + 2 * R @ offset])
    flip = np.array([1.0, -1.0, -1.0])
    output = {"pred_cam_t": np.array([0.3, -0.1, 3.0]), "pred_vertices": joints_mhr / 100 * flip,
              "pred_joint_coords": joints_mhr / 100 * flip, "pred_keypoints_3d": joints_mhr / 100 * flip,
              "pred_keypoints_2d": np.zeros((3, 2)),
              "pred_global_rots": np.stack([R, np.eye(3), np.eye(3)]).astype(np.float32)}
    estimate = body.estimate_from_output(output, root_joint=0)
    assert np.allclose(estimate.root_rotation @ estimate.root_rotation.T, np.eye(3), atol=1e-6)
    assert np.isclose(np.linalg.det(estimate.root_rotation), 1.0, atol=1e-6)
    for child in (1, 2):
        bone = estimate.joints[child] - estimate.joints[0]
        assert np.allclose(bone, estimate.root_rotation @ (child * offset / 100), atol=1e-6)
    assert body.estimate_from_output(output).root_rotation is None  # no root joint given
    del output["pred_global_rots"]
    assert body.estimate_from_output(output, root_joint=0).root_rotation is None  # older upstream


def test_missing_upstream_output_is_named():
    with pytest.raises(KeyError, match="pred_cam_t"):
        body.estimate_from_output({"pred_vertices": np.zeros((3, 3))})
    with pytest.raises(ValueError, match="pred_vertices"):
        body.estimate_from_output({"pred_cam_t": np.zeros(3), "pred_vertices": np.zeros((3, 2)),
                                   "pred_joint_coords": np.zeros((2, 3)), "pred_keypoints_2d": np.zeros((2, 2)),
                                   "pred_keypoints_3d": np.zeros((2, 3))})


def test_mhr_torchscript_asset_gives_the_skeleton(mhr):
    assert mhr.joint_names == JOINT_NAMES
    assert mhr.joint_parents.tolist() == JOINT_PARENTS and mhr.joint_parents.dtype == np.int64


def test_pose_from_params_reproduces_the_estimate_and_follows_the_params(mhr):
    model, _ = body_model(mhr)
    assert isinstance(model, BodyMeshModel)
    (estimate,) = model.estimate(BodyRequest(image=np.zeros((480, 640, 3), np.uint8), boxes=BOXES[:1], intrinsics=K))
    vertices, joints = model.pose_from_params(estimate.params, estimate.camera_translation)
    assert np.allclose(vertices, estimate.vertices, atol=1e-5) and np.allclose(joints, estimate.joints, atol=1e-5)
    assert vertices.dtype == np.float32 and joints.shape == (N_JOINTS, 3)
    # new parameters and translation: MHR's output in cm, y and z negated, plus the translation
    params = dict(estimate.params, mhr_model_params=estimate.params["mhr_model_params"] * 1.5,
                  shape=estimate.params["shape"] - 0.2)
    moved, moved_joints = model.pose_from_params(params, np.array([0.1, -0.2, 3.0]))
    raw_vertices, raw_skeleton = StandInMhr()(torch.tensor(params["shape"][None]).float(),
                                              torch.tensor(params["mhr_model_params"][None]).float(),
                                              torch.zeros(1, 72))
    expected = raw_vertices[0].detach().numpy() / 100 * [1, -1, -1] + [0.1, -0.2, 3.0]
    assert np.allclose(moved, expected, atol=1e-5)
    assert np.allclose(moved_joints, raw_skeleton[0, :, :3].detach().numpy() / 100 * [1, -1, -1] + [0.1, -0.2, 3.0],
                       atol=1e-5)
    assert not np.allclose(moved, vertices, atol=1e-3)
    with pytest.raises(BadInputError, match="mhr_model_params"):
        model.pose_from_params({"shape": estimate.params["shape"]}, estimate.camera_translation)


def test_mhr_load_errors(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="mhr_model.pt"):
        body.MhrBody.load(tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not torchscript")
    with pytest.raises(WeightsMismatchError):
        body.MhrBody.load(junk)
    with pytest.raises(WeightsMismatchError, match="skeleton"):
        body.MhrBody(torch.nn.Linear(2, 2))


# -- SAM 3D Body: the adapter around a stand-in estimator ---------------------------------------------------


def test_estimate_calls_upstream_with_boxes_masks_and_intrinsics(mhr):
    model, estimator = body_model(mhr, inference_type="body")
    image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    masks = np.zeros((2, 480, 640), bool)
    masks[0, 100:400, 120:250] = True
    masks[1, 80:450, 400:550] = True
    estimates = model.estimate(BodyRequest(image=image, boxes=BOXES, masks=masks, intrinsics=K))
    (call,) = estimator.calls
    assert np.array_equal(call["img"], image) and call["inference_type"] == "body"
    assert call["bboxes"].dtype == np.float32 and np.array_equal(call["bboxes"], BOXES)
    assert call["masks"].dtype == np.uint8 and set(np.unique(call["masks"])) == {0, 1}
    assert np.array_equal(call["masks"].astype(bool), masks)
    assert isinstance(call["cam_int"], torch.Tensor) and tuple(call["cam_int"].shape) == (1, 3, 3)
    assert call["cam_int"].dtype == torch.float32 and np.allclose(call["cam_int"][0].numpy(), K)
    # one estimate per box, in order
    assert len(estimates) == 2 and estimates[0].joints.mean(axis=0)[0] < estimates[1].joints.mean(axis=0)[0]
    assert estimates[0].timings_ms["estimate"] >= estimates[0].timings_ms["per_person"] >= 0
    assert model.faces.dtype == np.int32 and model.joint_names == JOINT_NAMES
    assert list(model.joint_parents) == JOINT_PARENTS and len(model.keypoint_names) == N_KEYPOINTS
    model.estimate(BodyRequest(image=image, boxes=BOXES[:1]))
    assert estimator.calls[-1]["cam_int"] is None and estimator.calls[-1]["masks"] is None


def test_bad_body_requests(mhr):
    model, estimator = body_model(mhr)
    image = np.zeros((480, 640, 3), np.uint8)
    assert model.estimate(BodyRequest(image=image, boxes=np.zeros((0, 4)))) == []
    cases = {
        "boxes": [BodyRequest(image=image, boxes=np.array([[10, 10, 5, 50]])),
                  BodyRequest(image=image, boxes=np.array([[np.nan, 0, 5, 5]])),
                  BodyRequest(image=image, boxes=np.zeros((2, 3)))],
        "size_mismatch": [BodyRequest(image=image, boxes=BOXES, masks=np.zeros((1, 480, 640), bool))],
        "camera_info": [BodyRequest(image=image, boxes=BOXES, intrinsics=np.eye(2))],
        "encoding": [BodyRequest(image=image[..., 0], boxes=BOXES)],
    }
    for reason, requests in cases.items():
        for request in requests:
            with pytest.raises(BadInputError) as info:
                model.estimate(request)
            assert info.value.reason == reason
    assert estimator.calls == []


# -- the benchmark ------------------------------------------------------------------------------------------


def test_bench_says_it_cannot_run_and_exits_0(tmp_path, capsys):
    from perception_fm.bench import sam3d_bench

    assert sam3d_bench.main(["--objects-weights", str(tmp_path / "none"), "--body-weights",
                             str(tmp_path / "none"), "--offline"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("sam3d-objects: cannot run here: ") and lines[1].startswith("sam3d-body: cannot run")
    assert all(("Error" in line) for line in lines)


def test_bench_body_is_the_body_part_of_sam3d(tmp_path, capsys):
    from perception_fm.cli import main

    assert main(["bench", "body", "--body-weights", str(tmp_path / "none"), "--offline"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sam3d-body: cannot run here: ")


def test_bench_rows_on_stand_in_models(mhr):
    from perception_fm.bench import sam3d_bench

    model, pipeline = objects_model()
    rows = sam3d_bench.bench_objects(model, [None, 4], iterations=1)
    assert [row["steps"] for row in rows] == ["default", 4] and len(pipeline.calls) == 4
    assert all(row["object_ms"] >= 0 and row["vertices"] == 8 for row in rows)
    assert pipeline.calls[-1]["pointmap"].shape == (480, 640, 3)
    person_model, estimator = body_model(mhr)
    rows = sam3d_bench.bench_body(person_model, [1, 3], iterations=1)
    assert [row["people"] for row in rows] == [1, 3]
    assert [len(call["bboxes"]) for call in estimator.calls] == [1, 1, 3, 3]
    assert np.isclose(rows[1]["person_ms"] * 3, rows[1]["image_ms"])


# -- Meta's real code (only where it is installed: CUDA, its extensions, the gated weights) -----------------


def _import_upstream(module, package: str, name: str):
    """Import Meta's `package` through the plugin's own code path (use_upstream). Skips only when Meta's code
    is absent: the package is not installed (scripts/setup.sh does not install it: CUDA, its extensions, gated
    weights), or this version of it lacks the module `name` (an ImportError naming a module of `package`).
    Anything else fails: the package found but not importable through use_upstream (our path), a dependency of
    it missing (it is installed, so its requirements must be), an error in our code or in theirs."""
    if module.upstream_source(package) is None:
        pytest.skip(f"{package} is not installed (Meta's repository, or PyPI sam3d which vendors it)")
    module.use_upstream(package)
    try:
        return importlib.import_module(name)
    except ImportError as error:
        if not (error.name or "").startswith(package + "."):
            raise
        pytest.skip(f"this version of {package} lacks {error.name}: {error}")


def test_import_upstream_skips_only_for_modules_meta_lacks(tmp_path, monkeypatch):
    """The helper above, on a stand-in package: what skips and what fails."""
    package = tmp_path / "meta_stand_in"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "broken.py").write_text("raise RuntimeError('a bug in their module')\n")
    (package / "needs_dependency.py").write_text("import spconv_not_installed_h7\n")
    found = types.SimpleNamespace(upstream_source=lambda name: "installed",
                                  use_upstream=lambda name: monkeypatch.syspath_prepend(str(tmp_path)))
    assert _import_upstream(found, "meta_stand_in", "meta_stand_in").__file__ == str(package / "__init__.py")
    with pytest.raises(pytest.skip.Exception, match="lacks meta_stand_in.absent"):
        _import_upstream(found, "meta_stand_in", "meta_stand_in.absent")
    with pytest.raises(RuntimeError, match="a bug in their module"):
        _import_upstream(found, "meta_stand_in", "meta_stand_in.broken")
    with pytest.raises(ModuleNotFoundError, match="spconv_not_installed_h7"):
        _import_upstream(found, "meta_stand_in", "meta_stand_in.needs_dependency")
    lost = types.SimpleNamespace(upstream_source=lambda name: "installed", use_upstream=lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="meta_stand_in_elsewhere"):  # our path did not make it importable
        _import_upstream(lost, "meta_stand_in_elsewhere", "meta_stand_in_elsewhere")
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        _import_upstream(types.SimpleNamespace(upstream_source=lambda name: None), "meta_stand_in", "meta_stand_in")


def test_real_objects_pipeline_has_the_run_signature_we_call():
    problem = objects.cuda_problem("auto", "importing sam3d_objects.pipeline (inference_pipeline.py:11-21)")
    if problem:
        pytest.skip(problem)
    os.environ.setdefault("LIDRA_SKIP_INIT", "true")
    pipeline = _import_upstream(objects, "sam3d_objects", "sam3d_objects.pipeline.inference_pipeline_pointmap")
    real = inspect.signature(pipeline.InferencePipelinePointMap.run)
    assert list(real.parameters) == list(inspect.signature(StandInPipeline.run).parameters)


def test_real_body_estimator_has_the_signatures_we_call():
    os.environ.setdefault("MOMENTUM_ENABLED", "0")
    package = _import_upstream(body, "sam_3d_body", "sam_3d_body")
    real = inspect.signature(package.SAM3DBodyEstimator.process_one_image)
    assert list(real.parameters) == list(inspect.signature(StandInEstimator.process_one_image).parameters)
    assert {"checkpoint_path", "device", "mhr_path"} <= set(inspect.signature(package.load_sam_3d_body).parameters)
    from sam_3d_body.metadata.mhr70 import mhr_names

    assert len(mhr_names) == 70 and mhr_names[0] == "nose"


def _real_model(task, name: str, env: str):
    pm = manager()
    (entry,) = [e for e in pm.models(task) if e.spec.name == name]
    if entry.missing:
        pytest.skip(f"{name} needs {', '.join(entry.missing)}")
    if not torch.cuda.is_available():
        pytest.skip(f"{name} runs only on a CUDA GPU")
    try:
        return pm.create(task, name, ModelOptions(weights=os.environ.get(env, ""), offline=True))
    except (PluginUnavailableError, WeightsNotFoundError) as error:
        pytest.skip(f"{name} cannot be built here ({error}); set {env} to a local weights directory")


def _synthetic():
    from perception_fm.bench.sam3d_bench import _scene

    return _scene()


def test_real_objects_model_on_a_synthetic_object():
    model = _real_model(Task.OBJECT_MESH, "sam3d-objects", "PERCEPTION_FM_SAM3D_OBJECTS_WEIGHTS")
    rgb, pointmap, instances, K = _synthetic()
    labels, counts = np.unique(instances[instances > 0], return_counts=True)
    mask = instances == labels[np.argmax(counts)]
    result = model.reconstruct(ObjectMeshRequest(image=rgb, mask=mask, pointmap=pointmap, intrinsics=K, steps=4))
    assert len(result.vertices) > 100 and result.faces.max() < len(result.vertices)
    assert np.isclose(np.linalg.det(result.rotation), 1.0, atol=1e-4)
    points = result.camera_vertices()
    depth = pointmap[mask][:, 2]
    assert 0.5 * depth.min() < np.median(points[:, 2]) < 2.0 * depth.max()
    uv = (K @ points.T).T
    uv = uv[:, :2] / uv[:, 2:]
    ys, xs = np.nonzero(mask)
    margin = 0.25 * max(xs.ptp(), ys.ptp())
    inside = ((uv[:, 0] > xs.min() - margin) & (uv[:, 0] < xs.max() + margin)
              & (uv[:, 1] > ys.min() - margin) & (uv[:, 1] < ys.max() + margin))
    assert inside.mean() > 0.9  # the mesh lands on its mask: layout and frames agree


def test_real_body_model_is_consistent_with_its_mhr():
    model = _real_model(Task.BODY_MESH, "sam3d-body", "PERCEPTION_FM_SAM3D_BODY_WEIGHTS")
    rgb, _, _, _ = _synthetic()
    height, width = rgb.shape[:2]
    K = np.array([[600.0, 0, width / 2], [0, 600.0, height / 2], [0, 0, 1]])
    (estimate,) = model.estimate(BodyRequest(image=rgb, boxes=np.array([[200, 40, 440, 470]]), intrinsics=K))
    assert estimate.vertices.shape == (18439, 3) and estimate.joints.shape == (127, 3)
    assert estimate.keypoints_3d.shape == (70, 3) and len(model.keypoint_names) == 70
    assert len(model.joint_names) == 127 and (model.joint_parents == -1).sum() == 1
    assert model.faces.max() < 18439 and (estimate.vertices[:, 2] > 0).all()
    projected = (K @ estimate.keypoints_3d.T).T
    assert np.allclose(projected[:, :2] / projected[:, 2:], estimate.keypoints_2d, atol=2.0)
    vertices, joints = model.pose_from_params(estimate.params, estimate.camera_translation)
    assert np.allclose(vertices, estimate.vertices, atol=2e-3) and np.allclose(joints, estimate.joints, atol=2e-3)
