"""Mask IoU / RLE against pycocotools, HOTA and IDF1 against TrackEval, and per-frame matching with known
values (IoU, precision/recall, concepts)."""
from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_utils  # the references (setup.py extra "dev"; scripts/setup.sh installs trackeval):
import pytest
import trackeval  # missing -> the module fails, never skips

from perception_fm.core.masks import rle_encode
from perception_fm.eval.segmentation import (
    HOTA_ALPHAS,
    PredictedInstance,
    SegmentationEvaluator,
    TrackingFrame,
    decode_masks,
    hota,
    hungarian,
    identity,
    iou_matrix,
    iou_with_labels,
)

# pycocotools 2.0.11 under numpy 2 warns on every decode/iou call; nothing to act on here
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept:DeprecationWarning")
TOL = 1e-6
H, W = 40, 60


def coco_rle(counts: np.ndarray, height: int, width: int):
    """Our uncompressed RLE as pycocotools' compressed RLE object."""
    return mask_utils.frPyObjects({"size": [height, width], "counts": [int(c) for c in counts]}, height, width)


def random_masks(rng, n, height=H, width=W, density=0.3):
    masks = []
    for _ in range(n):
        y0, x0 = rng.integers(0, height - 5), rng.integers(0, width - 5)
        y1, x1 = rng.integers(y0 + 1, height + 1), rng.integers(x0 + 1, width + 1)
        m = np.zeros((height, width), bool)
        m[y0:y1, x0:x1] = True
        m &= rng.random((height, width)) < 1 - density * rng.random()  # ragged, holes
        masks.append(m)
    return np.stack(masks)


# -- masks vs pycocotools -------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_rle_decode_and_iou_equal_pycocotools(seed):
    rng = np.random.default_rng(seed)
    height, width = rng.integers(5, 50, size=2)
    a = random_masks(rng, 5, height, width)
    b = random_masks(rng, 4, height, width)
    a[0] = False  # an empty mask
    b[1, 0, 0] = True  # a run that starts at the first pixel (leading 0 count)
    a_rle = [rle_encode(m) for m in a]
    b_rle = [rle_encode(m) for m in b]
    coco_a = [coco_rle(c, height, width) for c in a_rle]
    coco_b = [coco_rle(c, height, width) for c in b_rle]
    # decoding: ours equals pycocotools' on the same counts
    theirs = np.stack([mask_utils.decode(r).astype(bool) for r in coco_a])
    np.testing.assert_array_equal(decode_masks(a_rle, height, width), theirs)
    np.testing.assert_array_equal(theirs, a)
    expected = mask_utils.iou(coco_a, coco_b, [0] * len(coco_b))
    np.testing.assert_allclose(iou_matrix(a, b), expected, atol=TOL, rtol=0)
    # against a label image: disjoint ground-truth regions
    labels = np.zeros((height, width), np.uint16)
    for k, m in enumerate(b, start=1):
        labels[m & (labels == 0)] = 7 * k
    gt_masks = np.stack([labels == 7 * k for k in range(1, len(b) + 1)])
    gt_coco = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in gt_masks]
    ours = iou_with_labels(a, labels, np.array([7 * k for k in range(1, len(b) + 1)]))
    np.testing.assert_allclose(ours, mask_utils.iou(coco_a, gt_coco, [0] * len(gt_coco)), atol=TOL, rtol=0)


def test_iou_exact_values():
    labels = np.zeros((10, 10), np.uint16)
    labels[0:4, 0:5] = 3  # 20 pixels
    labels[6:10, 6:10] = 9  # 16 pixels
    pred = np.zeros((2, 10, 10), bool)
    pred[0, 0:4, 0:4] = True  # 16 of the 20: IoU 0.8
    pred[1, 6:10, 4:10] = True  # 24 pixels covering the 16: IoU 16/24
    iou = iou_with_labels(pred, labels, np.array([3, 9]))
    np.testing.assert_allclose(iou, [[0.8, 0.0], [0.0, 16 / 24]], atol=1e-15)


def test_hungarian_threshold_excludes_low_pairs():
    s = np.array([[0.6, 0.55], [0.52, 0.0]])
    rows, cols = hungarian(s, 0.5)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 1), (1, 0)]  # two TPs beat one better one
    rows, cols = hungarian(np.array([[0.4, 0.3]]), 0.5)
    assert rows.size == 0


# -- scripted tracking sequences ------------------------------------------------------------------------------

def box(y, x, h, w):
    m = np.zeros((H, W), bool)
    m[max(y, 0):max(y + h, 0), max(x, 0):max(x + w, 0)] = True
    return m


