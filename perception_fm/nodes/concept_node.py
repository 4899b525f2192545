"""concept_node: every instance of typed or spoken concepts, segmented and tracked with stable ids.

Subscribes (relative names; remap them):
  image (sensor_msgs/Image) or image/compressed (image_transport:=compressed)
  concepts (std_msgs/String): "red mug, chair" adds, "-chair" removes, "=a, b" replaces ("=" clears)
  prompt_point (geometry_msgs/PointStamped): a click in image pixels (rqt_image_view's mouse topic) starts
    a new tracked object there; on a camera rig (`cameras`) on the camera whose last image's frame_id is the
    click's header.frame_id (no such camera: counted bad_prompt_frame and logged)
  depth/image, depth/camera_info, depth/info (use_depth:=true; e.g. depth_node's outputs): 3D positions
Publishes, stamped with the input image's header:
  instances (perception_fm/InstanceArray): id, concept, scores, state, box, RLE mask, 3D position
  instances/labels (mono16 or 32SC1 id per pixel), instances/overlay (rgb8), instances/markers (MarkerArray)
Services: ~/set_concepts (perception_fm/SetConcepts), ~/prompt_object (perception_fm/PromptObject; on a rig a
  new object names its `camera`, a correction goes to the camera its id belongs to)
No concept and no track: the model does not run (frames counted as skipped).

Commands are user intent and are never dropped silently: every `concepts` message is kept (KEEP_ALL,
reliable), queued by the callback and applied in arrival order by the worker (~/set_concepts applies what is
queued before its own change), one log line per message; counters concept_messages_applied / _empty /
_dropped (queue over MAX_PENDING_CONCEPT_MESSAGES) and bad_concept (refused phrases). A click or box outside
the last image is refused (bad_prompt), not clamped; a prompt the worker has not started within
prompt_timeout_s is withdrawn and answered "busy", so it never applies later and takes no track id.
"""
from __future__ import annotations

if __name__ == "__main__":  # python -m: stop quietly on SIGINT/SIGTERM from here on, even while importing
    from perception_fm.nodes.launcher import launch

    raise SystemExit(launch("concept_node"))  # imports this module again, as perception_fm.nodes.concept_node

import threading
import traceback
from collections import deque

import numpy as np
from geometry_msgs.msg import PointStamped
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from perception_fm.errors import BadInputError
from perception_fm.graph import NODE_TYPES
from perception_fm.hookspecs import Task
from perception_fm.msg import DepthInfo, InstanceArray
from perception_fm.nodes.node_base import ModelNode, run_node
from perception_fm.ros import segmentation_io as io
from perception_fm.ros.concept_rig_io import CONCEPT_NODE_PARAMS, LiveConceptRig
from perception_fm.ros.qos import qos_profile
from perception_fm.ros.pairing import LivePairing, live_clock
from perception_fm.srv import PromptObject, SetConcepts

# Commands are user intent: the subscription keeps every one until the executor has taken it (a reliable writer
# is held back rather than a command overwritten); the callback only queues it, so the executor keeps up.
COMMANDS_QOS = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE)
# `concepts` messages waiting to be applied, at most (a hard cap against a runaway publisher while the model
# loads; beyond it a message is dropped, counted as concept_messages_dropped and logged)
MAX_PENDING_CONCEPT_MESSAGES = 10_000
LOG_THROTTLE_S = 5.0  # warnings about a flood of bad prompts or empty commands: one line per period, counts exact


class _NoModel(RuntimeError):
    """A prompt came while the node has no model (loading, or it failed to load)."""


