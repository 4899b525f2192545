"""object_mesh_node and body_node in their own processes over DDS, with stand-in models loaded as a
third-party plugin through the perception_fm entry-point group (tests/scripted_meshes.py)."""
import os
from pathlib import Path

import numpy as np
import pytest
from sensor_msgs.msg import Image
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import MarkerArray

from perception_fm.core.masks import rle_encode
from perception_fm.msg import HumanMesh, Instance, InstanceArray, ObjectMesh
from perception_fm.replay.synthetic import SampleConfig, render_frame
from perception_fm.ros.image_codec import numpy_to_image
from perception_fm.ros.tf import make_transform, ns_to_time, transform_to_matrix
from perception_fm.srv import ExportScene
from ros_probe import LATCHED, Probe, diagnostics_values, start_node, stop_node
from scripted_meshes import plugin_path

pytestmark = pytest.mark.ros

TESTS = Path(__file__).resolve().parent
SAMPLE = SampleConfig(width=128, height=96, frames=30)
FRAME = render_frame(SAMPLE, 0)


@pytest.fixture
def plugin_env(tmp_path, monkeypatch):
    path = plugin_path(tmp_path / "plugins")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(path), str(TESTS), os.environ.get("PYTHONPATH", "")]))


@pytest.fixture
def probe():
    probe = Probe()
    yield probe
    probe.close()


def wait_ready(probe, node, name):
    def ready():
        assert node.poll() is None, "node died:\n" + stop_node(node)
        return (diagnostics_values(probe, name) or {}).get("_message") == "ok"
    probe.wait_until(ready, 60, f"{name} ready")


def image_and_instances(stamp_ns, ids, concepts):
    image = numpy_to_image(FRAME.rgb, "rgb8")
    image.header.stamp = ns_to_time(stamp_ns)
    image.header.frame_id = SAMPLE.camera_frame
    array = InstanceArray(header=image.header, height=96, width=128)
    for instance_id in ids:
        mask = FRAME.instances == instance_id
        ys, xs = np.nonzero(mask)
        instance = Instance(id=instance_id, concept=concepts[instance_id], state=1, mask_rle=rle_encode(mask).tolist(),
                            mask_area=int(mask.sum()))
        instance.box.x_offset, instance.box.y_offset = int(xs.min()), int(ys.min())
        instance.box.width, instance.box.height = int(np.ptp(xs) + 1), int(np.ptp(ys) + 1)
        array.instances.append(instance)
    return image, array


def handled(probe, name):
    return diagnostics_values(probe, name) or {}