def gt_frames(T=12):
    """Three objects moving right/left/down; id 3 leaves after frame 7. Labels images."""
    frames = []
    for t in range(T):
        labels = np.zeros((H, W), np.uint16)
        labels[box(5, 2 + 3 * t, 8, 10)] = 1
        labels[box(25, 50 - 3 * t, 10, 8)] = 2
        if t < 8:
            labels[box(2 + t, 40, 6, 6) & (labels == 0)] = 3
        frames.append(labels)
    return frames


def scripted(kind: str, T=12):
    """Predictions (per frame: list of (id, mask)) derived from the ground truth with a known defect."""
    gts = gt_frames(T)
    rng = np.random.default_rng(len(kind))
    preds = []
    for t, labels in enumerate(gts):
        frame = []
        for g in (1, 2, 3):
            m = labels == g
            if not m.any():
                continue
            pid = {1: 11, 2: 12, 3: 13}[g]
            if kind == "id_switch" and t >= 6 and g in (1, 2):
                pid = 12 if g == 1 else 11
            if kind == "fragmented" and g == 1 and 4 <= t < 8:
                pid = 21  # a new track for a while, then back to 11
            if kind == "fragmented" and g == 2 and t >= 7:
                pid = 22
            if kind == "misses" and ((g == 2 and t in (3, 4, 5)) or (g == 3 and t % 2)):
                continue
            if kind == "noisy":
                m = m & (rng.random((H, W)) < 0.5 + 0.5 * rng.random())  # IoU spread over the alphas
                m |= np.roll(m, rng.integers(-2, 3), axis=1)
            frame.append((pid, m))
        if kind == "false_positives":
            frame.append((30 + t % 3, box(30, 5, 5, 5)))  # background blob, unstable id
            if t % 4 == 0:
                frame.append((40, box(6, 2 + 3 * t, 4, 10)))  # overlaps object 1 (half of it)
        if kind == "overlapping" and t % 2 == 0:
            frame.append((50, (labels == 1) | box(5, 0, 8, 2)))  # a second, slightly larger mask on object 1
        preds.append(frame)
    return gts, preds


def trackeval_data(gts, preds):
    """TrackEval's per-sequence data, built independently: pycocotools IoU, ids in order of appearance."""
    gt_map, pr_map = {}, {}
    data = {"gt_ids": [], "tracker_ids": [], "similarity_scores": []}
    for labels, frame in zip(gts, preds):
        g_ids = [int(i) for i in np.unique(labels) if i != 0]
        gt_rles = [mask_utils.encode(np.asfortranarray((labels == g).astype(np.uint8))) for g in g_ids]
        pr_rles = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for _, m in frame]
        sim = mask_utils.iou(gt_rles, pr_rles, [0] * len(pr_rles)) if g_ids and frame else \
            np.zeros((len(g_ids), len(frame)))
        data["gt_ids"].append(np.array([gt_map.setdefault(g, len(gt_map)) for g in g_ids], int))
        data["tracker_ids"].append(np.array([pr_map.setdefault(p, len(pr_map)) for p, _ in frame], int))
        data["similarity_scores"].append(np.asarray(sim, float).reshape(len(g_ids), len(frame)))
    data.update(num_gt_ids=len(gt_map), num_tracker_ids=len(pr_map), num_timesteps=len(gts),
                num_gt_dets=sum(len(x) for x in data["gt_ids"]),
                num_tracker_dets=sum(len(x) for x in data["tracker_ids"]))
    return data


def run_ours(gts, preds, concept="thing"):
    ev = SegmentationEvaluator()
    labels_map = {1: concept, 2: concept, 3: concept}
    for t, (labels, frame) in enumerate(zip(gts, preds)):
        ev.add_frame(t, [PredictedInstance(p, concept, m) for p, m in frame], labels, labels_map, [concept])
    return ev


KINDS = ["perfect", "id_switch", "fragmented", "misses", "false_positives", "noisy", "overlapping"]


@pytest.mark.parametrize("kind", KINDS)
def test_hota_and_identity_equal_trackeval(kind):
    gts, preds = scripted(kind)
    ours_eval = run_ours(gts, preds)
    ours_h = hota(ours_eval.sequence())
    ours_i = identity(ours_eval.sequence())
    data = trackeval_data(gts, preds)
    theirs_h = trackeval.metrics.HOTA().eval_sequence(data)
    theirs_i = trackeval.metrics.Identity({"PRINT_CONFIG": False}).eval_sequence(data)
    for ours_name, their_name in (("hota", "HOTA"), ("det_a", "DetA"), ("ass_a", "AssA"), ("loc_a", "LocA"),
                                  ("det_re", "DetRe"), ("det_pr", "DetPr"), ("ass_re", "AssRe"),
                                  ("ass_pr", "AssPr")):
        np.testing.assert_allclose(getattr(ours_h, ours_name), theirs_h[their_name], atol=TOL, rtol=0,
                                   err_msg=their_name)
    for name, key in (("tp", "HOTA_TP"), ("fn", "HOTA_FN"), ("fp", "HOTA_FP")):
        np.testing.assert_array_equal(getattr(ours_h, name), theirs_h[key])
    assert (ours_i.idtp, ours_i.idfp, ours_i.idfn) == (theirs_i["IDTP"], theirs_i["IDFP"], theirs_i["IDFN"])
    assert ours_i.idf1 == pytest.approx(theirs_i["IDF1"], abs=TOL)
    if kind == "perfect":
        assert ours_h.mean("hota") == pytest.approx(1.0) and ours_i.idf1 == 1.0
    else:
        assert ours_h.mean("hota") < 1.0