class ConceptNode(ModelNode):
    task = Task.SEGMENTATION
    default_model = NODE_TYPES["concept_node"].default_model
    params = CONCEPT_NODE_PARAMS  # one camera's (segmentation_io) and the rig's (`cameras`: concept_rig_io)
    model_extra_params = io.MODEL_EXTRA_PARAMS
    prompt_timeout_s = 5.0  # a prompt the worker has not started by then is withdrawn and answered "busy"

    def __init__(self, **kwargs):
        super().__init__("concept_node", **kwargs)
        self._concept_messages: deque[str] = deque()  # `concepts` messages not applied yet, in arrival order
        self._concept_messages_lock = threading.Lock()
        self._concept_drain_scheduled = False
        self._concepts_apply_lock = threading.RLock()  # one concept change at a time: topic, service, reload
        input_qos = qos_profile(self.values["input_qos"])
        output_qos = qos_profile(self.values["output_qos"])
        # with use_depth, images wait for the depth of their stamp in the shared pairer (as in the replay);
        # without, they leave it at once
        self._pairing = LivePairing(self, io.depth_pairer(self.values, live_clock, on_event=self.stats.event,
                                                          on_drop=self._pairing_drop), self.submit)
        # several cameras (`cameras`): their subscriptions, grouping and outputs are the rig's (concept_rig_io)
        self._rig = LiveConceptRig(self, input_qos, output_qos) if self.values["cameras"] else None
        if self._rig is None and self.values["image_transport"] == "compressed":
            self.create_subscription(CompressedImage, "image/compressed", self._pairing.frame, input_qos)
        elif self._rig is None:
            self.create_subscription(Image, "image", self._pairing.frame, input_qos)
        # commands are kept in every lifecycle state (applied once there is a model); clicks are frame input
        self.create_subscription(String, io.TOPIC_CONCEPTS, self._on_concepts, COMMANDS_QOS, always=True)
        self.create_subscription(PointStamped, "prompt_point", self._on_prompt_point, COMMANDS_QOS)
        self._depth_metric = False
        if self.values["use_depth"]:
            self._pairing.subscribe(io.DEPTH, Image, io.TOPIC_DEPTH, output_qos)
            self._pairing.subscribe(io.DEPTH_CAMERA_INFO, CameraInfo, io.TOPIC_DEPTH_CAMERA_INFO, output_qos)
            self.create_subscription(DepthInfo, "depth/info", self._on_depth_info, output_qos)
        self._outputs = {
            "instances": self.create_publisher(InstanceArray, io.TOPIC_INSTANCES, output_qos),
            "labels": self.create_publisher(Image, io.TOPIC_LABELS, output_qos),
            "overlay": self.create_publisher(Image, io.TOPIC_OVERLAY, output_qos),
            "markers": self.create_publisher(MarkerArray, io.TOPIC_MARKERS, output_qos),
        }
        self.create_service(SetConcepts, "~/set_concepts", self._set_concepts)
        self.create_service(PromptObject, "~/prompt_object", self._prompt_object)
        self.handler: io.SegmentationFrameHandler | None = None
        self._released_concepts: list[str] = []  # the concepts of a model released by cleanup, for the next one
        self.start()

    # -- model and concepts -------------------------------------------------------------------------------

    def reconfigure_with(self, model) -> None:
        with self._concepts_apply_lock:  # no concept change may land on the old handler while it is replaced
            previous = [c.text for c in self.handler.concepts.snapshot().values()] if self.handler else \
                self._released_concepts
            handler = self._rig.handler(model) if self._rig is not None else \
                io.SegmentationFrameHandler(model, self.values)
            if previous:  # concepts given at runtime survive a model reload or parameter change
                handler.concepts.add(previous)
            self.handler = handler
        io.update_depth_waits(self._pairing.pairer, self.values)
        self._apply_concept_messages()  # those that came while there was no model

    def release_model(self) -> None:
        """Cleanup: the tracker and its model go; the concepts given at runtime come back with the next model."""
        with self._concepts_apply_lock:
            if self.handler is not None:
                self._released_concepts = [c.text for c in self.handler.concepts.snapshot().values()]
            self.handler = None

    def _on_concepts(self, message: String) -> None:
        """Queue the message (cheap: the executor must keep up with bursts); the worker applies it in order."""
        with self._concept_messages_lock:
            full = len(self._concept_messages) >= MAX_PENDING_CONCEPT_MESSAGES
            if not full:
                self._concept_messages.append(message.data)
                schedule, self._concept_drain_scheduled = not self._concept_drain_scheduled, True
        if full:
            self.stats.event("concept_messages_dropped")
            self.get_logger().error(
                f"concepts message {message.data[:60]!r} dropped: {MAX_PENDING_CONCEPT_MESSAGES} messages already "
                "wait to be applied (no model yet, or a runaway publisher)", throttle_duration_sec=LOG_THROTTLE_S)
        elif schedule:
            self.run_in_worker(self._apply_concept_messages, wait=False)

    def _apply_concept_messages(self) -> None:
        """Apply every queued `concepts` message, in arrival order, one log line each. Runs in the worker (and
        in the service before its own change, so that topic and service changes apply in arrival order)."""
        with self._concepts_apply_lock:
            with self._concept_messages_lock:
                self._concept_drain_scheduled = False
            handler = self.handler
            if handler is None:  # kept until the model is ready (reconfigure_with applies them)
                return
            while True:
                with self._concept_messages_lock:
                    if not self._concept_messages:
                        return
                    text = self._concept_messages.popleft()
                outcome = handler.concepts.apply_message(text)
                if outcome.empty:  # as the service answers an empty phrase: refused, said and counted
                    self.stats.event("concept_messages_empty")
                    self.get_logger().warning(outcome.summary(), throttle_duration_sec=LOG_THROTTLE_S)
                    continue
                self.stats.event("concept_messages_applied")
                for _ in outcome.refused:
                    self.stats.event("bad_concept")
                if outcome.refused:
                    self.get_logger().warning(outcome.summary())
                else:
                    self.get_logger().info(outcome.summary())

    def _set_concepts(self, request, response):
        handler = self.handler
        if handler is None:
            response.success, response.message = False, f"no model: {self.model_error or 'loading'}"
            return response
        operations = {SetConcepts.Request.SET: handler.concepts.set, SetConcepts.Request.ADD: handler.concepts.add,
                      SetConcepts.Request.REMOVE: handler.concepts.remove, SetConcepts.Request.LIST: lambda _: None}
        operation = operations.get(request.operation)
        with self._concepts_apply_lock:
            self._apply_concept_messages()  # what came earlier on the topic applies first
            try:
                if operation is None:
                    raise ValueError(f"unknown operation {request.operation}")
                operation(list(request.concepts))
                response.success, response.message = True, "ok"
            except (BadInputError, ValueError) as error:
                response.success, response.message = False, str(error)
            active = sorted(handler.concepts.snapshot().values(), key=lambda c: c.prompt_id)
        response.concepts = [c.text for c in active]
        response.prompt_ids = [c.prompt_id for c in active]
        return response

    def _prompt_object(self, request, response):
        points = np.array([[p.x, p.y] for p in request.points], np.float64).reshape(-1, 2)
        labels = np.array([int(p.z > 0.5) for p in request.points], np.int64)
        box = None
        if request.box.width > 0 and request.box.height > 0:
            b = request.box
            box = np.array([b.x_offset, b.y_offset, b.x_offset + b.width, b.y_offset + b.height], np.float64)
        if not len(points) and box is None:
            response.success, response.message = False, "give points or a box"
            return response
        try:
            response.object_id = self._prompt(points if len(points) else None, labels if len(points) else None, box,
                                              concept=request.concept or "object", obj_id=request.object_id or None,
                                              camera=request.camera)
            response.success, response.message = True, "ok"
        except (BadInputError, TimeoutError, _NoModel) as error:
            response.success, response.message = False, str(error)
        except Exception as error:  # a bug or a model failure: answered and logged, the node keeps running
            response.success, response.message = False, f"prompt failed: {type(error).__name__}: {error}"
            self.get_logger().error(f"prompt failed: {type(error).__name__}: {error}\n{traceback.format_exc()}")
        return response

    def _prompt(self, points, labels, box, camera: str = "", **kwargs) -> int:
        """Run a prompt in the worker (the tracker is the worker's alone) and return the object id. Raises
        TimeoutError if the worker did not get to it within prompt_timeout_s; then it never runs. `camera`:
        on a rig, the camera of a new object (ConceptRig.prompt routes a correction by its id); one camera: ""."""
        def prompt():
            handler = self.handler
            if handler is None:
                raise _NoModel(f"no model: {self.model_error or 'loading'}")
            try:
                if self._rig is not None:
                    return handler.tracker.prompt(points, labels, box, camera=camera, **kwargs)
                if camera:
                    raise BadInputError("prompt", f"camera {camera!r} given, but this node has one camera (no "
                                                  "'cameras' parameter): leave camera empty")
                return handler.tracker.prompt(points, labels, box, **kwargs)
            except BadInputError:
                self.stats.event("bad_prompt")
                raise

        return self.run_in_worker(prompt, timeout=self.prompt_timeout_s)  # withdrawn when busy: takes no id

    def _on_prompt_point(self, message: PointStamped) -> None:
        points = np.array([[message.point.x, message.point.y]])

        def prompt():
            handler = self.handler
            try:
                if handler is None:
                    raise _NoModel(f"no model: {self.model_error or 'loading'}")
                if self._rig is None:
                    obj_id = handler.tracker.prompt(points, np.array([1]), None)
                else:  # the camera whose last image is in the click's frame
                    camera = handler.tracker.camera_of_frame(message.header.frame_id)
                    obj_id = handler.tracker.prompt(points, np.array([1]), None, camera=camera)
            except (BadInputError, _NoModel) as error:  # bad_prompt, or bad_prompt_frame (a rig: no such camera)
                self.stats.event(f"bad_{getattr(error, 'reason', 'prompt')}")
                self.get_logger().warning(f"click prompt ignored: {error}", throttle_duration_sec=LOG_THROTTLE_S)
            except Exception as error:  # a bug or a model failure: said and counted, the node keeps running
                self.stats.event("failed_prompt")
                self.get_logger().error(f"click prompt failed: {type(error).__name__}: {error}\n"
                                        f"{traceback.format_exc()}", throttle_duration_sec=LOG_THROTTLE_S)
            else:
                self.stats.event("click_prompts")
                self.get_logger().info(f"click ({points[0, 0]:g}, {points[0, 1]:g}) started object {obj_id}")

        self.run_in_worker(prompt, wait=False)  # runs before the next frame

    def _on_depth_info(self, message: DepthInfo) -> None:
        self._depth_metric = message.is_metric

    # -- frames -------------------------------------------------------------------------------------------

    def _pairing_drop(self, reason: str) -> None:
        """A frame the pairer had to drop (too many waiting) was received, and is lost as stale."""
        self.stats.receive()
        self.stats.drop(reason)

    def process(self, paired) -> float | None:
        if self._rig is not None:  # a group of the rig's images
            return self._rig.process(self.handler, paired)
        message, depth = paired.frame, io.paired_depth(paired, self._depth_metric)
        result = self.handler.handle(message, depth)
        if result is None:
            return None
        frame, messages = result
        self._outputs["instances"].publish(messages.instances)
        if messages.labels is not None:
            self._outputs["labels"].publish(messages.labels)
        if messages.overlay is not None:
            self._outputs["overlay"].publish(messages.overlay)
        if messages.markers is not None:
            self._outputs["markers"].publish(messages.markers)
        return messages.instances.inference_ms


def main(args=None) -> int:
    return run_node(ConceptNode, args)

