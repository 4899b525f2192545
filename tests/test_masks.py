"""Mask utilities against hand-made cases and against pycocotools, the field's reference for COCO RLE."""
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from perception_fm.core.masks import label_image, mask_boxes, mask_iou, rle_decode, rle_encode


def random_masks(count, height=37, width=53, seed=0):
    rng = np.random.default_rng(seed)
    masks = rng.random((count, height, width)) > 0.7
    masks[0] = False  # an empty one
    masks[1] = True  # a full one
    masks[2, :, :10] = True  # starts with ones
    return masks


def test_rle_matches_pycocotools_and_round_trips():
    for mask in random_masks(8):
        counts = rle_encode(mask)
        reference = coco_mask.frPyObjects({"counts": counts.tolist(), "size": list(mask.shape)}, *mask.shape)
        np.testing.assert_array_equal(coco_mask.decode(reference).astype(bool), mask)
        ours_from_theirs = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert coco_mask.decode(ours_from_theirs).astype(bool).tolist() == rle_decode(counts, *mask.shape).tolist()
        assert int(coco_mask.area(reference)) == int(mask.sum())


def test_rle_hand_made():
    mask = np.array([[0, 1], [1, 1]], bool)  # column-major: 0,1,1,1
    assert rle_encode(mask).tolist() == [1, 3]
    assert rle_encode(np.ones((2, 2), bool)).tolist() == [0, 4]
    with pytest.raises(ValueError, match="sum to 3"):
        rle_decode(np.array([1, 2]), 2, 2)


def test_boxes_and_iou_match_pycocotools():
    masks = random_masks(6)
    boxes = mask_boxes(masks)
    encoded = [coco_mask.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]
    reference = coco_mask.toBbox(encoded)  # x, y, w, h
    np.testing.assert_array_equal(boxes[:, 0], reference[:, 0])
    np.testing.assert_array_equal(boxes[:, 2] - boxes[:, 0], reference[:, 2])
    np.testing.assert_array_equal(boxes[:, 3] - boxes[:, 1], reference[:, 3])
    ours = mask_iou(masks, masks[::-1])
    theirs = coco_mask.iou(encoded, encoded[::-1], [0] * len(masks))
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_label_image_resolves_overlaps_by_score():
    masks = np.zeros((3, 4, 4), bool)
    masks[0, :2] = True
    masks[1, 1:3] = True
    masks[2, 3, 3] = True
    labels = label_image(masks, ids=np.array([5, 9, 300]), scores=np.array([0.9, 0.5, 0.1]))
    assert labels.dtype == np.uint16
    assert labels[:, 0].tolist() == [5, 5, 9, 0] and labels[3, 3] == 300
    labels = label_image(masks, ids=np.array([5, 9, 300]), scores=np.array([0.1, 0.5, 0.1]))
    assert labels[1, 0] == 9