@pytest.mark.parametrize("seed", range(3))
def test_random_sequences_equal_trackeval(seed):
    rng = np.random.default_rng(100 + seed)
    frames = []
    for _ in range(15):
        g = rng.choice(8, size=rng.integers(0, 5), replace=False)
        p = rng.choice(10, size=rng.integers(0, 6), replace=False)
        sim = rng.random((g.size, p.size)) * (rng.random((g.size, p.size)) < 0.5)
        frames.append(TrackingFrame(g.astype(np.int64), p.astype(np.int64), sim))
    # compact ids as TrackEval expects (every id appears)
    g_used = np.unique(np.concatenate([f.gt_ids for f in frames]))
    p_used = np.unique(np.concatenate([f.pred_ids for f in frames]))
    frames = [TrackingFrame(np.searchsorted(g_used, f.gt_ids), np.searchsorted(p_used, f.pred_ids), f.similarity)
              for f in frames]
    data = {"gt_ids": [f.gt_ids for f in frames], "tracker_ids": [f.pred_ids for f in frames],
            "similarity_scores": [f.similarity for f in frames], "num_gt_ids": g_used.size,
            "num_tracker_ids": p_used.size, "num_timesteps": len(frames),
            "num_gt_dets": sum(f.gt_ids.size for f in frames), "num_tracker_dets": sum(f.pred_ids.size for f in frames)}
    theirs = trackeval.metrics.HOTA().eval_sequence(data)
    ours = hota(frames)
    np.testing.assert_allclose(ours.hota, theirs["HOTA"], atol=TOL, rtol=0)
    np.testing.assert_allclose(ours.ass_a, theirs["AssA"], atol=TOL, rtol=0)
    np.testing.assert_allclose(ours.loc_a, theirs["LocA"], atol=TOL, rtol=0)
    ident = trackeval.metrics.Identity({"PRINT_CONFIG": False}).eval_sequence(data)
    assert identity(frames).idf1 == pytest.approx(ident["IDF1"], abs=TOL)


def test_empty_sequences():
    none = [TrackingFrame(np.array([0]), np.zeros(0, np.int64), np.zeros((1, 0)))]
    h = hota(none)
    assert h.mean("hota") == 0 and h.fn[0] == 1 and h.loc_a[0] == 1
    assert identity(none).idfn == 1
    assert len(HOTA_ALPHAS) == 19 and HOTA_ALPHAS[0] == pytest.approx(0.05) and HOTA_ALPHAS[-1] == pytest.approx(0.95)


def test_id_switch_known_values():
    # 2 objects, 10 frames, ids swap at frame 5, masks perfect: every detection is a TP (DetA = 1), IDF1 = 0.5,
    # and each gt track is split in two halves: AssA = 0.5 x (5/10) ... computed exactly below
    T = 10
    gts, preds = [], []
    for t in range(T):
        labels = np.zeros((H, W), np.uint16)
        labels[box(5, 5, 8, 8)] = 1
        labels[box(20, 30, 8, 8)] = 2
        gts.append(labels)
        a, b = (11, 12) if t < 5 else (12, 11)
        preds.append([(a, labels == 1), (b, labels == 2)])
    ev = run_ours(gts, preds)
    h, i = hota(ev.sequence()), identity(ev.sequence())
    np.testing.assert_allclose(h.det_a, 1.0)
    # each TP's pair (gt, pred) matched 5 times; |gt| = 10, |pred| = 10: A = 5 / (10 + 10 - 5) = 1/3
    np.testing.assert_allclose(h.ass_a, 1 / 3)
    np.testing.assert_allclose(h.hota, np.sqrt(1 / 3))
    assert (i.idtp, i.idfp, i.idfn) == (10, 10, 10) and i.idf1 == pytest.approx(0.5)
    totals = ev.totals()
    assert totals["precision"] == 1.0 and totals["recall"] == 1.0 and totals["miou"] == 1.0


# -- per-frame matching, concepts ------------------------------------------------------------------------------

