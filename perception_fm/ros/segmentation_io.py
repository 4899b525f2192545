"""The ROS side of concept segmentation, shared by the concept node and the offline replay: parameters →
tracker, image (+ time-synced depth) → tracker → InstanceArray, label image, overlay and markers."""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass

import cv2
import numpy as np
from geometry_msgs.msg import Point, Vector3
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, RegionOfInterest
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from perception_fm.core.masks import label_image, mask_boxes, rle_encode
from perception_fm.geometry.camera import pixel_rays
from perception_fm.msg import Instance, InstanceArray
from perception_fm.nodes.params import IMAGE_PARAMS, Param
from perception_fm.pipelines.concept_tracker import ConceptTracker, TrackerConfig, TrackerFrame
from perception_fm.pipelines.concepts import ConceptSet
from perception_fm.ros.camera_info import camera_info_to_intrinsics
from perception_fm.ros.image_codec import compressed_to_rgb8, image_to_numpy, image_to_rgb8, numpy_to_image
from perception_fm.ros.qos import PROFILES

_DEFAULTS = TrackerConfig()

# Parameters of the concept node (besides MODEL_PARAMS); the replay reads the same.
CONCEPT_PARAMS = (
    # model-specific (a change reloads the model)
    Param("image_size", 0, "Side of the square image the model works at; 0 = the checkpoint's (1008 for SAM 3). "
                           "Smaller is faster and coarser.", min=0, max=4096),
    Param("max_conditioning_frames", 4, "Conditioning frames each object keeps in memory (first + most recent).",
          min=1, max=64),
    # concepts
    Param("concepts", "", "Concepts to segment from the start, comma-separated noun phrases (e.g. "
                          "\"red mug, chair\"). Change them at runtime on `concepts` or ~/set_concepts."),
    Param("max_concepts", 32, "Most concepts at once.", min=1, max=256),
    # tracker (defaults: SAM 3's video configuration)
    Param("detect_every", _DEFAULTS.detect_every, "Run the detector every n-th frame (the tracker propagates "
                                                  "every frame).", min=1),
    Param("confirmation_frames", _DEFAULTS.confirmation_frames, "Frames a new track must live before it is "
                                                                "published (hot-start).", min=0),
    Param("max_unmatched_tentative", _DEFAULTS.max_unmatched_tentative, "A not yet confirmed track unmatched "
                                                                        "this often is removed.", min=1),
    Param("duplicate_frames", _DEFAULTS.duplicate_frames, "A not yet confirmed track sharing a detection with an "
                                                          "older one this often is removed.", min=1),
    Param("keep_alive", _DEFAULTS.keep_alive, "Frames a track survives unmatched (kept as lost), at most.", min=1),
    Param("recondition_every", _DEFAULTS.recondition_every, "Re-anchor confirmed tracks on confident detections "
                                                            "every n-th frame (0 = never).", min=0),
    Param("new_track_score", _DEFAULTS.new_track_score, "Detection score that may start a track.", min=0.0, max=1.0),
    Param("track_match_iou", _DEFAULTS.track_match_iou, "Mask IoU for a detection to match a track.",
          min=0.0, max=1.0),
    Param("association_iou", _DEFAULTS.association_iou, "A detection overlapping a track this much starts no "
                                                        "new track.", min=0.0, max=1.0),
    Param("recondition_score", _DEFAULTS.recondition_score, "Detection score needed to re-anchor.", min=0.0, max=1.0),
    Param("recondition_iou", _DEFAULTS.recondition_iou, "Mask IoU needed to re-anchor.", min=0.0, max=1.0),
    Param("recondition_tracker_score", _DEFAULTS.recondition_tracker_score, "Tracker score (visibility "
          "probability) a track needs to be re-anchored (SAM 3: object-score logit > 0.8).", min=0.0, max=1.0),
    Param("recondition_on", _DEFAULTS.recondition_on, "Memory of a re-anchored track: its own tracker mask "
          "(transformers' default) or the detection's binarised mask (Meta's sam3).", choices=("tracker", "detection")),
    Param("shrink_threshold", _DEFAULTS.shrink_threshold, "Memory: a track keeping less than this share of its "
          "area when each pixel goes to one track of its concept is blanked for that frame (0 = off).",
          min=0.0, max=1.0),
    Param("occlusion_iou", _DEFAULTS.occlusion_iou, "Of two tracks of one concept overlapping by this mask IoU, the "
          "one occluded more recently is hidden for the frame (SAM 3's rule; 0 = off).", min=0.0, max=1.0),
    Param("non_overlapping_outputs", _DEFAULTS.non_overlapping_outputs, "Masks of one concept are disjoint (a "
          "pixel goes to the track of higher tracker score)."),
    Param("max_objects", _DEFAULTS.max_objects, "Most tracks at once.", min=1),
    Param("mask_threshold", _DEFAULTS.mask_threshold, "Probability above which a pixel is in a mask.",
          min=0.0, max=1.0),
    # outputs
    Param("publish_labels", True, "Publish instances/labels (id per pixel)."),
    Param("label_encoding", "mono16", "Encoding of the label image: mono16 or 32SC1.", choices=("mono16", "32SC1")),
    Param("publish_overlay", True, "Publish instances/overlay (colour per id, id and concept drawn)."),
    Param("overlay_alpha", 0.5, "Opacity of the overlay's masks.", min=0.0, max=1.0),
    Param("publish_markers", True, "Publish instances/markers (3D boxes and labels; needs depth)."),
    Param("use_depth", False, "Subscribe depth/image + depth/camera_info (e.g. from depth_node) and give each "
                              "instance a 3D centroid and extent.", read_only=True),
    Param("depth_wait", 0.1, "Seconds an image waits for the depth frame of its stamp (in any arrival order); "
                             "then it goes on without positions (counted no_depth).", min=0.0, max=60.0),
    # transport
    Param("image_transport", "raw", "raw: `image`; compressed: `image/compressed`.", choices=("raw", "compressed"),
          read_only=True),
    Param("input_qos", "sensor_data", "QoS of the image subscription.", choices=PROFILES, read_only=True),
    Param("output_qos", "reliable", "QoS of the published topics.", choices=PROFILES, read_only=True),
    *IMAGE_PARAMS,
)
MODEL_EXTRA_PARAMS = ("image_size", "max_conditioning_frames")

