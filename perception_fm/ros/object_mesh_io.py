"""The ROS side of object meshes, shared by the object mesh node and the offline replay: tracked instances,
paired by stamp with their image, camera_info and depth (perception_fm.ros.pairing.instances_pairer, the
same pairer live and offline) (+ TF) → lift jobs; a lifted object → ObjectMesh, markers (bytes, see marker_codec) and a
static TF frame object_<id> in the fixed frame."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from geometry_msgs.msg import Point, TransformStamped
from shape_msgs.msg import Mesh as MeshMessage
from shape_msgs.msg import MeshTriangle
from std_msgs.msg import ColorRGBA, Header

from perception_fm.core.masks import rle_decode
from perception_fm.core.stamp_pairing import Paired
from perception_fm.errors import BadInputError
from perception_fm.geometry.camera import pixel_rays
from perception_fm.geometry.mesh import export_meshes
from perception_fm.msg import ObjectMesh
from perception_fm.nodes.params import IMAGE_PARAMS, Param
from perception_fm.pipelines.object_lifting import LiftedObject, LiftJob, LiftPolicy, ObjectLifter
from perception_fm.ros import marker_codec
from perception_fm.ros.qos import PROFILES
from perception_fm.ros import pairing
from perception_fm.ros.segmentation_io import DepthFrame, color_of, depth_frame
from perception_fm.ros.tf import make_transform, matrix_to_pose, ns_to_time, stamp_to_ns
from perception_fm.tasks.object_mesh import ObjectMeshRequest

_POLICY = LiftPolicy()

OBJECT_PARAMS = (
    Param("sampling_steps", 0, "Sampling steps of the generator (fewer = faster, coarser; 0 = the model's "
                               "default).", min=0, max=1000),
    Param("concepts", "", "Lift only instances of these concepts (comma-separated); empty = every concept."),
    Param("min_mask_area", _POLICY.min_mask_area, "Smallest mask (pixels) worth lifting.", min=1),
    Param("max_objects", _POLICY.max_objects, "Most objects kept (and lifted) at once.", min=1),
    Param("relift_iou", _POLICY.relift_iou, "Lift a track again when its mask's IoU with the lifted mask falls "
                                            "below this (0 = never).", min=0.0, max=1.0),
    Param("relift_interval", _POLICY.relift_interval, "Frames between two lifts of one track, at least.", min=1),
    Param("max_faces", _POLICY.max_faces, "Meshes are decimated to this many faces.", min=4),
    Param("use_depth", False, "Condition the layout on depth/image + depth/camera_info (a pointmap), e.g. from "
                              "depth_node.", read_only=True),
    Param("depth_wait", 0.2, "Seconds instances wait for the depth frame of their stamp (then go on without "
                             "depth, counted no_depth).", min=0.0, max=60.0),
    Param("image_wait", 0.2, "Seconds instances wait for the image and camera_info of their stamp, and for TF "
                             "fixed_frame <- camera at it (without the image they are not used, counted "
                             "no_image_for_instances; without TF see fixed_frame).", min=0.0, max=60.0),
    Param("fixed_frame", "odom", "Frame objects are placed in, from TF at the lifted stamp. Empty, or no TF: "
                                 "the camera frame at that moment."),
    Param("export_dir", "", "Also write each object's mesh (GLB) here; markers then use MESH_RESOURCE."),
    Param("image_transport", "raw", "raw: `image`; compressed: `image/compressed`.", choices=("raw", "compressed"),
          read_only=True),
    Param("input_qos", "sensor_data", "QoS of the image subscription.", choices=PROFILES, read_only=True),
    *IMAGE_PARAMS,
)
MODEL_EXTRA_PARAMS = ()

TOPIC_INSTANCES = "instances"
TOPIC_OBJECTS = "objects"
TOPIC_MARKERS = "objects/markers"
TOPIC_DEPTH = "depth/image"
TOPIC_DEPTH_CAMERA_INFO = "depth/camera_info"


def policy_from(values: dict) -> LiftPolicy:
    concepts = frozenset(c.strip().lower() for c in values["concepts"].split(",") if c.strip())
    return LiftPolicy(concepts=concepts, min_mask_area=values["min_mask_area"], max_objects=values["max_objects"],
                      relift_iou=values["relift_iou"], relift_interval=values["relift_interval"],
                      max_faces=values["max_faces"])


def pointmap(depth: DepthFrame, size: tuple[int, int], K: np.ndarray | None) -> np.ndarray:
    """(H, W, 3) camera-frame points at the image's size from a depth frame (nearest resampling); NaN where
    the depth is invalid. K: the image's intrinsics (else the depth's, rescaled)."""
    height, width = size
    dh, dw = depth.depth.shape
    if K is None:
        K = depth.K.copy()
        K[0] *= width / dw
        K[1] *= height / dh
    z = cv2.resize(depth.depth, (width, height), interpolation=cv2.INTER_NEAREST)
    z = np.where(np.isfinite(z) & (z > 0), z, np.nan).astype(np.float32)
    return pixel_rays(height, width, K) * z[..., None]


@dataclass
class ObjectMessages:
    object: ObjectMesh
    markers: bytes  # serialised visualization_msgs/MarkerArray: every object
    transforms: list[TransformStamped]  # static: fixed frame -> object_<id>, every object


class ObjectMeshHandler:
    def __init__(self, model, values: dict, on_event=lambda name: None):
        self.model = model
        self.values = values
        self._on_event = on_event
        self.lifter = ObjectLifter(model, policy_from(values))
        self.frame = 0
        self.latest: dict[int, tuple] = {}  # id -> (instance, image, depth, K, pose, stamp): for ~/lift_object
        self.requested: set[int] = set()

    def select_paired(self, paired: Paired, tf_lookup) -> list[LiftJob]:
        """Lift jobs for a released InstanceArray (perception_fm.ros.pairing.instances_pairer); none without
        its image (the pairer counted that). tf_lookup(target, source, stamp_ns) -> T_target_source or None. Raises BadInputError for arrays that do not fit their image."""
        array = paired.frame
        if not array.instances:
            return []
        found = pairing.paired_image(paired, self.values["max_image_pixels"])
        if found is None:
            return []
        image, image_message, K = found
        depth_image, depth_info = paired.inputs.get(pairing.DEPTH), paired.inputs.get(pairing.DEPTH_CAMERA_INFO)
        depth = depth_frame(depth_image, depth_info, True) if depth_image is not None and depth_info is not None \
            else None
        fixed, image_frame = self.values["fixed_frame"], image_message.header.frame_id
        pose, parent = (tf_lookup(fixed, image_frame, paired.stamp_ns) if fixed else None), fixed
        if pose is None:
            if fixed:
                self._on_event("no_fixed_frame_tf")
            pose, parent = np.eye(4), image_frame
        try:
            return self.select(array, image, depth, K, pose, parent)
        except ValueError as error:
            raise BadInputError("instances", str(error)) from error

    def select(self, array, image: np.ndarray, depth: DepthFrame | None, K: np.ndarray | None,
               fixed_from_camera: np.ndarray, parent_frame: str) -> list[LiftJob]:
        """Lift jobs for the instances of one InstanceArray (subscription side: only RLE decoding)."""
        self.frame += 1
        if image.shape[:2] != (array.height, array.width):
            raise ValueError(f"instances are for {array.width}x{array.height}, the image is "
                             f"{image.shape[1]}x{image.shape[0]}")
        stamp = stamp_to_ns(array.header.stamp)
        jobs = []
        seen = set()
        points = None
        for instance in array.instances:
            seen.add(instance.id)
            mask = rle_decode(np.asarray(instance.mask_rle), array.height, array.width)
            requested = instance.id in self.requested
            self.latest[instance.id] = (instance, mask, image, depth, K, fixed_from_camera, parent_frame, stamp)
            if not self.lifter.wanted(instance.id, instance.concept, instance.state, mask, self.frame, requested):
                continue
            if depth is not None and points is None:
                points = pointmap(depth, image.shape[:2], K)
            jobs.append(self._job(instance, mask, image, points, K, fixed_from_camera, parent_frame, stamp))
            self.requested.discard(instance.id)
        for instance_id in list(self.latest):
            if instance_id not in seen:  # bounded: only tracks of the newest array
                del self.latest[instance_id]
        return jobs

    def _job(self, instance, mask, image, points, K, fixed_from_camera, parent_frame, stamp) -> LiftJob:
        steps = self.values["sampling_steps"] or None
        request = ObjectMeshRequest(image=image, mask=mask, pointmap=points, intrinsics=K, steps=steps)
        self.lifter.claim(instance.id)
        return LiftJob(instance.id, instance.concept, self.frame, stamp, request, fixed_from_camera, parent_frame)

    def request(self, instance_id: int) -> LiftJob | None:
        """~/lift_object: a job from the newest frame the track was seen in (None if it was not)."""
        latest = self.latest.get(instance_id)
        if latest is None:
            return None
        instance, mask, image, depth, K, pose, parent_frame, stamp = latest
        self.lifter.release(instance_id)
        points = pointmap(depth, image.shape[:2], K) if depth is not None else None
        return self._job(instance, mask, image, points, K, pose, parent_frame, stamp)

    def run(self, job: LiftJob) -> tuple[LiftedObject, ObjectMessages]:
        lifted = self.lifter.lift(job)
        mesh_file = ""
        if self.values["export_dir"]:
            mesh_file = str(export_meshes([lifted.mesh], Path(self.values["export_dir"]) / f"object_{lifted.id}.glb"))
        return lifted, ObjectMessages(self._object_message(lifted, mesh_file), self.markers(), self.transforms())

    def _object_message(self, lifted: LiftedObject, mesh_file: str) -> ObjectMesh:
        header = Header(stamp=ns_to_time(lifted.stamp_ns), frame_id=lifted.parent_frame)
        mesh = MeshMessage()
        mesh.vertices = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in lifted.mesh.vertices.tolist()]
        mesh.triangles = [MeshTriangle(vertex_indices=face) for face in lifted.mesh.faces.tolist()]
        colors = lifted.mesh.colors if lifted.mesh.colors is not None else np.full((len(lifted.mesh.vertices), 3), 200)
        message = ObjectMesh(
            header=header, id=lifted.id, concept=lifted.concept, pose=matrix_to_pose(lifted.fixed_from_object),
            mesh=mesh, mesh_file=mesh_file, model=self.model.name, weights=self.model.weights,
            used_pointmap=lifted.used_pointmap, sampling_steps=lifted.steps, inference_ms=float(lifted.inference_ms),
            vertex_colors=[ColorRGBA(r=r / 255, g=g / 255, b=b / 255, a=1.0) for r, g, b in colors.tolist()])
        message.scale.x, message.scale.y, message.scale.z = (float(v) for v in np.broadcast_to(lifted.scale, 3))
        return message

    def markers(self) -> bytes:
        """Every object: a mesh (TRIANGLE_LIST, or MESH_RESOURCE when exported) in object_<id> and a label."""
        specs = [marker_codec.MarkerSpec(frame_id="", stamp=(0, 0), action=marker_codec.DELETEALL)]
        for lifted in self.lifter.snapshot():
            frame = f"object_{lifted.id}"
            stamp = ns_to_time(lifted.stamp_ns)
            stamp = (stamp.sec, stamp.nanosec)
            if self.values["export_dir"]:
                spec = marker_codec.MarkerSpec(
                    frame_id=frame, stamp=stamp, ns="objects", id=2 * lifted.id, type=marker_codec.MESH_RESOURCE,
                    mesh_resource=f"file://{Path(self.values['export_dir']).resolve()}/object_{lifted.id}.glb")
            else:
                points, colors = marker_codec.triangle_list(lifted.mesh.vertices, lifted.mesh.faces,
                                                            lifted.mesh.colors)
                spec = marker_codec.MarkerSpec(frame_id=frame, stamp=stamp, ns="objects", id=2 * lifted.id,
                                               type=marker_codec.TRIANGLE_LIST, points=points, colors=colors,
                                               color=(1.0, 1.0, 1.0, 1.0))
            top = float(lifted.mesh.vertices[:, 1].min()) if len(lifted.mesh.vertices) else 0.0
            r, g, b = (c / 255 for c in color_of(lifted.id))
            label = marker_codec.MarkerSpec(frame_id=frame, stamp=stamp, ns="object_labels", id=2 * lifted.id + 1,
                                            type=marker_codec.TEXT_VIEW_FACING, position=(0.0, top - 0.05, 0.0),
                                            scale=(0.0, 0.0, 0.08), color=(r, g, b, 1.0),
                                            text=f"{lifted.id}: {lifted.concept}")
            specs += [spec, label]
        return marker_codec.encode_marker_array(specs)

    def transforms(self) -> list[TransformStamped]:
        return [make_transform(lifted.fixed_from_object, lifted.parent_frame, f"object_{lifted.id}",
                               ns_to_time(lifted.stamp_ns)) for lifted in self.lifter.snapshot()]

    def export(self, path: str) -> tuple[Path, int]:
        """Every object in its parent frame (the fixed frame when TF placed them), as one file."""
        meshes = [lifted.mesh.transformed(lifted.fixed_from_object) for lifted in self.lifter.snapshot()]
        return export_meshes(meshes, path), len(meshes)
