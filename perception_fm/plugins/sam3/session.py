"""One stream through SAM 3: the TrackingSession operations over transformers' Sam3VideoModel modules, with our
own bounded memory.

transformers' Sam3VideoInferenceSession keeps every frame's pixels and every object's output for every frame
(memory grows without bound), recomputes every tracked object when one is added, runs the tracker one object
at a time and keeps all conditioning frames' object pointers. Here:

- a frame is encoded once (detector backbone), and the tracker's features come from the same backbone
  output (Sam3VideoModel.get_vision_features_for_tracker); only the newest frame's features are kept;
- each object keeps conditioning memories (its first and the `max_conditioning_frames - 1` most recent) and
  non-conditioning ones within the tracker's windows: spatial memories for the last `num_maskmem - 1` frames,
  object pointers for the last `max_object_pointers_in_encoder - 1`; older state is dropped when a frame is
  added or committed. Which memories the tracker attends to is decided by the same rule whether or not
  anything was evicted, so eviction never changes a result;
- objects whose memory has the same layout are tracked in one batch (memory attention, mask decoder, memory
  encoder).

Conventions (perception_fm.tasks.segmentation): masks are float probabilities at the mask size (4 * image
size / 14 square), boxes xyxy normalised to the image; everything stays on the model's device.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from perception_fm.errors import BadInputError
from perception_fm.plugins.sam3.concept import EncodedConcept
from perception_fm.plugins.sam3.postprocess import fill_holes, greedy_nms, mask_iou
from perception_fm.tasks.segmentation import Detections, Propagation

NO_OBJECT_LOGIT = -1024.0  # transformers' NO_OBJ_SCORE: mask logits of an object judged absent
MEMORY_SCORE_LOGIT = 10.0  # object score given to the memory encoder: +/- by whether the mask is empty
PROBABILITY_EPS = 1e-6  # committed probabilities are turned back into logits within this margin
PRIOR_MASK_CLAMP = 32.0  # previous mask logits given with a correction (as SAM 2's video predictor)


@dataclass
class _Frame:
    index: int
    image_size: tuple[int, int]  # (H, W) of the input image
    detector_features: Any  # pruned Sam3VisionEncoderOutput (what the detector reads)
    features: torch.Tensor  # (HW, 1, C) tracker features, lowest resolution
    position: torch.Tensor  # (HW, 1, C) their position encoding
    high_res: list  # [(1, C0, H0, W0), (1, C1, H1, W1)] projected high-resolution features


class _Entry:
    """One object's memory of one frame."""

    __slots__ = ("features", "pointer")

    def __init__(self, features: torch.Tensor | None, pointer: torch.Tensor):
        self.features = features  # (HW, 1, C_mem) bfloat16 spatial memory; None once outside the window
        self.pointer = pointer  # (1, C) float32 object pointer


class _Output:
    """What an object got on the current frame, before (or instead of) being written to memory."""

    __slots__ = ("logits", "score", "pointer", "conditioned")

    def __init__(self, logits, score, pointer, conditioned):
        self.logits = logits  # (h, w) float32 mask logits, cleaned
        self.score = score  # () float32 object score logit
        self.pointer = pointer  # (1, C) float32
        self.conditioned = conditioned  # already written as a conditioning frame (add_objects/prompt_object)


class _Object:
    __slots__ = ("cond", "recent", "demoted")

    def __init__(self):
        self.cond: dict[int, _Entry] = {}  # conditioning frames
        self.recent: dict[int, _Entry] = {}  # tracked (non-conditioning) frames
        self.demoted: dict[int, _Entry] = {}  # conditioning frames past the cap, kept while in the spatial window


@dataclass(frozen=True)
class _Layout:
    """Which memories an object attends to on a frame."""

    spatial: tuple  # ((entry, temporal index), ...): conditioning first, then older to newer
    pointers: tuple  # ((pointer, temporal offset), ...)
    shape_key: tuple  # objects with the same key can be batched


@dataclass
class EncodedFrame:
    """One image through the vision backbone: what a session keeps of its newest frame (add_encoded_frame)."""

    model: Any  # the Sam3SegmentationModel that encoded it
    image_size: tuple[int, int]  # (H, W) of the input image
    detector_features: Any
    features: torch.Tensor
    position: torch.Tensor
    high_res: list


