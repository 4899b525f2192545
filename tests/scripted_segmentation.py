"""A scripted segmentation model for tests: it answers from the synthetic sample's ground-truth instances
(random-weight networks cannot produce meaningful masks). The "detector" returns the masks of objects whose
concept was asked for (with scripted misses and false positives); the "tracker" propagates each object it
was given as the ground-truth mask of the instance it was started on.

Also a pluggy plugin ("scripted-segmentation"); `use_in_default_manager()` registers it for in-process runs."""
import numpy as np
import torch

from perception_fm.hookspecs import ModelSpec, Task, hookimpl
from perception_fm.replay.synthetic import SampleConfig, instance_labels, render_frame
from perception_fm.tasks.segmentation import Detections, Propagation, SegmentationCapabilities

SAMPLE = SampleConfig(width=128, height=96, frames=60, camera_path="walk")  # the views the tests were written for
FRAMES = [render_frame(SAMPLE, i) for i in range(SAMPLE.frames)]
LABELS = instance_labels(SAMPLE)


class ScriptedSession:
    def __init__(self, hidden=None, false_positives=None, score=0.9):
        self.hidden = hidden or {}  # frame -> set of GT instance ids invisible to detector AND tracker
        self.false_positives = false_positives or {}  # frame -> list of (prompt_text, (h, w) bool mask)
        self.score = score
        self.frame = -1
        self.objects = {}  # obj_id -> GT instance id (or None: a false positive)
        self.calls = []

    def _gt(self, instance):
        mask = FRAMES[self.frame % len(FRAMES)].instances == instance
        if instance in self.hidden.get(self.frame, ()):
            mask = np.zeros_like(mask)
        return torch.from_numpy(mask.astype(np.float32))

    def add_frame(self, image):
        self.frame += 1
        self.calls.append(("add_frame", self.frame))
        return self.frame

    def detect(self, frame, concepts):
        self.calls.append(("detect", frame, sorted(concepts)))
        masks, prompt_ids = [], []
        for prompt_id, text in concepts.items():
            for instance, label in LABELS.items():
                mask = self._gt(instance)
                if label == text and mask.any():
                    masks.append(mask)
                    prompt_ids.append(prompt_id)
            for fp_text, fp_mask in self.false_positives.get(frame, ()):
                if fp_text == text:
                    masks.append(torch.from_numpy(fp_mask.astype(np.float32)))
                    prompt_ids.append(prompt_id)
        n = len(masks)
        return Detections(masks=torch.stack(masks) if n else torch.zeros(0, 96, 128),
                          boxes=torch.zeros(n, 4), scores=torch.full((n,), self.score),
                          prompt_ids=torch.tensor(prompt_ids, dtype=torch.long))

    def propagate(self, frame):
        ids = sorted(self.objects)
        masks = [self._gt(self.objects[i]) if self.objects[i] is not None else torch.zeros(96, 128) for i in ids]
        return Propagation(obj_ids=ids, masks=torch.stack(masks) if ids else torch.zeros(0, 96, 128),
                           scores=torch.tensor([float(m.any()) for m in masks]))

    def add_objects(self, frame, masks):
        self.calls.append(("add_objects", frame, sorted(masks)))
        for obj_id, mask in masks.items():
            overlaps = {i: float((self._gt(i).bool() & (mask > 0.5)).sum()) for i in LABELS}
            best = max(overlaps, key=overlaps.get)
            self.objects[obj_id] = best if overlaps[best] > 0 else None

    def prompt_object(self, frame, obj_id, points, labels, box):
        self.calls.append(("prompt_object", frame, obj_id))
        x0, y0, x1, y1 = (int(v) for v in box)  # the node's service hands float pixels
        mask = torch.zeros(96, 128)
        mask[y0:y1, x0:x1] = 1
        self.add_objects(frame, {obj_id: mask})
        return mask

    def commit(self, frame, masks, conditioning=()):
        self.calls.append(("commit", frame, sorted(masks), sorted(conditioning)))

    def remove_objects(self, obj_ids):
        self.calls.append(("remove_objects", sorted(obj_ids)))
        for obj_id in obj_ids:
            self.objects.pop(obj_id)

    def memory_stats(self):
        return {"objects": len(self.objects)}




class ScriptedSegmentationModel:
    """The SegmentationModel protocol around ScriptedSession (frames are matched to the sample by bytes)."""

    name, weights, device = "scripted", "none", "cpu"
    capabilities = SegmentationCapabilities(mask_size=(96, 128), max_concept_tokens=32, point_prompts=True)

    def __init__(self, **session_options):
        self.session_options = session_options
        self.sessions = []

    def encode_concept(self, text):
        from perception_fm.errors import BadInputError

        if not text.strip() or len(text.split()) > 8:
            raise BadInputError("concept", f"concept {text!r} is empty or longer than 8 words")
        return text

    def new_session(self):
        session = ScriptedSession(**self.session_options)
        self.sessions.append(session)
        return session


@hookimpl
def register_models():
    return [ModelSpec(name="scripted-segmentation", task=Task.SEGMENTATION, summary="test double", license="test",
                      create=lambda options: ScriptedSegmentationModel())]


def use_in_default_manager() -> None:
    """Make "scripted-segmentation" creatable through the default plugin manager (once per process)."""
    import sys

    from perception_fm.plugin_manager import default_manager

    manager = default_manager()
    if "scripted-segmentation" not in {entry.spec.name for entry in manager.models(Task.SEGMENTATION)}:
        manager.register(sys.modules[__name__], name="scripted-segmentation")