def test_frame_matching_known_iou_precision_recall_and_concepts():
    labels = np.zeros((20, 20), np.uint16)
    labels[0:10, 0:10] = 1  # "red ball", 100 px
    labels[12:20, 12:20] = 2  # "blue box", 64 px
    labels[0:5, 15:20] = 3  # "chair": not asked for
    concepts = {1: "red ball", 2: "Blue  Box", 3: "chair"}
    p_ball = np.zeros((20, 20), bool)
    p_ball[0:10, 0:6] = True  # IoU 0.6
    p_box = np.zeros((20, 20), bool)
    p_box[12:20, 12:16] = True  # IoU 0.5 (exactly at the threshold)
    p_wrong = np.zeros((20, 20), bool)
    p_wrong[12:20, 12:20] = True  # perfect overlap with the box but says "red ball": not a match
    ev = SegmentationEvaluator(iou_threshold=0.5)
    match = ev.add_frame(0, [PredictedInstance(5, "red ball", p_ball), PredictedInstance(6, "blue box", p_box),
                             PredictedInstance(7, "red ball", p_wrong),
                             PredictedInstance(8, "blue box", np.zeros((20, 20), bool))],  # lost: ignored
                         labels, concepts, ["red ball", "blue box"])
    assert sorted(match.gt_ids.tolist()) == [1, 2]  # the chair was not asked for
    assert sorted((g, p) for g, p, _ in match.matches) == [(1, 5), (2, 6)]
    assert (match.tp, match.fp, match.fn) == (2, 1, 0)
    assert match.mean_iou == pytest.approx((0.6 + 0.5) / 2)
    totals = ev.totals()
    assert totals["precision"] == pytest.approx(2 / 3) and totals["recall"] == 1.0
    assert totals["per_concept"]["red ball"]["fp"] == 1
    assert totals["per_concept"]["blue box"]["iou"] == pytest.approx(0.5)
    assert totals["miou"] == pytest.approx(0.55)
    # at threshold 0.55 the box is missed but still counts with its IoU in mIoU
    ev = SegmentationEvaluator(iou_threshold=0.55)
    match = ev.add_frame(0, [PredictedInstance(5, "red ball", p_ball), PredictedInstance(6, "blue box", p_box)],
                         labels, concepts, ["red ball", "blue box"])
    assert (match.tp, match.fp, match.fn) == (1, 1, 1) and match.mean_iou == pytest.approx(0.55)


def test_without_labels_concepts_are_ignored():
    labels = np.zeros((8, 8), np.uint16)
    labels[:4] = 4
    pred = np.zeros((8, 8), bool)
    pred[:4] = True
    ev = SegmentationEvaluator()
    match = ev.add_frame(0, [PredictedInstance(1, "anything", pred)], labels, None, None)
    assert match.tp == 1 and match.mean_iou == 1.0
    h = hota(ev.sequence("(all)"))
    assert h.mean("hota") == pytest.approx(1.0)


def test_per_concept_sequences_equal_trackeval_on_that_concept():
    """Objects 1 and 3 are balls, 2 a box; predictions say the concept of the object they cover, and the tracks
    of objects 1 and 2 fragment. Per concept, the metrics equal TrackEval's on that concept's detections."""
    gts, preds = scripted("fragmented")
    concept_of_gt = {1: "ball", 2: "box", 3: "ball"}
    ev = SegmentationEvaluator()
    typed = []
    for t, (labels, frame) in enumerate(zip(gts, preds)):
        items = []
        for pid, mask in frame:
            covered = np.bincount(labels[mask].astype(int), minlength=4)[1:]
            items.append((pid, concept_of_gt[int(np.argmax(covered)) + 1], mask))
        typed.append(items)
        ev.add_frame(t, [PredictedInstance(p, c, m) for p, c, m in items], labels, concept_of_gt, ["ball", "box"])
    for concept in ("ball", "box"):
        keep_gt = [np.where(np.isin(labels, [g for g, c in concept_of_gt.items() if c == concept]), labels, 0)
                   for labels in gts]
        keep_pred = [[(p, m) for p, c, m in items if c == concept] for items in typed]
        data = trackeval_data(keep_gt, keep_pred)
        ours = hota(ev.sequence(concept))
        np.testing.assert_allclose(ours.hota, trackeval.metrics.HOTA().eval_sequence(data)["HOTA"], atol=TOL, rtol=0)
        ident = trackeval.metrics.Identity({"PRINT_CONFIG": False}).eval_sequence(data)
        assert identity(ev.sequence(concept)).idf1 == pytest.approx(ident["IDF1"], abs=TOL)
    assert hota(ev.sequence("box")).mean("hota") < 1.0  # object 2's track is fragmented from frame 7 on