def encode_frames(model, images: list[np.ndarray]) -> list[EncodedFrame]:
    """The images (RGB uint8, any sizes: each is resized to the model's square) through the backbone in ONE
    batched pass (a camera rig's group), split back per image. Per-sample operations only, so each image's
    features equal those of its own pass up to float rounding (tests/test_concept_rig.py)."""
    if not images:
        return []
    pixels = torch.cat([model.preprocess(image) for image in images])
    with model.inference():
        vision = model.detector.get_vision_features(pixel_values=pixels)
        features, positions = model.network.get_vision_features_for_tracker(vision_embeds=vision)
    del pixels
    # keep what the detector and the tracker read; drop the backbone's last hidden state, the detector's
    # unused 0.5x level and the position encodings nobody reads (they are large at 1008 px)
    vision_class = type(vision)
    hidden = list(vision.fpn_hidden_states)
    position = list(vision.fpn_position_encoding)
    sizes = model.tracker.backbone_feature_sizes
    batch = len(images)
    encoded = []
    for i, image in enumerate(images):
        def mine(tensor, dim=0):  # image i's slice; tracker tensors are (HW, B, C): batch on dim 1
            return tensor if batch == 1 else tensor.narrow(dim, i, 1).contiguous()

        pruned = vision_class(
            last_hidden_state=None,
            fpn_hidden_states=tuple(mine(h) for h in hidden[:-1]) + (None,),
            fpn_position_encoding=tuple([None] * (len(position) - 2)) + (mine(position[-2]), None),
        )
        own = [mine(f, 1) for f in features]
        high_res = [f.permute(1, 2, 0).reshape(1, f.shape[2], *s) for f, s in zip(own[:-1], sizes[:-1])]
        encoded.append(EncodedFrame(model=model, image_size=tuple(image.shape[:2]), detector_features=pruned,
                                    features=own[-1], position=mine(positions[-1], 1), high_res=high_res))
    return encoded