TOPIC_INSTANCES = "instances"
TOPIC_LABELS = "instances/labels"
TOPIC_OVERLAY = "instances/overlay"
TOPIC_MARKERS = "instances/markers"
TOPIC_CONCEPTS = "concepts"
TOPIC_DEPTH = "depth/image"
TOPIC_DEPTH_CAMERA_INFO = "depth/camera_info"


def tracker_config(values: dict) -> TrackerConfig:
    return TrackerConfig(**{name: values[name] for name in TrackerConfig.__dataclass_fields__})


def color_of(instance_id: int) -> tuple[int, int, int]:
    """A stable, distinct-looking RGB colour per id."""
    hue = (zlib.crc32(str(instance_id).encode()) % 180)
    hsv = np.array([[[hue, 200, 255]]], np.uint8)
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


@dataclass
class DepthFrame:
    depth: np.ndarray  # (h, w) float32
    K: np.ndarray
    frame_id: str
    is_metric: bool = False


@dataclass
class SegmentationMessages:
    instances: InstanceArray
    labels: Image | None
    overlay: Image | None
    markers: MarkerArray | None


class SegmentationFrameHandler:
    """One camera stream through the concept tracker. Concepts change through `concepts` (thread-safe);
    `handle` runs in one thread (the node's worker, or the replay loop)."""

    def __init__(self, model, values: dict, tracker=None):
        """`tracker`: what steps the frames (default: a ConceptTracker on a new session of the model; a camera
        rig gives its ConceptRig, perception_fm.ros.concept_rig_io)."""
        self.model = model
        self.values = values
        self.concepts = ConceptSet(model.encode_concept, max_concepts=values["max_concepts"])
        if values["concepts"].strip():
            self.concepts.add([p for p in values["concepts"].split(",") if p.strip()])
        self.tracker = tracker if tracker is not None else ConceptTracker(model.new_session(), tracker_config(values))
        self._active: set[int] = set(self.concepts.snapshot())
        self.last_size: tuple[int, int] | None = None

    def sync_concepts(self) -> dict:
        """Current concepts; tracks of removed concepts are dropped (in this, the tracker's thread)."""
        concepts = self.concepts.snapshot()
        gone = self._active - set(concepts)
        if gone:
            self.tracker.drop_concepts(gone)
        self._active = set(concepts)
        return concepts

    def decode(self, message) -> np.ndarray:
        limit = self.values["max_image_pixels"]
        return compressed_to_rgb8(message, limit) if isinstance(message, CompressedImage) \
            else image_to_rgb8(message, limit)

    def handle(self, message, depth: DepthFrame | None = None) -> tuple[TrackerFrame, SegmentationMessages] | None:
        """None when there is nothing to look for (no concept and no track): the model does not run."""
        concepts = self.sync_concepts()
        if not concepts and not self.tracker.tracks:
            return None
        rgb = self.decode(message)
        started = time.perf_counter()
        frame = self.tracker.step(rgb, concepts)
        masks = self._full_resolution(frame, rgb.shape[:2])
        inference_ms = (time.perf_counter() - started) * 1e3
        self.last_size = rgb.shape[:2]
        return frame, self._messages(message.header, rgb, frame, masks, concepts, depth, inference_ms)

    def _full_resolution(self, frame: TrackerFrame, size: tuple[int, int]) -> np.ndarray:
        """(K, H, W) bool masks at the input image's size (one upsampling on the device, one copy to host)."""
        import torch
        import torch.nn.functional as F

        if not frame.instances:
            return np.zeros((0, *size), bool)
        stacked = torch.stack([instance.mask for instance in frame.instances]).float()
        upsampled = F.interpolate(stacked[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        return (upsampled > self.values["mask_threshold"]).cpu().numpy()

    def _messages(self, header, rgb, frame: TrackerFrame, masks, concepts, depth, inference_ms):
        values = self.values
        height, width = rgb.shape[:2]
        boxes = mask_boxes(masks)
        positions = self._positions(masks, depth) if depth is not None else [None] * len(masks)
        array = InstanceArray(header=header, height=height, width=width, model=self.model.name,
                              weights=self.model.weights, inference_ms=float(inference_ms))
        ordered = sorted(concepts.values(), key=lambda c: c.prompt_id)
        array.concepts = [c.text for c in ordered]
        array.prompt_ids = [c.prompt_id for c in ordered]
        array.depth_is_metric = depth is not None and depth.is_metric
        for instance, mask, box, position in zip(frame.instances, masks, boxes, positions):
            message = Instance(id=instance.id, concept=instance.concept, prompt_id=instance.prompt_id,
                               state=instance.state, score=float(instance.score),
                               tracker_score=float(instance.tracker_score), age=int(instance.age))
            message.box = RegionOfInterest(x_offset=int(box[0]), y_offset=int(box[1]),
                                           width=int(box[2] - box[0]), height=int(box[3] - box[1]))
            message.mask_rle = rle_encode(mask).tolist()
            message.mask_area = int(mask.sum())
            if position is not None:
                centre, extent = position
                message.has_position = True
                message.position = Point(x=float(centre[0]), y=float(centre[1]), z=float(centre[2]))
                message.extent = Vector3(x=float(extent[0]), y=float(extent[1]), z=float(extent[2]))
            array.instances.append(message)
        labels = overlay = markers = None
        if values["publish_labels"] or values["publish_overlay"]:
            # which instance is on top at each pixel, as its position in frame.instances + 1 (0 = none); ids and
            # colours are looked up from it, so every table is as long as the instance list, whatever ids are
            # hidden (an empty mask, one wholly under another) and however large ids grow
            scores = np.array([i.tracker_score for i in frame.instances], np.float32)
            slots = label_image(masks, np.arange(1, len(masks) + 1), scores, dtype=np.int32)
            if values["publish_labels"]:
                dtype = np.uint16 if values["label_encoding"] == "mono16" else np.int32
                ids = np.array([0] + [i.id for i in frame.instances], np.int64).astype(dtype)
                labels = numpy_to_image(ids[slots], values["label_encoding"], header)
            if values["publish_overlay"]:
                overlay = numpy_to_image(self._overlay(rgb, slots, frame, boxes), "rgb8", header)
        if values["publish_markers"] and depth is not None:
            markers = self._markers(header, depth.frame_id, frame, positions)
        return SegmentationMessages(array, labels, overlay, markers)

    def _overlay(self, rgb, slots, frame: TrackerFrame, boxes) -> np.ndarray:
        """`slots`: (H, W) position + 1 in frame.instances of the instance on top (0 = none)."""
        alpha = self.values["overlay_alpha"]
        palette = np.array([(0, 0, 0)] + [color_of(instance.id) for instance in frame.instances], np.float32)
        colours = palette[slots]  # (H, W, 3) lookup
        covered = (slots > 0)[..., None]
        out = np.where(covered, (1 - alpha) * rgb + alpha * colours, rgb).astype(np.uint8)
        for instance, box in zip(frame.instances, boxes):
            if box[2] <= box[0]:
                continue
            colour = color_of(instance.id)
            cv2.rectangle(out, (int(box[0]), int(box[1])), (int(box[2]) - 1, int(box[3]) - 1), colour, 1)
            cv2.putText(out, f"{instance.id} {instance.concept}", (int(box[0]), max(int(box[1]) - 3, 10)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
        return out

    def _positions(self, masks: np.ndarray, depth: DepthFrame):
        """Per mask: (centroid, extent) of its points in the depth's optical frame, or None. The mask is
        sampled at the depth image's pixel centres; centroid = per-axis median, extent = 5-95 % range."""
        dh, dw = depth.depth.shape
        if len(masks) == 0:
            return []
        height, width = masks.shape[1:]
        rows = np.minimum(((np.arange(dh) + 0.5) * height / dh).astype(np.int64), height - 1)
        cols = np.minimum(((np.arange(dw) + 0.5) * width / dw).astype(np.int64), width - 1)
        sampled = masks[:, rows][:, :, cols]  # (K, dh, dw)
        valid_depth = np.isfinite(depth.depth) & (depth.depth > 0)
        points = pixel_rays(dh, dw, depth.K) * np.where(valid_depth, depth.depth, 0)[..., None]
        results = []
        for mask in sampled:
            selected = points[mask & valid_depth]
            if len(selected) < 3:
                results.append(None)
                continue
            low, high = np.percentile(selected, [5, 95], axis=0)
            results.append((np.median(selected, axis=0), high - low))
        return results

    def _markers(self, header, frame_id: str, frame: TrackerFrame, positions) -> MarkerArray:
        markers = MarkerArray()
        clear = Marker(action=Marker.DELETEALL)
        clear.header = header
        markers.markers.append(clear)
        for instance, position in zip(frame.instances, positions):
            if position is None:
                continue
            centre, extent = position
            r, g, b = (c / 255 for c in color_of(instance.id))
            for kind, marker_id in ((Marker.CUBE, 2 * instance.id), (Marker.TEXT_VIEW_FACING, 2 * instance.id + 1)):
                marker = Marker(type=kind, action=Marker.ADD, id=marker_id, ns="instances")
                marker.header.stamp = header.stamp
                marker.header.frame_id = frame_id or header.frame_id
                marker.pose.position = Point(x=float(centre[0]), y=float(centre[1]), z=float(centre[2]))
                marker.pose.orientation.w = 1.0
                if kind == Marker.CUBE:
                    marker.scale = Vector3(x=max(float(extent[0]), 1e-3), y=max(float(extent[1]), 1e-3),
                                           z=max(float(extent[2]), 1e-3))
                    marker.color = ColorRGBA(r=r, g=g, b=b, a=0.35)
                else:
                    marker.text = f"{instance.id}: {instance.concept}"
                    marker.pose.position.y -= float(extent[1]) / 2 + 0.05  # above the box (optical y is down)
                    marker.scale.z = 0.08
                    marker.color = ColorRGBA(r=r, g=g, b=b, a=1.0)
                markers.markers.append(marker)
        return markers


def depth_frame(depth_image: Image, camera_info: CameraInfo, is_metric: bool) -> DepthFrame:
    """A depth image (32FC1) with its camera_info, for instance positions."""
    return DepthFrame(image_to_numpy(depth_image).astype(np.float32, copy=False),
                      camera_info_to_intrinsics(camera_info).K, depth_image.header.frame_id, is_metric)


# -- depth pairing (use_depth): the same pairer in the node and in the replay --------------------------------

DEPTH = "depth"
DEPTH_CAMERA_INFO = "depth_camera_info"


def depth_pairer(values: dict, clock, *, on_event, on_drop, max_pending: int = 32):
    """Images (frames) wait `depth_wait` for the depth frame of their stamp (with use_depth; otherwise they
    leave at once). Without it a frame goes on without positions, counted no_depth."""
    from perception_fm.core.stamp_pairing import PairedInput, StampPairer

    inputs = []
    if values["use_depth"]:
        inputs = [PairedInput(DEPTH, wait_s=values["depth_wait"], capacity=8),
                  PairedInput(DEPTH_CAMERA_INFO, wait_s=values["depth_wait"], latest_fallback=True, capacity=8)]
    return StampPairer(inputs, clock, max_pending=max_pending, on_event=on_event, on_drop=on_drop)


def update_depth_waits(pairer, values: dict) -> None:
    for name in pairer.inputs:
        pairer.set_wait(name, values["depth_wait"])


def paired_depth(paired, is_metric: bool) -> DepthFrame | None:
    """The depth frame of a released image, or None (the pairer counted why)."""
    depth_image, info = paired.inputs.get(DEPTH), paired.inputs.get(DEPTH_CAMERA_INFO)
    if depth_image is None or info is None:
        return None
    return depth_frame(depth_image, info, is_metric)