def test_object_mesh_node_lifts_tracks_places_them_in_odom_and_exports(plugin_env, probe, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray

    probe.record(DiagnosticArray, "/diagnostics")
    probe.record(ObjectMesh, "/objects")
    probe.record(MarkerArray, "/objects/markers", LATCHED)
    probe.record(TFMessage, "/tf_static", LATCHED)
    # image_wait long: the instances wait for their image and TF whatever the arrival order and the load
    node = start_node("perception_fm.nodes.object_mesh_node", "-p", "model:=scripted-objects", "-p",
                      "min_mask_area:=20", "-p", "fixed_frame:=odom", "-p", "input_qos:=reliable",
                      "-p", "image_wait:=60.0")
    try:
        wait_ready(probe, node, "object_mesh_node")
        tf = probe.publisher(TFMessage, "/tf")
        images = probe.publisher(Image, "/image")
        instances = probe.publisher(InstanceArray, "/instances")
        probe.wait_until(lambda: images.get_subscription_count() and instances.get_subscription_count()
                         and tf.get_subscription_count(), 30, "subscriptions matched")
        stamp = FRAME.stamp_ns
        camera_pose = FRAME.camera_to_world
        tracks = {4: "green cylinder", 7: "grey cabinet"}
        image, array = image_and_instances(stamp, (4, 7), tracks)
        instances.publish(array)  # the instances first, then TF, then their image: paired all the same
        tf.publish(TFMessage(transforms=[make_transform(camera_pose, "odom", SAMPLE.camera_frame,
                                                        ns_to_time(stamp + dt)) for dt in (-2 * 10**8, 2 * 10**8)]))
        images.publish(image)
        probe.wait_until(lambda: len(probe.received("/objects")) == 2, 60, "two objects")
        objects = {m.id: m for m in probe.received("/objects")}
        assert objects[4].header.frame_id == "odom" and objects[4].concept == "green cylinder"
        placed = probe.wait_for("/tf_static", lambda m: {t.child_frame_id for t in m.transforms} >= {"object_4",
                                                                                                      "object_7"})
        pose = next(t for t in placed.transforms if t.child_frame_id == "object_4")
        assert pose.header.frame_id == "odom"
        # in odom, the object is where the camera saw it: the camera's TF pose composed with the layout (the
        # stand-in puts objects 2 units in front of the camera when no depth is given)
        np.testing.assert_allclose(transform_to_matrix(pose.transform)[:3, 3], (camera_pose @ [0, 0, 2, 1])[:3],
                                   atol=1e-6)
        markers = probe.wait_for("/objects/markers", lambda m: len(m.markers) == 5)
        assert {m.header.frame_id for m in markers.markers if m.type == m.TRIANGLE_LIST} == {"object_4", "object_7"}

        # the same tracks again, with their image: selected, and nothing is lifted twice. Lift jobs are
        # counted (`received`) while the array is selected, before instance_arrays is: once it says 2, the
        # job count is final
        image, array = image_and_instances(stamp + 10**8, (4, 7), tracks)
        images.publish(image)  # this time the image first
        instances.publish(array)
        probe.wait_until(lambda: handled(probe, "object_mesh_node").get("count_instance_arrays") == "2", 60,
                         "the second array selected")
        values = handled(probe, "object_mesh_node")
        assert values["received"] == "2" and "count_no_image_for_instances" not in values, values
        assert "count_no_fixed_frame_tf" not in values, values
        assert len(probe.received("/objects")) == 2

        client = probe.node.create_client(ExportScene, "/object_mesh_node/export_scene")
        assert client.wait_for_service(timeout_sec=20)
        future = client.call_async(ExportScene.Request(path=str(tmp_path / "scene.glb")))
        probe.wait_until(future.done, 20, "export answered")
        assert future.result().success and future.result().objects == 2 and (tmp_path / "scene.glb").stat().st_size
    finally:
        log = stop_node(node)
    assert "Traceback" not in log, log


def test_body_node_publishes_bodies_markers_and_person_frames(plugin_env, probe):
    from diagnostic_msgs.msg import DiagnosticArray

    probe.record(DiagnosticArray, "/diagnostics")
    probe.record(HumanMesh, "/bodies")
    probe.record(MarkerArray, "/bodies/markers")
    probe.record(TFMessage, "/tf")
    node = start_node("perception_fm.nodes.body_node", "-p", "model:=scripted-body", "-p", "min_box_area:=1",
                      "-p", "person_concepts:=red ball", "-p", "input_qos:=reliable", "-p", "image_wait:=60.0")
    try:
        wait_ready(probe, node, "body_node")
        images = probe.publisher(Image, "/image")
        instances = probe.publisher(InstanceArray, "/instances")
        probe.wait_until(lambda: images.get_subscription_count() and instances.get_subscription_count(), 30,
                         "subscriptions matched")
        for k in range(3):
            stamp = FRAME.stamp_ns + k * 10**8
            image, array = image_and_instances(stamp, (1,), {1: "red ball"})
            if k % 2:  # both arrival orders: the instances wait for their image
                instances.publish(array)
                images.publish(image)
            else:
                images.publish(image)
                instances.publish(array)
            probe.wait_for("/bodies", lambda m, s=stamp: m.header.stamp == ns_to_time(s))  # one frame at a time
        bodies = probe.wait_for("/bodies", lambda m: m.smoothed)
        assert bodies.track_id == 1 and bodies.header.frame_id == SAMPLE.camera_frame and len(bodies.joints) == 5
        assert len(probe.received("/bodies")) == 3
        markers = probe.wait_for("/bodies/markers")
        assert any(m.ns == "body_mesh" and m.points for m in markers.markers)
        frame = probe.wait_for("/tf", lambda m: any(t.child_frame_id == "person_1" for t in m.transforms))
        assert frame.transforms[0].header.frame_id == SAMPLE.camera_frame
    finally:
        log = stop_node(node)
    assert "Traceback" not in log, log