class Sam3TrackingSession:
    def __init__(self, model, evict: bool = True):
        """model: the Sam3SegmentationModel (perception_fm.plugins.sam3.model) that owns the networks; not
        imported here, so that model.py -> session.py is the only direction between the two."""
        self.model = model
        self.evict = evict
        self._frame: _Frame | None = None
        self._next_frame = 0
        self._objects: "OrderedDict[int, _Object]" = OrderedDict()
        self._pending: dict[int, _Output] = {}
        self._memory_position: torch.Tensor | None = None  # (HW, 1, C_mem): the same for every memory
        self._temporal_positions: list[torch.Tensor] | None = None  # per temporal index
        self._spatial_positions: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()

    # -- frames ---------------------------------------------------------------------------------------------

    def add_frame(self, image: np.ndarray) -> int:
        return self.add_encoded_frame(encode_frames(self.model, [image])[0])

    def add_encoded_frame(self, encoded: "EncodedFrame") -> int:
        """add_frame for a frame encoded already (encode_frames: several cameras' images in one backbone pass)."""
        if encoded.model is not self.model:
            raise ValueError("the frame was encoded by another model than this session's")
        index = self._next_frame
        self._next_frame += 1
        self._frame = _Frame(index=index, image_size=encoded.image_size, detector_features=encoded.detector_features,
                             features=encoded.features, position=encoded.position, high_res=encoded.high_res)
        self._pending = {}
        if self.evict:
            for state in self._objects.values():
                self._evict(state, index)
        return index

    def _current(self, frame: int) -> _Frame:
        if self._frame is None:
            raise ValueError("no frame yet: call add_frame first")
        if frame != self._frame.index:
            raise ValueError(f"frame {frame} is not the newest frame ({self._frame.index}); only the newest "
                             "frame's features are kept")
        return self._frame

    # -- detection ------------------------------------------------------------------------------------------

    def detect(self, frame: int, concepts: Mapping[int, Any]) -> Detections:
        current = self._current(frame)
        model = self.model
        h, w = model.mask_size
        items = list(concepts.items())
        for prompt_id, concept in items:
            if not isinstance(concept, EncodedConcept) or concept.owner != id(model):
                raise TypeError(f"concept {prompt_id} was not made by this model's encode_concept: {concept!r}")
        if not items:
            return self._no_detections()
        model.text_embeddings([c for _, c in items])
        scores, masks, boxes = [], [], []
        with model.inference():
            for start in range(0, len(items), model.options.concept_batch):
                chunk = [c for _, c in items[start:start + model.options.concept_batch]]
                batch = len(chunk)
                vision = type(current.detector_features)(
                    fpn_hidden_states=tuple(f.expand(batch, -1, -1, -1) if f is not None else None
                                            for f in current.detector_features.fpn_hidden_states),
                    fpn_position_encoding=tuple(p.expand(batch, -1, -1, -1) if p is not None else None
                                                for p in current.detector_features.fpn_position_encoding),
                )
                text = _TextEmbeds(torch.cat([c.embedding for c in chunk]))
                output = model.detector(vision_embeds=vision, text_embeds=text,
                                        attention_mask=torch.cat([c.attention_mask for c in chunk]))
                scores.append(output.pred_logits.float().sigmoid() * output.presence_logits.float().sigmoid())
                masks.append(output.pred_masks)
                boxes.append(output.pred_boxes)
        scores = torch.cat(scores)  # (P, Q)
        masks = torch.cat(masks)  # (P, Q, h, w) logits
        boxes = torch.cat(boxes)  # (P, Q, 4) xyxy normalised
        chosen = (scores > model.score_threshold).nonzero()  # host sync: the number of detections
        if chosen.shape[0] == 0:
            return self._no_detections()
        concept_index, query = chosen[:, 0], chosen[:, 1]
        chosen_scores = scores[concept_index, query]
        chosen_masks = masks[concept_index, query].float()
        if model.nms_iou > 0 and chosen.shape[0] > 1:
            iou = mask_iou(chosen_masks > 0, chosen_masks > 0)
            host_scores, host_iou, groups = (t.cpu().numpy() for t in (chosen_scores, iou, concept_index))
            keep = greedy_nms(host_scores, host_iou, groups, model.nms_iou)
        else:
            host_scores, groups = chosen_scores.cpu().numpy(), concept_index.cpu().numpy()
            keep = np.ones(len(host_scores), bool)
        kept = np.flatnonzero(keep)
        order = kept[np.lexsort((-host_scores[kept], groups[kept]))]  # by concept, then by score
        order_t = torch.as_tensor(order, device=scores.device)
        prompt_keys = np.array([key for key, _ in items], dtype=np.int64)
        cleaned = fill_holes(chosen_masks[order_t], model.fill_hole_area)
        return Detections(
            masks=cleaned.sigmoid(),
            boxes=boxes[concept_index[order_t], query[order_t]].float().clamp(0.0, 1.0),
            scores=chosen_scores[order_t].float(),
            prompt_ids=torch.as_tensor(prompt_keys[groups[order]], device=scores.device),
        )

    def _no_detections(self) -> Detections:
        device = self.model.device
        return Detections(masks=torch.zeros(0, *self.model.mask_size, device=device),
                          boxes=torch.zeros(0, 4, device=device), scores=torch.zeros(0, device=device),
                          prompt_ids=torch.zeros(0, dtype=torch.long, device=device))

    # -- tracking -------------------------------------------------------------------------------------------

    def propagate(self, frame: int) -> Propagation:
        current = self._current(frame)
        model = self.model
        ids = list(self._objects)
        if not ids:
            return Propagation(obj_ids=[], masks=torch.zeros(0, *model.mask_size, device=model.device),
                               scores=torch.zeros(0, device=model.device))
        todo = [obj_id for obj_id in ids if obj_id not in self._pending]
        if todo:
            self._track(current, todo)
        outputs = [self._pending[obj_id] for obj_id in ids]
        return Propagation(obj_ids=ids, masks=torch.stack([o.logits for o in outputs]).sigmoid(),
                           scores=torch.stack([o.score for o in outputs]).sigmoid())

    def _track(self, current: _Frame, obj_ids: list[int]) -> None:
        """Memory-conditioned masks of `obj_ids` on the current frame, batched by memory layout; results
        go to self._pending."""
        model = self.model
        layouts = {obj_id: self._layout(self._objects[obj_id], current.index) for obj_id in obj_ids}
        groups: dict[tuple, list[int]] = {}
        for obj_id in obj_ids:
            groups.setdefault(layouts[obj_id].shape_key, []).append(obj_id)
        results = {}
        multimask = self.model.tracker._use_multimask(False, None)
        with model.inference():
            for members in groups.values():
                # objects with the same pointer offsets (started and re-conditioned on the same frames) side by
                # side: their pointer position encodings are computed once
                members.sort(key=lambda obj_id: tuple(o for _, o in layouts[obj_id].pointers))
                for start in range(0, len(members), model.options.object_batch):
                    chunk = members[start:start + model.options.object_batch]
                    features = self._conditioned_features(current, [layouts[obj_id] for obj_id in chunk])
                    logits, pointers, scores = self._decode(current, features, multimask=multimask)
                    for i, obj_id in enumerate(chunk):
                        results[obj_id] = (logits[i], pointers[i:i + 1], scores[i])
        cleaned = fill_holes(torch.stack([results[obj_id][0] for obj_id in obj_ids]), model.fill_hole_area)
        for i, obj_id in enumerate(obj_ids):
            _, pointer, score = results[obj_id]
            self._pending[obj_id] = _Output(cleaned[i], score, pointer, conditioned=False)

    def _layout(self, state: _Object, frame: int) -> _Layout:
        """The memories the tracker attends to for an object on `frame`, by one rule whatever was evicted:
        the first conditioning frame and the most recent others up to max_conditioning_frames (their spatial
        memories and object pointers), spatial memories of the last num_maskmem - 1 frames (tracked ones, or
        conditioning frames not selected above), object pointers of tracked frames within
        max_object_pointers_in_encoder - 1 frames. transformers' rule, except that it attends to the pointers
        of every conditioning frame it ever stored."""
        model = self.model
        conditioning = sorted(f for f in state.cond if f <= frame)
        cap = model.max_conditioning_frames
        selected = conditioning if len(conditioning) <= cap else conditioning[:1] + (
            conditioning[len(conditioning) - (cap - 1):] if cap > 1 else [])
        unselected = set(conditioning) - set(selected)
        spatial = [(state.cond[f], -1) for f in selected]
        for offset in range(model.num_maskmem - 1, 0, -1):
            previous = frame - offset
            entry = state.recent.get(previous)
            if entry is None:
                entry = state.cond[previous] if previous in unselected else state.demoted.get(previous)
            if entry is not None and entry.features is not None:
                spatial.append((entry, offset - 1))
        pointers = [(state.cond[f].pointer, frame - f) for f in selected]
        for offset in range(1, model.max_object_pointers):
            entry = state.recent.get(frame - offset)
            if entry is not None:
                pointers.append((entry.pointer, offset))
        key = (tuple(index for _, index in spatial), len(pointers))
        return _Layout(spatial=tuple(spatial), pointers=tuple(pointers), shape_key=key)

    def _conditioned_features(self, current: _Frame, layouts: list[_Layout]) -> torch.Tensor:
        """The current frame's features fused with each object's memory (memory attention), (B, C, H, W)."""
        tracker = self.model.tracker
        batch = len(layouts)
        first = layouts[0]
        slots = len(first.spatial)
        # spatial memories (slot-major), then object pointers split into memory-width tokens
        stacked = torch.cat([layout.spatial[j][0].features for j in range(slots) for layout in layouts], dim=1)
        hw, _, channels = stacked.shape
        memory = stacked.view(hw, slots, batch, channels).transpose(0, 1).reshape(slots * hw, batch, channels)
        spatial_position = self._spatial_position(first.shape_key[0])
        pointer_groups: list[tuple[tuple, list[int]]] = []
        for i, layout in enumerate(layouts):  # layouts are sorted by pointer offsets
            offsets = tuple(o for _, o in layout.pointers)
            if pointer_groups and pointer_groups[-1][0] == offsets:
                pointer_groups[-1][1].append(i)
            else:
                pointer_groups.append((offsets, [i]))
        hidden = tracker.hidden_dim
        pointer_parts, pointer_positions = [], []
        for offsets, members in pointer_groups:
            tokens = [torch.cat([layouts[i].pointers[j][0] for i in members]) for j in range(len(offsets))]
            pointers, positions = tracker._process_object_pointers(
                list(offsets), tokens, self.model.max_object_pointers, len(members), hidden, memory.device)
            pointer_parts.append(pointers)
            pointer_positions.append(positions)
        pointers = torch.cat(pointer_parts, dim=1)
        if len(pointer_groups) == 1:
            position = torch.cat([spatial_position, pointer_positions[0][:, :1]])  # broadcast over the batch
        else:
            position = torch.cat([spatial_position.expand(-1, batch, -1), torch.cat(pointer_positions, dim=1)])
        memory = torch.cat([memory.to(position.dtype), pointers.to(position.dtype)])
        fused = tracker.memory_attention(
            current_vision_features=current.features.expand(-1, batch, -1),
            current_vision_position_embeddings=current.position,
            memory=memory,
            memory_posision_embeddings=position,
            num_object_pointer_tokens=pointers.shape[0],
        )  # (1, B, HW, C)
        height, width = tracker.backbone_feature_sizes[-1]
        return fused[0].transpose(1, 2).reshape(batch, hidden, height, width)

    def _spatial_position(self, temporal_indices: tuple) -> torch.Tensor:
        """Position encodings of a spatial memory layout, (slots * HW, 1, C_mem), cached per layout."""
        cached = self._spatial_positions.get(temporal_indices)
        if cached is None:
            cached = torch.cat([self._temporal_positions[i] for i in temporal_indices])
            self._spatial_positions[temporal_indices] = cached
            if len(self._spatial_positions) > 32:
                self._spatial_positions.popitem(last=False)
        else:
            self._spatial_positions.move_to_end(temporal_indices)
        return cached

    def _decode(self, current: _Frame, features: torch.Tensor, points=None, labels=None, mask_input=None,
                multimask: bool = False):
        """The tracker's SAM head on (B, C, H, W) features, batched over objects (transformers'
        _single_frame_forward handles one object per call). Returns low-resolution mask logits (B, h, w)
        float32, object pointers (B, C) float32 and object score logits (B,) float32."""
        tracker = self.model.tracker
        batch = features.shape[0]
        if points is None:
            points = torch.zeros(batch, 1, 1, 2, device=features.device)
            labels = -torch.ones(batch, 1, 1, dtype=torch.int32, device=features.device)
        if mask_input is not None and mask_input.shape[-2:] != tuple(tracker.prompt_encoder.mask_input_size):
            mask_input = F.interpolate(mask_input.float(), size=tracker.prompt_encoder.mask_input_size,
                                       mode="bilinear", align_corners=False, antialias=True)
        sparse, dense = tracker.prompt_encoder(input_points=points, input_labels=labels, input_boxes=None,
                                               input_masks=mask_input)
        high_res = [f.expand(batch, -1, -1, -1) for f in current.high_res]
        masks, iou, tokens, object_logits = tracker.mask_decoder(
            image_embeddings=features,
            image_positional_embeddings=self.model.image_positional_embeddings.expand(batch, -1, -1, -1),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask,
            high_resolution_features=high_res,
        )  # masks (B, 1, K, h, w), iou (B, 1, K), tokens (B, 1, K, C), object_logits (B, 1, 1)
        appearing = object_logits[:, 0, 0] > 0
        if multimask:
            best = iou[:, 0].argmax(dim=-1)
            rows = torch.arange(batch, device=features.device)
            masks = masks[rows, 0, best]
            token = tokens[rows, 0, best]
        else:
            masks = masks[:, 0, 0]
            token = tokens[:, 0, 0]
        masks = torch.where(appearing[:, None, None], masks.float(), NO_OBJECT_LOGIT)
        pointer = tracker.object_pointer_proj(token)
        present = appearing[:, None].to(pointer.dtype)
        pointer = present * pointer + (1 - present) * tracker.no_object_pointer
        return masks, pointer.float(), object_logits[:, 0, 0].float()

    # -- memory ---------------------------------------------------------------------------------------------

    def _encode(self, current: _Frame, logits: torch.Tensor, binarize: bool,
                appearing: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Spatial memories of masks given as logits (B, 1, h, w) on the current frame (the tracker's memory
        encoder: binarized for conditioning masks, sigmoid otherwise, as transformers does; an object whose
        mask is empty gets the encoder's occlusion embedding); one (HW, 1, C_mem) bfloat16 tensor per
        object."""
        tracker = self.model.tracker
        batch = logits.shape[0]
        if appearing is None:
            appearing = (logits > 0).flatten(1).any(dim=1)
        score = torch.where(appearing, MEMORY_SCORE_LOGIT, -MEMORY_SCORE_LOGIT).view(batch, 1, 1)
        features, position = tracker._encode_new_memory(
            current_vision_feats=current.features.expand(-1, batch, -1),
            pred_masks_high_res=logits.float(), object_score_logits=score, is_mask_from_pts=binarize,
        )
        if self._memory_position is None:
            self._memory_position = position[:, :1].clone()
            table = tracker.memory_temporal_positional_encoding  # (num_maskmem, 1, 1, C_mem)
            self._temporal_positions = [self._memory_position + table[i] for i in range(table.shape[0])]
            self._temporal_positions = [p.reshape(p.shape[0], 1, p.shape[-1]) for p in self._temporal_positions]
        return [features[:, i:i + 1].clone() for i in range(batch)]

    def _store(self, obj_id: int, frame: int, entry: _Entry, conditioning: bool) -> None:
        state = self._objects[obj_id]
        if conditioning:
            state.recent.pop(frame, None)
            state.demoted.pop(frame, None)
            state.cond[frame] = entry
            if self.evict and len(state.cond) > self.model.max_conditioning_frames:
                frames = sorted(state.cond)
                for old in frames[1:len(frames) - self.model.max_conditioning_frames + 1]:
                    state.demoted[old] = state.cond.pop(old)  # may still serve as a recent spatial memory
        else:
            if frame in state.cond:
                raise ValueError(f"object {obj_id} already has a conditioning memory on frame {frame}")
            state.recent[frame] = entry
        if self.evict:  # what the current frame still reads stays (a prompt may follow a commit)
            self._evict(state, frame)

    def _evict(self, state: _Object, next_frame: int) -> None:
        """Drop what no operation on frame `next_frame` or later can attend to."""
        spatial_from = next_frame - (self.model.num_maskmem - 1)
        pointer_from = next_frame - (self.model.max_object_pointers - 1)
        for frame in [f for f in state.recent if f < spatial_from]:
            if frame < pointer_from:
                del state.recent[frame]
            else:
                state.recent[frame].features = None
        for frame in [f for f in state.demoted if f < spatial_from]:
            del state.demoted[frame]

    # -- object operations ----------------------------------------------------------------------------------

    def _mask_batch(self, masks: Iterable) -> torch.Tensor:
        """(B, 1, h, w) float masks on the device at the mask size."""
        model = self.model
        tensors = []
        for mask in masks:
            mask = torch.as_tensor(mask, device=model.device)
            if mask.dim() != 2:
                raise ValueError(f"masks must be (h, w), got {tuple(mask.shape)}")
            tensors.append(mask.float())
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) == 1 and shapes.pop() == model.mask_size:
            return torch.stack(tensors)[:, None]
        return torch.cat([F.interpolate(t[None, None], size=model.mask_size, mode="bilinear", align_corners=False)
                          for t in tensors])

    def add_objects(self, frame: int, masks: Mapping[int, Any]) -> None:
        current = self._current(frame)
        model = self.model
        ids = [int(obj_id) for obj_id in masks]
        if not ids:
            return
        # A pixel is in the object where its probability is > 0.5, i.e. its logit > 0: Meta's original sam3
        # (sam3/model/sam3_video_base.py, _tracker_add_new_objects) binarises the detector's logits with > 0.
        # transformers' Sam3VideoModel._tracker_add_new_objects applies ">= 0.5" to the same logits (a
        # probability threshold on logits), which drops the pixels with logits in (0, 0.5).
        binary = (self._mask_batch(masks.values()) > 0.5).float()
        tracker = model.tracker
        hidden = tracker.hidden_dim
        height, width = tracker.backbone_feature_sizes[-1]
        raw = current.features.permute(1, 2, 0).reshape(1, hidden, height, width)
        with model.inference():
            for start in range(0, len(ids), model.options.object_batch):
                chunk = ids[start:start + model.options.object_batch]
                chunk_masks = binary[start:start + len(chunk)]
                batch = len(chunk)
                # transformers' _use_mask_as_output, batched: the mask is the output; its object pointer comes
                # from the SAM head prompted with the mask
                image = F.interpolate(chunk_masks, size=(model.image_size, model.image_size), mode="bilinear",
                                      align_corners=False, antialias=True)
                high_res_logits = image * 20.0 - 10.0
                low_res = F.interpolate(high_res_logits, size=tracker.prompt_encoder.mask_input_size,
                                        mode="bilinear", align_corners=False, antialias=True)
                _, pointer, _ = self._decode(current, raw.expand(batch, -1, -1, -1),
                                             mask_input=tracker.mask_downsample(image), multimask=True)
                appearing = chunk_masks.flatten(1).any(dim=1)
                present = appearing[:, None].float()
                pointer = present * pointer + (1 - present) * tracker.no_object_pointer.float()
                score = torch.where(appearing, 10.0, -10.0)
                memories = self._encode(current, high_res_logits, binarize=True, appearing=appearing)
                for i, obj_id in enumerate(chunk):
                    self._objects.setdefault(obj_id, _Object())
                    self._store(obj_id, frame, _Entry(memories[i], pointer[i:i + 1]), conditioning=True)
                    self._pending[obj_id] = _Output(low_res[i, 0].float(), score[i], pointer[i:i + 1],
                                                    conditioned=True)

    def prompt_object(self, frame: int, obj_id: int, points: np.ndarray | None, labels: np.ndarray | None,
                      box: np.ndarray | None) -> Any:
        current = self._current(frame)
        model = self.model
        tracker = model.tracker
        obj_id = int(obj_id)
        coords, codes = self._prompt_points(current, points, labels, box)
        existing = obj_id in self._objects
        pending = self._pending.get(obj_id)
        tracked = existing and pending is not None and not pending.conditioned
        hidden = tracker.hidden_dim
        height, width = tracker.backbone_feature_sizes[-1]
        with model.inference():
            if tracked:  # a correction on a frame the object was tracked on: its memory still applies
                features = self._conditioned_features(current, [self._layout(self._objects[obj_id], frame)])
            else:
                features = (current.features + tracker.no_memory_embedding).permute(1, 2, 0).reshape(
                    1, hidden, height, width)
            prior = None
            if pending is not None:
                prior = pending.logits.clamp(-PRIOR_MASK_CLAMP, PRIOR_MASK_CLAMP)[None, None]
            multimask = tracker._use_multimask(not tracked, {"point_labels": codes})
            logits, pointer, score = self._decode(current, features, points=coords, labels=codes, mask_input=prior,
                                                  multimask=multimask)
            cleaned = fill_holes(logits, model.fill_hole_area)
            memory = self._encode(current, cleaned[:, None], binarize=True)[0]
        self._objects.setdefault(obj_id, _Object())
        self._store(obj_id, frame, _Entry(memory, pointer), conditioning=True)
        self._pending[obj_id] = _Output(cleaned[0], score[0], pointer, conditioned=True)
        return cleaned[0].sigmoid()

    def _prompt_points(self, current: _Frame, points, labels, box):
        """Clicks and box in input-image pixels -> the tracker's point prompt ((1, 1, K, 2) coordinates at the
        model's image size, (1, 1, K) labels: box corners 2 and 3 first, then clicks 1 / 0)."""
        height, width = current.image_size
        scale = np.array([self.model.image_size / width, self.model.image_size / height])
        coords, codes = [], []
        if box is not None:
            box = np.asarray(box, dtype=np.float64).reshape(-1)
            if box.shape != (4,) or not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
                raise BadInputError("prompt", f"a box must be finite xyxy pixels with x0 < x1 and y0 < y1, got {box}")
            coords += [box[:2] * scale, box[2:] * scale]
            codes += [2, 3]
        if points is not None:
            points = np.asarray(points, dtype=np.float64).reshape(-1, 2) if np.size(points) else np.zeros((0, 2))
            if not np.isfinite(points).all():
                raise BadInputError("prompt", "click coordinates must be finite")
            labels = np.ones(len(points), np.int64) if labels is None else np.asarray(labels).reshape(-1)
            if len(labels) != len(points) or not np.isin(labels, (0, 1)).all():
                raise BadInputError("prompt", f"need one label (1 = object, 0 = background) per click, got "
                                              f"{len(labels)} labels for {len(points)} clicks")
            coords += list(points * scale)
            codes += [int(v) for v in labels]
        if not coords:
            raise BadInputError("prompt", "a prompt needs at least one click or a box")
        device = self.model.device
        return (torch.tensor(np.array(coords, np.float32), device=device).view(1, 1, -1, 2),
                torch.tensor(codes, dtype=torch.int32, device=device).view(1, 1, -1))

    def commit(self, frame: int, masks: Mapping[int, Any], conditioning: Iterable[int] = ()) -> None:
        current = self._current(frame)
        model = self.model
        conditioning = {int(obj_id) for obj_id in conditioning}
        ids = [int(obj_id) for obj_id in masks]
        if not conditioning <= set(ids):
            raise ValueError(f"conditioning objects {sorted(conditioning - set(ids))} have no mask in this commit")
        unknown = [obj_id for obj_id in ids if obj_id not in self._objects]
        if unknown:
            raise KeyError(f"commit for objects not in the session: {unknown}")
        values = list(masks.values())
        soft, hard = [], []
        for i, obj_id in enumerate(ids):
            pending = self._pending.get(obj_id)
            if pending is None:
                raise ValueError(f"object {obj_id} has no output on frame {frame}: propagate before commit")
            if pending.conditioned and obj_id not in conditioning:
                continue  # conditioned on this frame already (add_objects / prompt_object)
            (hard if obj_id in conditioning else soft).append(i)
        if not soft and not hard:
            return
        probabilities = self._mask_batch(values)
        logits = torch.logit(probabilities.clamp(PROBABILITY_EPS, 1.0 - PROBABILITY_EPS))
        # Every mask is encoded as given (the encoder reads its probabilities), conditioning ones included, as
        # transformers' _tracker_update_memories does for re-conditioned objects; a caller that wants a binary
        # conditioning memory (re-anchoring on a detection) commits a binary mask.
        members = soft + hard
        with model.inference():
            for start in range(0, len(members), model.options.object_batch):
                chunk = members[start:start + model.options.object_batch]
                memories = self._encode(current, logits[chunk], binarize=False)
                for i, memory in zip(chunk, memories):
                    obj_id = ids[i]
                    pending = self._pending[obj_id]
                    conditioning_frame = obj_id in conditioning
                    self._store(obj_id, frame, _Entry(memory, pending.pointer), conditioning=conditioning_frame)
                    pending.conditioned = pending.conditioned or conditioning_frame

    def remove_objects(self, obj_ids: Iterable[int]) -> None:
        for obj_id in obj_ids:
            self._objects.pop(int(obj_id), None)
            self._pending.pop(int(obj_id), None)
        if not self._objects:
            self._spatial_positions.clear()

    # -- accounting -----------------------------------------------------------------------------------------

    def memory_stats(self) -> dict[str, int]:
        def size(tensor) -> int:
            return tensor.numel() * tensor.element_size() if tensor is not None else 0

        stats = {"frames": 0, "frame_bytes": 0, "objects": len(self._objects), "conditioning_entries": 0,
                 "recent_entries": 0, "spatial_memories": 0, "memory_bytes": 0, "pending": len(self._pending)}
        if self._frame is not None:
            frame = self._frame
            tensors = [frame.features, frame.position, *frame.high_res,
                       *(t for t in frame.detector_features.fpn_hidden_states if t is not None),
                       *(t for t in frame.detector_features.fpn_position_encoding if t is not None)]
            stats["frames"] = 1
            stats["frame_bytes"] = sum(size(t) for t in tensors)
        for state in self._objects.values():
            stats["conditioning_entries"] += len(state.cond)
            stats["recent_entries"] += len(state.recent) + len(state.demoted)
            for entry in (*state.cond.values(), *state.recent.values(), *state.demoted.values()):
                stats["spatial_memories"] += entry.features is not None
                stats["memory_bytes"] += size(entry.features) + size(entry.pointer)
        for output in self._pending.values():
            stats["memory_bytes"] += size(output.logits) + size(output.pointer)
        return stats


class _TextEmbeds:
    """What Sam3Model.forward reads from `text_embeds` (the output of get_text_features)."""

    def __init__(self, features: torch.Tensor):
        self.pooler_output = features
