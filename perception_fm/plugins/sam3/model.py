"""SAM 3 (transformers' Sam3VideoModel: detector + memory tracker sharing one vision backbone) as a
perception_fm SegmentationModel. The per-stream work is in perception_fm.plugins.sam3.session."""
from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, fields
from typing import Any, Mapping

import numpy as np

from perception_fm.errors import BadInputError
from perception_fm.hookspecs import ModelOptions
from perception_fm.plugins.sam3 import loading
from perception_fm.plugins.sam3.concept import EncodedConcept
from perception_fm.plugins.weights import select_device
from perception_fm.tasks.segmentation import SegmentationCapabilities

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Sam3Options:
    """ModelOptions.extra of the sam3 model (None / 0 = the checkpoint's value).

    image_size: side of the square the image is resized to (a multiple of 14); 0 = the checkpoint's (1008).
        Masks are 4 * image_size / 14 pixels square (288 at 1008). Smaller is faster and coarser.
    max_conditioning_frames: conditioning frames each object keeps (>= 1): its first one and the most recent
        others. transformers keeps every one and attends to all their object pointers.
    score_threshold: detection probability (class x presence) a detection needs (checkpoint: 0.5).
    nms_iou: mask IoU above which a lower-scored detection of the same concept is suppressed (checkpoint:
        0.1); <= 0 turns NMS off.
    fill_hole_area: holes and sprinkles of at most this many mask pixels are filled / removed in every mask
        returned (checkpoint: 16); 0 turns it off.
    precision: "auto" (upstream's: fp32 weights, bf16 autocast on GPUs that have it, else fp16; fp32 on CPU),
        "fp32", "bf16" (also on CPU), "fp16" (GPU only; fp32 on CPU). bf16/fp16 store the weights in that dtype
        too (half the memory of fp32); spatial memories are stored in bf16 always.
    concept_batch: concepts per detector pass (peak memory grows with it).
    object_batch: objects per tracker pass (peak memory grows with it).
    """

    image_size: int = 0
    max_conditioning_frames: int = 4
    score_threshold: float | None = None
    nms_iou: float | None = None
    fill_hole_area: int | None = None
    precision: str = "auto"
    concept_batch: int = 16
    object_batch: int = 32

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> "Sam3Options":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(extra) - set(known))
        if unknown:
            log.warning("sam3 ignores unknown options %s (known: %s)", ", ".join(unknown), ", ".join(sorted(known)))
        values = {}
        for name in known:
            if name not in extra or extra[name] is None:
                continue
            value = extra[name]
            if name == "precision":
                value = str(value)
                if value not in PRECISIONS:
                    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {value!r}")
            elif name in ("score_threshold", "nms_iou"):
                value = float(value)
            else:
                value = int(value)
            values[name] = value
        options = cls(**values)
        if options.image_size < 0:
            raise ValueError(f"image_size must be >= 0, got {options.image_size}")
        if options.max_conditioning_frames < 1:
            raise ValueError(f"max_conditioning_frames must be >= 1, got {options.max_conditioning_frames}")
        if options.fill_hole_area is not None and options.fill_hole_area < 0:
            raise ValueError(f"fill_hole_area must be >= 0, got {options.fill_hole_area}")
        if options.score_threshold is not None and not 0.0 <= options.score_threshold < 1.0:
            raise ValueError(f"score_threshold must be in [0, 1), got {options.score_threshold}")
        if options.concept_batch < 1 or options.object_batch < 1:
            raise ValueError("concept_batch and object_batch must be >= 1")
        return options


def amp_dtype(precision: str, device: str):
    """The autocast dtype for `precision` on `device` (None: fp32)."""
    import torch

    if precision == "fp32":
        return None
    if not device.startswith("cuda"):  # CPU: fp32 unless bf16 is asked for explicitly
        return torch.bfloat16 if precision == "bf16" else None
    if precision == "fp16":
        return torch.float16
    # asked without a GPU here (a memory estimate for a robot's GPU): assume bf16, as every GPU since Ampere has
    bf16 = torch.cuda.is_bf16_supported() if torch.cuda.is_available() else True
    return torch.bfloat16 if bf16 else torch.float16


