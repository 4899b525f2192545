"""Object meshes on our side: when tracks are lifted, where results land, what is published and exported.
The model is a stand-in (tests/scripted_meshes.py): SAM 3D Objects needs CUDA and weights."""
import numpy as np
import pytest
import trimesh
from rclpy.serialization import deserialize_message
from visualization_msgs.msg import MarkerArray

from perception_fm.core.masks import rle_encode
from perception_fm.geometry.mesh import Mesh, decimate, export_meshes
from perception_fm.graph import NodeConfig
from perception_fm.msg import Instance, InstanceArray
from perception_fm.replay.synthetic import SampleConfig, render_frame
from perception_fm.ros import object_mesh_io as io
from perception_fm.ros.segmentation_io import DepthFrame
from perception_fm.ros.tf import ns_to_time, transform_to_matrix
from scripted_meshes import CubeObjectModel

SAMPLE = SampleConfig(width=128, height=96, frames=30, camera_path="walk")  # the views these tests were written for
FRAMES = {i: render_frame(SAMPLE, i) for i in (0, 5, 20, 29)}


def values(**overrides):
    return NodeConfig("object_mesh_node", "object_mesh_node",
                      parameters={"min_mask_area": 20, "relift_interval": 5, **overrides}).resolved_parameters()


def instances(frame, ids=(7, 4), state=1):
    array = InstanceArray(height=frame.instances.shape[0], width=frame.instances.shape[1])
    array.header.stamp = ns_to_time(frame.stamp_ns)
    array.header.frame_id = SAMPLE.camera_frame
    for instance_id in ids:
        mask = frame.instances == instance_id
        array.instances.append(Instance(id=instance_id, concept={7: "grey cabinet", 4: "green cylinder"}[instance_id],
                                        state=state, mask_rle=rle_encode(mask).tolist(), mask_area=int(mask.sum())))
    return array


def select(handler, index, **kw):
    frame = FRAMES[index]
    depth = DepthFrame(frame.depth, frame.K, SAMPLE.camera_frame, True)
    return handler.select(instances(frame, **kw), frame.rgb, depth, frame.K, frame.camera_to_world, "odom")


def test_each_track_is_lifted_once_until_its_mask_changes_or_it_is_asked_for():
    model = CubeObjectModel()
    handler = io.ObjectMeshHandler(model, values(relift_iou=0.5, relift_interval=3))
    jobs = select(handler, 0)
    assert sorted(job.id for job in jobs) == [4, 7]
    assert select(handler, 0) == []  # queued: no second job for the same tracks
    for job in jobs:
        handler.run(job)
    assert select(handler, 0) == [] and select(handler, 0) == []  # same masks
    # at the end of the sequence the camera has moved: the cylinder's mask no longer overlaps the lifted one
    # (IoU 0 < 0.5): lifted again; the cabinet is out of view (below min_mask_area): not
    assert [job.id for job in select(handler, 29)] == [4]
    assert handler.request(4) is not None and handler.request(99) is None  # ~/lift_object
    assert select(handler, 0, state=2) == []  # lost tracks are not lifted


def test_policy_filters_concepts_areas_and_the_object_budget():
    handler = io.ObjectMeshHandler(CubeObjectModel(), values(concepts="green cylinder"))
    assert [job.id for job in select(handler, 0)] == [4]
    handler = io.ObjectMeshHandler(CubeObjectModel(), values(min_mask_area=10**6))
    assert select(handler, 0) == []
    handler = io.ObjectMeshHandler(CubeObjectModel(), values(max_objects=1))
    assert len(select(handler, 0)) == 1


def test_objects_stay_put_in_the_fixed_frame_as_the_camera_moves():
    """The same cylinder lifted from two camera poses (the first and last frames) lands at one place in odom."""
    centres = []
    for index in (0, 29):
        handler = io.ObjectMeshHandler(CubeObjectModel(), values())
        [job] = [j for j in select(handler, index, ids=(4,))]
        lifted, messages = handler.run(job)
        assert lifted.parent_frame == "odom" and messages.object.header.frame_id == "odom"
        centres.append(lifted.fixed_from_object[:3, 3])
        [transform] = messages.transforms
        assert transform.child_frame_id == "object_4" and transform.header.frame_id == "odom"
        np.testing.assert_allclose(transform_to_matrix(transform.transform), lifted.fixed_from_object, atol=1e-9)
    assert np.linalg.norm(centres[0] - centres[1]) < 0.05  # depth medians of two views of one box


def test_published_mesh_markers_and_message():
    handler = io.ObjectMeshHandler(CubeObjectModel(subdivisions=3), values(max_faces=200))
    for job in select(handler, 0):
        lifted, messages = handler.run(job)
    assert len(lifted.mesh.faces) <= 200 < 12 * 3 ** 3  # decimated
    message = messages.object
    assert message.model == "scripted-objects" and message.used_pointmap
    assert len(message.mesh.vertices) == len(message.vertex_colors) == len(lifted.mesh.vertices)
    np.testing.assert_allclose([message.scale.x, message.scale.y, message.scale.z], lifted.scale)
    markers = deserialize_message(messages.markers, MarkerArray).markers
    assert markers[0].action == markers[0].DELETEALL
    meshes = [m for m in markers if m.type == m.TRIANGLE_LIST]
    assert sorted(m.header.frame_id for m in meshes) == ["object_4", "object_7"]
    assert all(len(m.points) == 3 * len(handler.lifter.objects[int(m.header.frame_id[7:])].mesh.faces) for m in meshes)
    assert sorted(m.text for m in markers if m.type == m.TEXT_VIEW_FACING) == ["4: green cylinder", "7: grey cabinet"]


