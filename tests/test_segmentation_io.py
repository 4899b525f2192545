"""The concept node's frame handler: tracker output → InstanceArray, label image, overlay, 3D positions."""
import numpy as np

from perception_fm.core.masks import rle_decode
from perception_fm.geometry.camera import unproject_depth
from perception_fm.graph import NodeConfig
from perception_fm.ros import segmentation_io as io
from perception_fm.ros.image_codec import image_to_numpy, numpy_to_image
from perception_fm.ros.tf import ns_to_time
from scripted_segmentation import FRAMES, ScriptedSegmentationModel


def values(**overrides):
    return NodeConfig("concept_node", "concept_node", parameters={"confirmation_frames": 2, **overrides}) \
        .resolved_parameters()


def image_message(index):
    message = numpy_to_image(FRAMES[index].rgb, "rgb8")
    message.header.stamp = ns_to_time(FRAMES[index].stamp_ns)
    message.header.frame_id = "camera"
    return message


def test_instances_labels_and_overlay_match_the_tracked_masks():
    handler = io.SegmentationFrameHandler(ScriptedSegmentationModel(), values(concepts="red ball, blue box"))
    for index in range(4):
        frame, messages = handler.handle(image_message(index))
    array = messages.instances
    assert (array.height, array.width) == (96, 128) and array.header.frame_id == "camera"
    assert array.concepts == ["red ball", "blue box"] and list(array.prompt_ids) == [1, 2]
    labels = image_to_numpy(messages.labels)
    assert messages.labels.encoding == "mono16" and labels.shape == (96, 128)
    truth = {"red ball": FRAMES[3].instances == 1, "blue box": FRAMES[3].instances == 2}
    for instance in array.instances:
        mask = rle_decode(np.array(instance.mask_rle), 96, 128)
        np.testing.assert_array_equal(mask, truth[instance.concept])
        assert instance.mask_area == mask.sum()
        ys, xs = np.nonzero(mask)
        assert (instance.box.x_offset, instance.box.y_offset) == (xs.min(), ys.min())
        assert (instance.box.width, instance.box.height) == (xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        np.testing.assert_array_equal(labels == instance.id, mask)
    overlay = image_to_numpy(messages.overlay).astype(int)
    original = FRAMES[3].rgb.astype(int)
    assert overlay.shape == (96, 128, 3)
    inside = labels > 0
    assert np.abs(overlay[inside] - original[inside]).mean() > 10  # masks are tinted
    far = np.ones((96, 128), bool)  # away from every box and its label text
    for instance in array.instances:
        b = instance.box
        far[max(b.y_offset - 16, 0):b.y_offset + b.height + 2, max(b.x_offset - 2, 0):b.x_offset + b.width + 80] = False
    np.testing.assert_array_equal(overlay[far], original[far])


def test_no_concept_means_no_inference():
    model = ScriptedSegmentationModel()
    handler = io.SegmentationFrameHandler(model, values())
    assert handler.handle(image_message(0)) is None
    assert model.sessions[0].calls == []


def test_positions_come_from_time_synced_depth():
    handler = io.SegmentationFrameHandler(ScriptedSegmentationModel(), values(concepts="grey cabinet"))
    frame = FRAMES[3]
    # depth at half resolution, with the intrinsics scaled accordingly
    depth = frame.depth[::2, ::2].copy()
    K = frame.K.copy()
    K[:2] *= 0.5
    K[0, 2] = (frame.K[0, 2] + 0.5) * 0.5 - 0.5
    K[1, 2] = (frame.K[1, 2] + 0.5) * 0.5 - 0.5
    for index in range(4):
        _, messages = handler.handle(image_message(index), io.DepthFrame(depth, K, "camera", True))
    [instance] = messages.instances.instances
    assert instance.has_position and messages.instances.depth_is_metric
    points, _ = unproject_depth(frame.depth, frame.K, valid=frame.instances == 7)
    centre = np.median(points, axis=0)
    np.testing.assert_allclose([instance.position.x, instance.position.y, instance.position.z], centre, atol=0.05)
    low, high = np.percentile(points, [5, 95], axis=0)
    np.testing.assert_allclose([instance.extent.x, instance.extent.y, instance.extent.z], high - low, atol=0.1)
    cubes = [m for m in messages.markers.markers if m.type == m.CUBE]
    assert len(cubes) == 1 and cubes[0].header.frame_id == "camera" and cubes[0].id == 2 * instance.id


def test_removed_concepts_drop_their_tracks_on_the_next_frame():
    handler = io.SegmentationFrameHandler(ScriptedSegmentationModel(), values(concepts="red ball, blue box"))
    for index in range(4):
        handler.handle(image_message(index))
    handler.concepts.remove(["red ball"])
    _, messages = handler.handle(image_message(4))
    assert {i.concept for i in messages.instances.instances} == {"blue box"}
    assert list(messages.instances.concepts) == ["blue box"]


def test_label_encoding_32sc1():
    handler = io.SegmentationFrameHandler(ScriptedSegmentationModel(), values(concepts="red ball",
                                                                             label_encoding="32SC1"))
    for index in range(3):
        _, messages = handler.handle(image_message(index))
    assert messages.labels.encoding == "32SC1" and image_to_numpy(messages.labels).dtype == np.int32


def test_an_instance_with_an_empty_or_hidden_mask_still_gets_an_overlay():
    # the newest track (the highest id) is lost by the tracker (an empty mask), and the red ball's track lies
    # wholly under another one's mask: neither is in the label image, both are in the instances
    model = ScriptedSegmentationModel(hidden={f: {4} for f in range(2, 60)})
    handler = io.SegmentationFrameHandler(model, values(concepts="red ball"))
    for index in range(2):
        handler.handle(image_message(index))
    ys, xs = np.nonzero(FRAMES[1].instances == 1)
    under = handler.tracker.prompt(box=(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), concept="ball again")
    ys, xs = np.nonzero(FRAMES[1].instances == 4)
    lost = handler.tracker.prompt(box=(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), concept="can")
    frame, messages = handler.handle(image_message(2))
    by_id = {i.id: i for i in messages.instances.instances}
    assert set(by_id) >= {lost, under} and by_id[lost].mask_area == 0
    labels = image_to_numpy(messages.labels)
    overlay = image_to_numpy(messages.overlay)
    assert overlay.shape == (96, 128, 3) and lost not in labels and 1 not in labels and under in labels
    # each visible id is drawn in its own colour
    for instance_id in np.unique(labels[labels > 0]):
        inside = labels == instance_id
        tint = io.color_of(int(instance_id))
        expected = (0.5 * FRAMES[2].rgb[inside].astype(float) + 0.5 * np.array(tint)).astype(np.uint8)
        assert np.mean(np.abs(overlay[inside].astype(int) - expected.astype(int)) <= 1) > 0.8