def estimate_memory(options: ModelOptions, workload: Mapping[str, int]):
    """MemoryEstimate (hookspecs) of sam3 at `options` from its architecture: the checkpoint's config.json when
    `options.weights` is a local directory, else facebook/sam3's layout (transformers' defaults). Activations:
    the peak of one frame's vision encoding (detector and tracker features) followed by one detector pass over
    min(concepts, concept_batch) concepts; the tracker's per-object decoding is not included (it works on the
    small low-resolution features, in batches of object_batch)."""
    import torch
    from transformers import Sam3VideoConfig, Sam3VideoModel

    from perception_fm.hookspecs import MemoryEstimate
    from perception_fm.plugins.weights import is_local_path
    from perception_fm.runtime.budget import build_on_meta, forward_peak_bytes, module_bytes

    sam3_options = Sam3Options.from_extra(options.extra)
    if options.weights and is_local_path(options.weights):
        config = Sam3VideoConfig.from_pretrained(options.weights)
    else:
        config = Sam3VideoConfig()
    if sam3_options.image_size:
        loading.apply_image_size(config, sam3_options.image_size)
    with build_on_meta():
        network = Sam3VideoModel(config)
    amp = amp_dtype(sam3_options.precision, options.device if options.device != "auto" else "cpu")
    if sam3_options.precision in ("bf16", "fp16") and amp is not None:
        network.to(amp)
    parameters, parameter_bytes, buffer_bytes = module_bytes(network)
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in network.parameters()})
    network.to(amp or torch.float32)  # the forward at the autocast dtype (see forward_peak_bytes)
    detector = network.detector_model
    size = int(network.tracker_model.config.image_size)
    batch = max(1, min(int(workload.get("concepts", 1)), sam3_options.concept_batch))
    tokens = int(detector.config.text_config.max_position_embeddings)

    def forward():
        pixels = torch.zeros(1, 3, size, size, device="meta", dtype=amp or torch.float32)
        vision = detector.get_vision_features(pixel_values=pixels)
        tracker_features = network.get_vision_features_for_tracker(vision_embeds=vision)
        ids = torch.zeros(batch, tokens, dtype=torch.long, device="meta")
        mask = torch.ones(batch, tokens, dtype=torch.long, device="meta")
        text = detector.get_text_features(input_ids=ids, attention_mask=mask, return_dict=True).pooler_output
        expanded = type(vision)(
            fpn_hidden_states=tuple(f.expand(batch, -1, -1, -1) for f in vision.fpn_hidden_states),
            fpn_position_encoding=tuple(p.expand(batch, -1, -1, -1) for p in vision.fpn_position_encoding))
        from perception_fm.plugins.sam3.session import _TextEmbeds

        return tracker_features, detector(vision_embeds=expanded, text_embeds=_TextEmbeds(text), attention_mask=mask)

    return MemoryEstimate(
        parameters=parameters, parameter_bytes=parameter_bytes, buffer_bytes=buffer_bytes, dtype="+".join(dtypes),
        activation_bytes=forward_peak_bytes(forward),
        workload=f"{size}x{size} px, {batch} concept{'s' if batch > 1 else ''} per detector pass"
                 + (f", {str(amp).replace('torch.', '')}" if amp is not None else ""),
        note="tracker's per-object decoding not included")