# A camera in odom at (1, 2, 3) looking along odom +x (optical axes: x right = -y, y down = -z, z forward = +x).
ODOM_FROM_CAMERA = np.array([[0.0, 0, 1, 1], [-1, 0, 0, 2], [0, -1, 0, 3], [0, 0, 0, 1]])


class PlacedCubeModel(CubeObjectModel):
    """The unit cube scaled to half extents (0.1, 0.2, 0.3), turned by a cyclic axis permutation (object x, y, z
    -> camera y, z, x; 120 degrees about (1, 1, 1): neither it nor the odom rotation it makes is its own
    transpose, so a transposed or a dropped rotation moves the corners) and put at a known place in the camera
    frame (one per call), so that where its corners land can be written down."""

    TRANSLATIONS = [(0.0, 0.0, 2.0), (0.5, 0.0, 4.0)]

    def reconstruct(self, request):
        result = super().reconstruct(request)
        result.rotation = np.array([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]])
        result.translation = np.array(self.TRANSLATIONS[self.calls - 1])
        result.scale = np.array([0.1, 0.2, 0.3], np.float32)
        return result


def corners(xs, ys, zs):
    return np.array([[x, y, z] for x in xs for y in ys for z in zs])


def test_scene_export_places_every_object(tmp_path):
    handler = io.ObjectMeshHandler(PlacedCubeModel(), values())
    frame = FRAMES[0]
    depth = DepthFrame(frame.depth, frame.K, SAMPLE.camera_frame, True)
    for job in handler.select(instances(frame), frame.rgb, depth, frame.K, ODOM_FROM_CAMERA, "odom"):
        handler.run(job)
    path, count = handler.export(str(tmp_path / "scene.ply"))
    scene = trimesh.load(str(path))
    # Worked by hand: the turned cube spans x +-0.3, y +-0.1, z +-0.2 in the camera; odom x = 1 + camera z,
    # odom y = 2 - camera x, odom z = 3 - camera y.
    expected = np.concatenate([corners((2.8, 3.2), (1.7, 2.3), (2.9, 3.1)),    # at (0, 0, 2) in the camera
                               corners((4.8, 5.2), (1.2, 1.8), (2.9, 3.1))])   # at (0.5, 0, 4)
    assert count == 2 and len(scene.vertices) == 16
    np.testing.assert_allclose(np.unique(np.round(scene.vertices, 5), axis=0), np.unique(expected, axis=0), atol=1e-5)
    # and the objects' TF frames: odom from camera times camera from object, multiplied out by hand
    transforms = {t.child_frame_id: transform_to_matrix(t.transform) for t in handler.transforms()}
    assert all(t.header.frame_id == "odom" for t in handler.transforms())
    np.testing.assert_allclose(sorted(m[:3, 3].tolist() for m in transforms.values()), [[3, 2, 3], [5, 1.5, 3]],
                               atol=1e-9)
    for matrix in transforms.values():
        np.testing.assert_allclose(matrix[:3, :3], [[0, 1, 0], [0, 0, -1], [-1, 0, 0]], atol=1e-9)
    glb = export_meshes([Mesh(np.eye(3, dtype=np.float32), np.array([[0, 1, 2]]))], tmp_path / "one.glb")
    assert trimesh.load(str(glb)).geometry
    with pytest.raises(ValueError, match=".stl"):
        export_meshes([Mesh(np.eye(3, dtype=np.float32), np.array([[0, 1, 2]]))], tmp_path / "x.stl")


def test_decimation_keeps_colours_of_the_nearest_vertices():
    sphere = trimesh.creation.icosphere(subdivisions=3)
    # a texture of eight flat regions: each octant of the sphere has its own colour (red/green/blue = x/y/z > 0)
    colours = ((sphere.vertices > 0) * 255).astype(np.uint8)
    small, source = decimate(Mesh(sphere.vertices.astype(np.float32), sphere.faces.astype(np.int32), colours), 100)
    assert len(small.faces) <= 100 and small.faces.max() < len(small.vertices)
    assert np.abs(np.linalg.norm(small.vertices, axis=1) - 1).max() < 0.15  # still a sphere
    # A kept vertex well inside an octant (every coordinate farther than an original edge, <= 0.165, from 0) has
    # its nearest original vertex in the same octant, so it must carry that octant's colour.
    inside = (np.abs(small.vertices) > 0.2).all(axis=1)
    assert inside.sum() >= 10
    np.testing.assert_array_equal(small.colors[inside], ((small.vertices[inside] > 0) * 255).astype(np.uint8))
    # and `source` names a nearby original vertex (within an original edge of the kept one)
    assert np.linalg.norm(sphere.vertices[source] - small.vertices, axis=1).max() < 0.165


def test_model_errors_release_the_track():
    class Failing(CubeObjectModel):
        def reconstruct(self, request):
            raise RuntimeError("CUDA out of memory")

    handler = io.ObjectMeshHandler(Failing(), values())
    [job, _] = select(handler, 0)
    with pytest.raises(RuntimeError):
        handler.run(job)
    assert job.id not in handler.lifter.pending and [j.id for j in select(handler, 0)] == [job.id]
