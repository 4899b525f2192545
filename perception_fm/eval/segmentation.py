"""Instance segmentation and tracking accuracy against ground-truth instance-id images.

Per frame (``SegmentationEvaluator.add_frame``):

- Ground truth: the ids in the instance image (0 = background), each with a concept through
  /gt/instance_labels. Only instances whose concept the prediction was looking for in that frame
  (InstanceArray.concepts) count: a model that was not asked for "chair" did not miss one. Concepts compare
  case- and whitespace-insensitively. Without labels, every instance counts and matching ignores concepts.
- Predictions: the InstanceArray's instances with a non-empty mask (lost tracks carry none).
- Similarity: mask IoU (exact integer pixel counts, float64, as pycocotools computes it), set to 0 between a
  prediction and a ground-truth instance of different concepts.
- Detection at IoU 0.5 (``iou_threshold``): Hungarian matching on the similarity, pairs below the threshold
  not allowed; TP = matched pairs, FP = other predictions, FN = other ground truth → precision, recall.
- Mask IoU of a ground-truth instance: the IoU of the prediction a Hungarian matching on the similarity
  (any overlap, no threshold) gives it, 0 when none; per-frame mean over the frame's instances; mIoU = mean
  over concepts of the concept's mean over its (frame, instance) pairs.

Over the sequence (tracking; ids persist across frames):

- HOTA (Luiten et al., IJCV 2020) at alphas 0.05, 0.10, ..., 0.95: per frame, Hungarian matching maximising
  (global alignment score of the id pair) x similarity; matches with similarity >= alpha are TPs. DetA, AssA,
  LocA, DetRe, DetPr, AssRe, AssPr and HOTA = sqrt(DetA x AssA) per alpha; the reported value is the mean
  over the alphas. Counting conventions (max(1, .) denominators, eps tolerances) are those of TrackEval.
- Identity (Ristani et al. 2016): ids matched one-to-one over the whole sequence to maximise the number of
  frames in which they overlap with similarity >= 0.5; IDTP, IDFP, IDFN, IDF1 = IDTP / (IDTP + (IDFP +
  IDFN) / 2), IDP, IDR.

Memory: per frame only the ids and the small similarity matrix are kept, never masks.

Ours or the reference tools': ours, checked against them. RLE decoding and mask IoU equal pycocotools'
(tests/test_eval_segmentation.py::test_rle_decode_and_iou_equal_pycocotools); HOTA (and its DetA, AssA, LocA)
and IDF1 equal TrackEval's (::test_hota_and_identity_equal_trackeval, ::test_random_sequences_equal_trackeval,
::test_per_concept_sequences_equal_trackeval_on_that_concept, and end to end from a bag
tests/test_eval_runner.py::test_segmentation_and_tracking_from_the_bag). Kept rather than delegated because
neither tool can be a runtime dependency: pycocotools is a test requirement only (setup.py `dev`), and TrackEval
is installed for the tests with --no-deps since its requirements replace opencv-python-headless with the GUI
build; TrackEval also takes the whole sequence's data at once, where this module accumulates frame by frame in
bounded memory (above). The RLE itself is perception_fm.core.masks, which the nodes use to publish masks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from perception_fm.core.masks import rle_decode

HOTA_ALPHAS = np.arange(0.05, 0.99, 0.05)  # 0.05 ... 0.95, the 19 localisation thresholds of HOTA
_EPS = np.finfo(float).eps


def normalise_concept(text: str | None) -> str | None:
    return None if text is None else " ".join(str(text).lower().split())


# -- masks and IoU ------------------------------------------------------------------------------------------

def decode_masks(rles, height: int, width: int) -> np.ndarray:
    """(N, H, W) bool from COCO uncompressed RLE count lists."""
    if len(rles) == 0:
        return np.zeros((0, height, width), bool)
    return np.stack([rle_decode(np.asarray(counts, np.int64), height, width) for counts in rles])


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of (N, H, W) masks with (M, H, W) masks, float64 from exact pixel counts; 0 when both are empty."""
    a = np.asarray(a, bool).reshape(len(a), -1)
    b = np.asarray(b, bool).reshape(len(b), -1)
    if a.shape[0] == 0 or b.shape[0] == 0:
        return np.zeros((a.shape[0], b.shape[0]))
    # float32 products of 0/1 are exact integers below 2^24 pixels; larger images count in float64
    dtype = np.float32 if a.shape[1] < 2 ** 24 else np.float64
    intersection = (a.astype(dtype) @ b.astype(dtype).T).astype(np.float64)
    union = a.sum(1)[:, None].astype(np.float64) + b.sum(1)[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def iou_with_labels(masks: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """IoU of (P, H, W) masks with the regions of `ids` in an (H, W) label image: (P, G), float64, from
    exact integer counts (one bincount over all mask pixels)."""
    masks = np.asarray(masks, bool)
    ids = np.asarray(ids, np.int64)
    P, G = masks.shape[0], ids.size
    if P == 0 or G == 0:
        return np.zeros((P, G))
    flat = np.asarray(labels).reshape(-1).astype(np.int64)
    lookup = np.full(max(int(flat.max(initial=0)), int(ids.max())) + 1, G, np.int64)
    lookup[ids] = np.arange(G)
    compact = lookup[flat]  # G = not one of `ids`
    gt_area = np.bincount(compact, minlength=G + 1)[:G].astype(np.float64)
    which, pixel = np.nonzero(masks.reshape(P, -1))
    inter = np.bincount(which * (G + 1) + compact[pixel], minlength=P * (G + 1)).reshape(P, G + 1)[:, :G]
    inter = inter.astype(np.float64)
    pred_area = np.bincount(which, minlength=P).astype(np.float64)
    union = pred_area[:, None] + gt_area[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def hungarian(similarity: np.ndarray, threshold: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of a maximum-similarity one-to-one matching, keeping pairs with similarity >= threshold
    (and > 0). Pairs below the threshold are excluded from the optimisation, not only from the result."""
    s = np.asarray(similarity, np.float64)
    if s.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    allowed = (s >= threshold - _EPS) & (s > 0)
    rows, cols = linear_sum_assignment(np.where(allowed, s, 0.0), maximize=True)
    keep = allowed[rows, cols]
    return rows[keep].astype(np.int64), cols[keep].astype(np.int64)


# -- tracking metrics ---------------------------------------------------------------------------------------

@dataclass
class TrackingFrame:
    """One frame of a tracking sequence: ground-truth and predicted ids (contiguous 0..n-1 over the sequence,
    unique within the frame) and their similarity (len(gt_ids), len(pred_ids))."""

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    similarity: np.ndarray


@dataclass
class HotaResult:
    alphas: np.ndarray
    hota: np.ndarray
    det_a: np.ndarray
    ass_a: np.ndarray
    loc_a: np.ndarray
    det_re: np.ndarray
    det_pr: np.ndarray
    ass_re: np.ndarray
    ass_pr: np.ndarray
    tp: np.ndarray
    fn: np.ndarray
    fp: np.ndarray

    def mean(self, name: str) -> float:
        return float(np.mean(getattr(self, name)))

    def to_dict(self) -> dict:
        out = {"HOTA": self.mean("hota"), "DetA": self.mean("det_a"), "AssA": self.mean("ass_a"),
               "LocA": self.mean("loc_a"), "DetRe": self.mean("det_re"), "DetPr": self.mean("det_pr"),
               "AssRe": self.mean("ass_re"), "AssPr": self.mean("ass_pr")}
        out["per_alpha"] = {name: getattr(self, name).tolist() for name in
                            ("alphas", "hota", "det_a", "ass_a", "loc_a", "tp", "fn", "fp")}
        return out


def _counts(frames: list[TrackingFrame], n_gt: int, n_pred: int):
    gt_count = np.zeros(n_gt)
    pred_count = np.zeros(n_pred)
    for frame in frames:
        gt_count[frame.gt_ids] += 1
        pred_count[frame.pred_ids] += 1
    return gt_count, pred_count


def _id_space(frames: list[TrackingFrame]) -> tuple[int, int]:
    n_gt = max((int(f.gt_ids.max()) + 1 for f in frames if f.gt_ids.size), default=0)
    n_pred = max((int(f.pred_ids.max()) + 1 for f in frames if f.pred_ids.size), default=0)
    return n_gt, n_pred


def hota(frames: list[TrackingFrame], alphas: np.ndarray = HOTA_ALPHAS) -> HotaResult:
    """HOTA and its sub-metrics per alpha over one sequence."""
    alphas = np.asarray(alphas, np.float64)
    A = alphas.size
    n_gt, n_pred = _id_space(frames)
    gt_count, pred_count = _counts(frames, n_gt, n_pred)
    total_gt, total_pred = gt_count.sum(), pred_count.sum()
    zeros = lambda: np.zeros(A)  # noqa: E731
    tp, fn, fp, loc = zeros(), zeros(), zeros(), zeros()
    if total_pred == 0 or total_gt == 0:
        fn[:], fp[:] = total_gt, total_pred
        return _hota_final(alphas, tp, fn, fp, np.ones(A), zeros(), zeros(), zeros())

    # Global alignment score of every (gt id, predicted id) pair: their frame-wise soft IoU over their union.
    potential = np.zeros((n_gt, n_pred))
    for frame in frames:
        if frame.gt_ids.size and frame.pred_ids.size:
            s = frame.similarity
            denominator = s.sum(axis=0)[None, :] + s.sum(axis=1)[:, None] - s
            jaccard = np.divide(s, denominator, out=np.zeros_like(s), where=denominator > _EPS)
            potential[np.ix_(frame.gt_ids, frame.pred_ids)] += jaccard
    alignment = potential / (gt_count[:, None] + pred_count[None, :] - potential)

    matched_alpha, matched_gt, matched_pred = [], [], []
    for frame in frames:
        n_g, n_p = frame.gt_ids.size, frame.pred_ids.size
        if n_g == 0 or n_p == 0:
            fp += n_p
            fn += n_g
            continue
        s = frame.similarity
        rows, cols = linear_sum_assignment(-(alignment[np.ix_(frame.gt_ids, frame.pred_ids)] * s))
        matched = s[rows, cols]
        ok = matched[None, :] >= alphas[:, None] - _EPS  # (A, matches)
        count = ok.sum(axis=1)
        tp += count
        fn += n_g - count
        fp += n_p - count
        loc += (ok * matched[None, :]).sum(axis=1)
        a_idx, m_idx = np.nonzero(ok)
        matched_alpha.append(a_idx)
        matched_gt.append(frame.gt_ids[rows][m_idx])
        matched_pred.append(frame.pred_ids[cols][m_idx])

    ass_a, ass_re, ass_pr = zeros(), zeros(), zeros()
    if matched_alpha:
        a_all, g_all, p_all = (np.concatenate(x) for x in (matched_alpha, matched_gt, matched_pred))
        keys = (a_all * n_gt + g_all) * n_pred + p_all
        unique, c = np.unique(keys, return_counts=True)
        a_u, rest = np.divmod(unique, n_gt * n_pred)
        g_u, p_u = np.divmod(rest, n_pred)
        c = c.astype(np.float64)
        g_c, p_c = gt_count[g_u], pred_count[p_u]
        denominator = np.maximum(1.0, tp)
        ass_a = np.bincount(a_u, c * c / np.maximum(1.0, g_c + p_c - c), minlength=A) / denominator
        ass_re = np.bincount(a_u, c * c / np.maximum(1.0, g_c), minlength=A) / denominator
        ass_pr = np.bincount(a_u, c * c / np.maximum(1.0, p_c), minlength=A) / denominator
    loc_a = np.maximum(1e-10, loc) / np.maximum(1e-10, tp)
    return _hota_final(alphas, tp, fn, fp, loc_a, ass_a, ass_re, ass_pr)


def _hota_final(alphas, tp, fn, fp, loc_a, ass_a, ass_re, ass_pr) -> HotaResult:
    det_re = tp / np.maximum(1.0, tp + fn)
    det_pr = tp / np.maximum(1.0, tp + fp)
    det_a = tp / np.maximum(1.0, tp + fn + fp)
    return HotaResult(alphas=alphas, hota=np.sqrt(det_a * ass_a), det_a=det_a, ass_a=ass_a, loc_a=loc_a,
                      det_re=det_re, det_pr=det_pr, ass_re=ass_re, ass_pr=ass_pr, tp=tp, fn=fn, fp=fp)


@dataclass
class IdentityResult:
    idtp: int
    idfp: int
    idfn: int

    @property
    def idf1(self) -> float:
        return self.idtp / max(1.0, self.idtp + 0.5 * self.idfp + 0.5 * self.idfn)

    @property
    def idp(self) -> float:
        return self.idtp / max(1.0, self.idtp + self.idfp)

    @property
    def idr(self) -> float:
        return self.idtp / max(1.0, self.idtp + self.idfn)

    def to_dict(self) -> dict:
        return {"IDF1": self.idf1, "IDP": self.idp, "IDR": self.idr, "IDTP": self.idtp, "IDFP": self.idfp,
                "IDFN": self.idfn}


def identity(frames: list[TrackingFrame], threshold: float = 0.5) -> IdentityResult:
    """IDTP/IDFP/IDFN of the best one-to-one id matching over the sequence."""
    n_gt, n_pred = _id_space(frames)
    gt_count, pred_count = _counts(frames, n_gt, n_pred)
    total_gt, total_pred = int(gt_count.sum()), int(pred_count.sum())
    if total_gt == 0 or total_pred == 0:
        return IdentityResult(0, total_pred, total_gt)
    overlap = np.zeros((n_gt, n_pred))
    for frame in frames:
        if frame.gt_ids.size and frame.pred_ids.size:
            overlap[np.ix_(frame.gt_ids, frame.pred_ids)] += frame.similarity >= threshold
    rows, cols = linear_sum_assignment(overlap, maximize=True)
    idtp = int(round(overlap[rows, cols].sum()))
    return IdentityResult(idtp, total_pred - idtp, total_gt - idtp)


# -- the per-frame evaluator --------------------------------------------------------------------------------

@dataclass
class PredictedInstance:
    id: int
    concept: str
    mask: np.ndarray  # (H, W) bool


@dataclass
class FrameMatch:
    """What one frame's evaluation found (kept for sample overlays)."""

    gt_ids: np.ndarray  # ground-truth instance ids evaluated
    pred_ids: np.ndarray  # predicted ids evaluated
    similarity: np.ndarray  # (G, P) concept-gated IoU
    matches: list[tuple[int, int, float]]  # (gt id, pred id, IoU) at the detection threshold
    mean_iou: float  # mean over gt of the best-matched IoU (NaN without gt)
    tp: int
    fp: int
    fn: int


@dataclass
class _ConceptTotals:
    iou_sum: float = 0.0
    instances: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0


class SegmentationEvaluator:
    """Accumulates per-frame segmentation numbers and the tracking sequence. Frames may come in any order."""

    def __init__(self, iou_threshold: float = 0.5):
        self.iou_threshold = float(iou_threshold)
        self.frames: dict[int, TrackingFrame] = {}
        self.per_frame: dict[int, dict] = {}  # stamp -> {mean_iou, precision, recall, tp, fp, fn}
        self.concepts: dict[str, _ConceptTotals] = {}
        self._gt_index: dict[int, int] = {}
        self._pred_index: dict[int, int] = {}
        self._frame_concepts: dict[int, tuple[list, list]] = {}  # stamp -> (gt concepts, predicted concepts)

    def _index(self, table: dict[int, int], ids) -> np.ndarray:
        return np.array([table.setdefault(int(i), len(table)) for i in ids], np.int64)

    def add_frame(self, stamp_ns: int, predictions: list[PredictedInstance], gt_labels: np.ndarray,
                  gt_concepts: dict[int, str] | None, active_concepts: list[str] | None) -> FrameMatch:
        """One frame. gt_labels: (H, W) ids at the predictions' size; gt_concepts: id → concept (None: no
        labels, concepts ignored); active_concepts: what the prediction looked for (None: everything)."""
        labels = np.asarray(gt_labels)
        present = np.unique(labels)
        present = present[present != 0]
        use_concepts = gt_concepts is not None
        active = None if active_concepts is None else {normalise_concept(c) for c in active_concepts}
        if use_concepts:
            concept_of = {int(i): normalise_concept(gt_concepts.get(int(i))) for i in present}
            if active is not None:
                present = np.array([i for i in present if concept_of[int(i)] in active], dtype=present.dtype)
        else:
            concept_of = {int(i): None for i in present}
        preds = [p for p in predictions if p.mask.any()]
        pred_concepts = [normalise_concept(p.concept) if use_concepts else None for p in preds]
        masks = np.stack([p.mask for p in preds]) if preds else np.zeros((0, *labels.shape), bool)
        iou = iou_with_labels(masks, labels, present).T  # (G, P)
        if use_concepts and iou.size:
            gt_c = np.array([concept_of[int(i)] for i in present], dtype=object)
            same = gt_c[:, None] == np.array(pred_concepts, dtype=object)[None, :]
            iou = np.where(same, iou, 0.0)

        gt_idx = self._index(self._gt_index, present)
        pred_ids = np.array([p.id for p in preds], np.int64)
        pred_idx = self._index(self._pred_index, pred_ids)
        self.frames[int(stamp_ns)] = TrackingFrame(gt_idx, pred_idx, iou)
        self._frame_concepts[int(stamp_ns)] = ([concept_of[int(g)] or "(all)" for g in present],
                                               [c or "(all)" for c in pred_concepts])

        rows, cols = hungarian(iou, self.iou_threshold)
        tp = int(rows.size)
        fp, fn = len(preds) - tp, present.size - tp
        best_rows, best_cols = hungarian(iou, 0.0)
        best = np.zeros(present.size)
        best[best_rows] = iou[best_rows, best_cols]
        mean_iou = float(best.mean()) if present.size else float("nan")
        # per concept
        matched_gt = np.zeros(present.size, bool)
        matched_gt[rows] = True
        matched_pred = np.zeros(len(preds), bool)
        matched_pred[cols] = True
        for k, g in enumerate(present):
            totals = self.concepts.setdefault(concept_of[int(g)] or "(all)", _ConceptTotals())
            totals.iou_sum += best[k]
            totals.instances += 1
            totals.tp += int(matched_gt[k])
            totals.fn += int(not matched_gt[k])
        for k, c in enumerate(pred_concepts):
            if not matched_pred[k]:
                self.concepts.setdefault(c or "(all)", _ConceptTotals()).fp += 1
        self.per_frame[int(stamp_ns)] = {
            "mean_iou": mean_iou, "tp": tp, "fp": fp, "fn": fn,
            "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "recall": tp / (tp + fn) if tp + fn else float("nan"),
        }
        matches = [(int(present[r]), int(pred_ids[c]), float(iou[r, c])) for r, c in zip(rows, cols)]
        return FrameMatch(present.astype(np.int64), pred_ids, iou, matches, mean_iou, tp, fp, fn)

    # -- results --

    def sequence(self, concept: str | None = None) -> list[TrackingFrame]:
        """The tracking frames in stamp order. With a concept: only the detections of that concept (ground
        truth labelled with it, predictions that said it in that frame), ids re-indexed contiguously."""
        stamps = sorted(self.frames)
        if concept is None:
            return [self.frames[s] for s in stamps]
        gt_map: dict[int, int] = {}
        pred_map: dict[int, int] = {}
        out = []
        for stamp in stamps:
            f = self.frames[stamp]
            gt_c, pred_c = self._frame_concepts[stamp]
            g = np.array([k for k, c in enumerate(gt_c) if c == concept], np.int64)
            p = np.array([k for k, c in enumerate(pred_c) if c == concept], np.int64)
            out.append(TrackingFrame(self._index(gt_map, f.gt_ids[g]), self._index(pred_map, f.pred_ids[p]),
                                     f.similarity[np.ix_(g, p)]))
        return out

    def totals(self) -> dict:
        tp = sum(t.tp for t in self.concepts.values())
        fp = sum(t.fp for t in self.concepts.values())
        fn = sum(t.fn for t in self.concepts.values())
        per_concept = {
            name: {"iou": t.iou_sum / t.instances if t.instances else float("nan"), "instances": t.instances,
                   "tp": t.tp, "fp": t.fp, "fn": t.fn,
                   "precision": t.tp / (t.tp + t.fp) if t.tp + t.fp else float("nan"),
                   "recall": t.tp / (t.tp + t.fn) if t.tp + t.fn else float("nan")}
            for name, t in sorted(self.concepts.items())
        }
        ious = [c["iou"] for c in per_concept.values() if np.isfinite(c["iou"])]
        return {
            "frames": len(self.frames),
            "miou": float(np.mean(ious)) if ious else float("nan"),
            "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "recall": tp / (tp + fn) if tp + fn else float("nan"),
            "tp": tp, "fp": fp, "fn": fn, "per_concept": per_concept,
        }
