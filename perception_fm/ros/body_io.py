"""The ROS side of human body meshes, shared by the body node and the offline replay: people among tracked
instances, paired by stamp with their image and camera_info (perception_fm.ros.pairing.instances_pairer, the
same pairer live and offline) → HumanMesh messages, markers (mesh, skeleton, labels; bytes) and a TF frame per person."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from geometry_msgs.msg import Point, TransformStamped

from perception_fm.core.masks import rle_decode
from perception_fm.core.stamp_pairing import Paired
from perception_fm.msg import HumanMesh
from perception_fm.nodes.params import IMAGE_PARAMS, Param
from perception_fm.pipelines.body_tracking import BodyConfig, BodyTracker, Person
from perception_fm.ros import marker_codec, pairing
from perception_fm.ros.qos import PROFILES
from perception_fm.ros.segmentation_io import color_of
from perception_fm.ros.tf import make_transform, stamp_to_ns

_CONFIG = BodyConfig()

BODY_PARAMS = (
    Param("person_concepts", "person", "Instances of these concepts (comma-separated) are people."),
    Param("min_box_area", _CONFIG.min_box_area, "Smallest person box (pixels) to estimate.", min=1),
    Param("max_people", _CONFIG.max_people, "Most people estimated per frame (largest boxes first).", min=1),
    Param("use_masks", _CONFIG.use_masks, "Give the model each person's mask too."),
    Param("smoothing", _CONFIG.smoothing, "Filter each track's body parameters over time (One Euro filter)."),
    Param("min_cutoff", _CONFIG.min_cutoff, "Filter cutoff at rest, Hz (lower: smoother).", min=0.001),
    Param("beta", _CONFIG.beta, "Filter speed coefficient (higher: less lag when moving).", min=0.0),
    Param("forget_after", _CONFIG.forget_after_s, "Seconds after which an unseen track's filter is dropped.",
          min=0.0),
    Param("marker_max_faces", _CONFIG.marker_max_faces, "Faces of the mesh marker (decimated once).", min=4),
    Param("publish_mesh", True, "Publish the body mesh marker (TRIANGLE_LIST)."),
    Param("publish_skeleton", True, "Publish skeleton markers (bones and joints)."),
    Param("publish_tf", True, "Publish TF <image frame> -> person_<id> at each person's root joint (oriented "
                              "like the root where the model reports it, else like the camera)."),
    Param("image_wait", 0.2, "Seconds instances wait for the image and camera_info of their stamp (without "
                             "the image they are not used, counted no_image_for_instances).", min=0.0, max=60.0),
    Param("image_transport", "raw", "raw: `image`; compressed: `image/compressed`.", choices=("raw", "compressed"),
          read_only=True),
    Param("input_qos", "sensor_data", "QoS of the image subscription.", choices=PROFILES, read_only=True),
    *IMAGE_PARAMS,
)
MODEL_EXTRA_PARAMS = ()

TOPIC_INSTANCES = "instances"
TOPIC_BODIES = "bodies"
TOPIC_MARKERS = "bodies/markers"


def body_config(values: dict) -> BodyConfig:
    return BodyConfig(person_concepts=frozenset(c.strip().lower() for c in values["person_concepts"].split(",")
                                                if c.strip()),
                      min_box_area=values["min_box_area"], max_people=values["max_people"],
                      use_masks=values["use_masks"], smoothing=values["smoothing"], min_cutoff=values["min_cutoff"],
                      beta=values["beta"], forget_after_s=values["forget_after"],
                      marker_max_faces=values["marker_max_faces"])


@dataclass
class BodyMessages:
    bodies: list[HumanMesh]
    markers: bytes | None  # serialised MarkerArray
    transforms: list[TransformStamped]


class BodyFrameHandler:
    def __init__(self, model, values: dict):
        self.model = model
        self.values = values
        self.tracker = BodyTracker(model, body_config(values))
        parents = np.asarray(model.joint_parents)
        self._bones = np.array([(j, p) for j, p in enumerate(parents) if p >= 0], np.int64).reshape(-1, 2)
        self._root = int(np.flatnonzero(parents < 0)[0]) if (parents < 0).any() else 0

    def handle_paired(self, paired: Paired) -> tuple[float | None, BodyMessages | None]:
        """(model time in ms, messages) for a released InstanceArray; (None, None) when the model need not
        run: nobody in it, or its image never came (the pairer counted that)."""
        array = paired.frame
        if not self.tracker.people(array.instances):
            return None, None
        found = pairing.paired_image(paired, self.values["max_image_pixels"])
        if found is None:
            return None, None
        image, _, K = found
        started = time.perf_counter()
        _, messages = self.handle(array, image, K)
        return (time.perf_counter() - started) * 1e3, messages

    def handle(self, array, image: np.ndarray, intrinsics) -> tuple[list[Person], BodyMessages]:
        people = self.tracker.people(array.instances)
        masks = None
        if people and self.values["use_masks"]:
            masks = np.stack([rle_decode(np.asarray(p.mask_rle), array.height, array.width) for p in people])
        stamp_ns = stamp_to_ns(array.header.stamp)
        persons = self.tracker.step(image, people, masks, intrinsics, stamp_ns * 1e-9)
        return persons, self._messages(array.header, persons)

    def _messages(self, header, persons: list[Person]) -> BodyMessages:
        model = self.model
        bodies = []
        for person in persons:
            estimate = person.estimate
            message = HumanMesh(header=header, track_id=person.track_id, smoothed=person.smoothed,
                                joint_names=list(model.joint_names), keypoint_names=list(model.keypoint_names))
            message.param_names = list(estimate.params)
            message.param_sizes = [int(np.asarray(v).size) for v in estimate.params.values()]
            message.param_values = np.concatenate([np.asarray(v, np.float32).ravel()
                                                   for v in estimate.params.values()]).tolist()
            message.camera_translation.x, message.camera_translation.y, message.camera_translation.z = (
                float(v) for v in estimate.camera_translation)
            message.joints = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in estimate.joints.tolist()]
            message.keypoints_3d = [Point(x=float(x), y=float(y), z=float(z))
                                    for x, y, z in estimate.keypoints_3d.tolist()]
            message.keypoints_2d = np.asarray(estimate.keypoints_2d, np.float32).ravel().tolist()
            bodies.append(message)
        markers = self._markers(header, persons) if (self.values["publish_mesh"] or self.values["publish_skeleton"]) \
            else None
        transforms = []
        if self.values["publish_tf"]:
            for person in persons:
                pose = np.eye(4)  # at the root joint; oriented like the camera when the model gives no orientation
                pose[:3, 3] = person.estimate.joints[self._root]
                if person.estimate.root_rotation is not None:
                    pose[:3, :3] = person.estimate.root_rotation
                transforms.append(make_transform(pose, header.frame_id, f"person_{person.track_id}", header.stamp))
        return BodyMessages(bodies, markers, transforms)

    def _markers(self, header, persons: list[Person]) -> bytes:
        stamp = (header.stamp.sec, header.stamp.nanosec)
        frame = header.frame_id
        specs = [marker_codec.MarkerSpec(frame_id=frame, stamp=stamp, action=marker_codec.DELETEALL)]
        for person in persons:
            r, g, b = (c / 255 for c in color_of(person.track_id))
            base = 4 * person.track_id
            joints = person.estimate.joints
            if self.values["publish_mesh"]:
                mesh = self.tracker.marker_mesh(person.estimate.vertices)
                points, _ = marker_codec.triangle_list(mesh.vertices, mesh.faces)
                specs.append(marker_codec.MarkerSpec(frame_id=frame, stamp=stamp, ns="body_mesh", id=base,
                                                     type=marker_codec.TRIANGLE_LIST, points=points,
                                                     color=(r, g, b, 0.6)))
            if self.values["publish_skeleton"]:
                specs.append(marker_codec.MarkerSpec(frame_id=frame, stamp=stamp, ns="body_bones", id=base + 1,
                                                     type=marker_codec.LINE_LIST, scale=(0.015, 0.0, 0.0),
                                                     color=(r, g, b, 1.0), points=joints[self._bones.ravel()]))
                specs.append(marker_codec.MarkerSpec(frame_id=frame, stamp=stamp, ns="body_joints", id=base + 2,
                                                     type=marker_codec.SPHERE_LIST, scale=(0.03, 0.03, 0.03),
                                                     color=(1.0, 1.0, 1.0, 1.0), points=joints))
            head = joints[:, 1].argmin()  # optical y points down: the highest joint
            specs.append(marker_codec.MarkerSpec(frame_id=frame, stamp=stamp, ns="body_labels", id=base + 3,
                                                 type=marker_codec.TEXT_VIEW_FACING, scale=(0.0, 0.0, 0.1),
                                                 position=tuple(float(v) for v in joints[head] - [0, 0.15, 0]),
                                                 color=(r, g, b, 1.0), text=f"person {person.track_id}"))
        return marker_codec.encode_marker_array(specs)