class Sam3SegmentationModel:
    """The SegmentationModel protocol (perception_fm.tasks.segmentation) over one Sam3VideoModel."""

    name = "sam3"

    def __init__(self, network, tokenizer, *, weights: str, device: str, options: Sam3Options = Sam3Options()):
        import torch

        self.weights = weights
        self.device = device
        self.options = options
        self.network = network.to(device).eval()
        self.detector = self.network.detector_model
        self.tracker = self.network.tracker_model
        self.tokenizer = tokenizer
        self._tokenizer_lock = threading.Lock()
        video_config = self.network.config
        tracker_config = self.tracker.config
        self.image_size = int(tracker_config.image_size)
        self.mask_size = tuple(int(v) for v in self.tracker.prompt_encoder.mask_input_size)
        self.max_tokens = int(self.detector.config.text_config.max_position_embeddings)
        self.capabilities = SegmentationCapabilities(mask_size=self.mask_size, max_concept_tokens=self.max_tokens,
                                                     point_prompts=True)
        self.score_threshold = float(options.score_threshold if options.score_threshold is not None
                                     else video_config.score_threshold_detection)
        self.nms_iou = float(options.nms_iou if options.nms_iou is not None else video_config.det_nms_thresh)
        self.fill_hole_area = int(options.fill_hole_area if options.fill_hole_area is not None
                                  else video_config.fill_hole_area)
        self.max_conditioning_frames = int(options.max_conditioning_frames)
        self.num_maskmem = int(tracker_config.num_maskmem)
        self.max_object_pointers = int(tracker_config.max_object_pointers_in_encoder)
        self.amp_dtype = self._choose_precision(options.precision)
        if options.precision in ("bf16", "fp16") and self.amp_dtype is not None:
            # asked explicitly: the weights are stored in the autocast dtype too (half the memory); "auto" is
            # upstream's fp32 weights under autocast
            self.network.to(self.amp_dtype)
        with torch.no_grad():
            self.image_positional_embeddings = self.tracker.get_image_wide_positional_embeddings()
        pad = tokenizer.pad_token_id
        self._pad_id = int(pad if pad is not None else tokenizer.eos_token_id)

    @classmethod
    def from_options(cls, options: ModelOptions) -> "Sam3SegmentationModel":
        sam3_options = Sam3Options.from_extra(options.extra)
        device = select_device(options.device)
        if options.random_weights:
            network = loading.random_network(device, sam3_options.image_size)
            tokenizer = loading.load_tokenizer(None)
            weights = loading.RANDOM_WEIGHTS
        else:
            source = options.weights or loading.HUB_ID
            directory = loading.resolve_weights(source, options)
            network = loading.load_network(directory, sam3_options.image_size)
            tokenizer = loading.load_tokenizer(directory)
            weights = source
        return cls(network, tokenizer, weights=weights, device=device, options=sam3_options)

    def _choose_precision(self, precision: str):
        return amp_dtype(precision, self.device)

    @contextlib.contextmanager
    def inference(self):
        """no_grad (outputs stay ordinary tensors) and the chosen autocast precision."""
        import torch

        with torch.no_grad():
            if self.amp_dtype is None:
                yield
            else:
                with torch.autocast(device_type=torch.device(self.device).type, dtype=self.amp_dtype):
                    yield

    # -- concepts -------------------------------------------------------------------------------------------

    def encode_concept(self, text: str) -> EncodedConcept:
        import torch

        if not isinstance(text, str) or not text.strip():
            raise BadInputError("concept", f"a concept must be a non-empty noun phrase, got {text!r}")
        phrase = " ".join(text.split())
        with self._tokenizer_lock:  # the tokenizer's padding state is not thread-safe
            ids = self.tokenizer(phrase)["input_ids"]
        if len(ids) > self.max_tokens:
            raise BadInputError(
                "concept",
                f"concept {phrase!r} is {len(ids)} tokens long (start and end tokens included); SAM 3's text "
                f"encoder takes at most {self.max_tokens}: use a shorter phrase",
            )
        padded = list(ids) + [self._pad_id] * (self.max_tokens - len(ids))
        mask = [1] * len(ids) + [0] * (self.max_tokens - len(ids))
        return EncodedConcept(
            text=phrase,
            input_ids=torch.tensor([padded], dtype=torch.long, device=self.device),
            attention_mask=torch.tensor([mask], dtype=torch.long, device=self.device),
            tokens=len(ids), owner=id(self),
        )

    def text_embeddings(self, concepts: list[EncodedConcept]) -> None:
        """Compute (batched) and cache the text features of the concepts that have none yet."""
        import torch

        todo = [c for c in concepts if c.embedding is None]
        if not todo:
            return
        with self.inference():
            features = self.detector.get_text_features(
                input_ids=torch.cat([c.input_ids for c in todo]),
                attention_mask=torch.cat([c.attention_mask for c in todo]), return_dict=True,
            ).pooler_output
        for i, concept in enumerate(todo):
            concept.embedding = features[i:i + 1]

    # -- frames ---------------------------------------------------------------------------------------------

    def preprocess(self, image: np.ndarray):
        """RGB uint8 (H, W, 3) -> (1, 3, S, S) on the device: resized (not cropped), (x / 255 - 0.5) / 0.5.

        The resize is the reference's (transformers' Sam3 image/video processors: torchvision's resize of the
        uint8 image, bilinear, antialiased, rounded back to uint8): on CPU torch's native uint8 kernel, which is
        what torchvision calls there; elsewhere float interpolation rounded to whole levels, which is
        torchvision's path on GPUs. A float resize without rounding differs from it by up to 2/255."""
        import torch
        import torch.nn.functional as F

        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            shape = getattr(image, "shape", None)
            raise BadInputError("encoding", f"SAM 3 takes RGB uint8 (H, W, 3) images, got "
                                            f"{getattr(image, 'dtype', type(image).__name__)} {shape}")
        height, width = image.shape[:2]
        if height < 2 or width < 2:
            raise BadInputError("empty", f"image of {width}x{height} pixels is too small")
        if not image.flags.c_contiguous or not image.flags.writeable:
            image = np.array(image, copy=True, order="C")
        pixels = torch.from_numpy(image).to(self.device, non_blocking=True).permute(2, 0, 1).unsqueeze(0)
        size = self.image_size
        if (height, width) != (size, size):
            if pixels.device.type == "cpu":
                pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False,
                                       antialias=True)
            else:
                pixels = F.interpolate(pixels.float(), size=(size, size), mode="bilinear", align_corners=False,
                                       antialias=True).round_().clamp_(0.0, 255.0)
        return pixels.float().mul_(2.0 / 255.0).sub_(1.0)

    def new_session(self, keep_all_history: bool = False):
        """A fresh tracking state. keep_all_history (tests, debugging only) never evicts anything, which
        makes memory grow with the stream; results are the same."""
        from perception_fm.plugins.sam3.session import Sam3TrackingSession

        return Sam3TrackingSession(self, evict=not keep_all_history)

    def encode_frames(self, images: list[np.ndarray]) -> list:
        """Several images (a camera rig's group) through the backbone in one batched pass; each result goes to
        its own stream's session.add_encoded_frame. Optional in the SegmentationModel protocol."""
        from perception_fm.plugins.sam3.session import encode_frames

        return encode_frames(self, images)

    def warmup(self, size: tuple[int, int] = (480, 640)) -> float:
        """One frame through every operation (allocations, kernel selection); returns its time in ms."""
        import time

        started = time.perf_counter()
        session = self.new_session()
        frame = session.add_frame(np.zeros((*size, 3), np.uint8))
        session.detect(frame, {1: self.encode_concept("object")})
        mask = np.zeros(self.mask_size, np.float32)
        mask[: self.mask_size[0] // 2, : self.mask_size[1] // 2] = 1.0
        import torch

        session.add_objects(frame, {1: torch.from_numpy(mask).to(self.device)})
        frame = session.add_frame(np.zeros((*size, 3), np.uint8))
        propagation = session.propagate(frame)
        session.commit(frame, dict(zip(propagation.obj_ids, propagation.masks)))
        propagation.masks.cpu()
        return (time.perf_counter() - started) * 1e3
