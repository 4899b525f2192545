"""A StampPairer inside a live node: the node's subscriptions feed it, a steady-clock timer releases the
frames whose wait is over, and the graph tells it which inputs to expect (a topic with publishers is waited
for, even before its first message). The replay drives the same pairers with the bag's log time instead
(perception_fm.replay.runner)."""
from __future__ import annotations

import time
from typing import Callable

from rclpy.clock import Clock, ClockType

from perception_fm.core.stamp_pairing import Paired, PairedCondition, PairedInput, StampPairer
from perception_fm.ros.tf import stamp_to_ns

POLL_PERIOD_S = 0.01  # how late a timed-out frame may leave, at most (waits are 50-200 ms)
GRAPH_PERIOD_S = 1.0  # how often publishers are counted


def live_clock() -> int:
    """The live pairers' clock: steady (waits are about transport delays; sim time may stand still)."""
    return time.monotonic_ns()


class LivePairing:
    """Connects `pairer` to a node. `subscriptions`: input name -> its subscription (for publisher counts);
    `on_release(paired)` gets every released frame, in the executor thread."""

    def __init__(self, node, pairer: StampPairer, on_release: Callable[[Paired], None]):
        self.node = node
        self.pairer = pairer
        self.on_release = on_release
        self.subscriptions: dict[str, object] = {}
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        node.create_timer(POLL_PERIOD_S, self.poll, clock=steady)
        node.create_timer(GRAPH_PERIOD_S, self.update_expected, clock=steady)

    def subscribe(self, name: str, msg_type, topic: str, qos):
        """Subscribe input `name`; it is expected whenever its topic has a publisher."""
        def store(message):
            self._deliver(self.pairer.add(name, stamp_to_ns(message.header.stamp), message))

        subscription = self.node.create_subscription(msg_type, topic, store, qos)
        self.subscriptions[name] = subscription
        self.update_expected()
        return subscription

    def frame(self, message) -> None:
        """Subscription callback of the frames."""
        self.update_expected()  # a publisher that appeared since the last look is waited for at once
        self._deliver(self.pairer.add_frame(stamp_to_ns(message.header.stamp), message))

    def poll(self) -> None:
        self._deliver(self.pairer.poll())

    def update_expected(self) -> None:
        for name, subscription in self.subscriptions.items():
            try:
                publishers = self.node.count_publishers(subscription.topic_name)
            except Exception:  # the graph is unavailable while shutting down: keep what we knew
                continue
            # no publisher now: wait for it only once one of its messages arrived (None)
            self.pairer.expect(name, True if publishers else None)

    def _deliver(self, released: list[Paired]) -> None:
        for paired in released:
            self.on_release(paired)


# -- the inputs of instance-driven nodes (object_mesh_node, body_node), shared by their frame handlers ------

IMAGE = "image"
CAMERA_INFO = "camera_info"
DEPTH = "depth"
DEPTH_CAMERA_INFO = "depth_camera_info"
FIXED_FRAME_TF = "fixed_frame_tf"


def instances_pairer(values: dict, clock: Callable[[], int], *, use_depth: bool, on_event: Callable[[str], None],
                     on_drop: Callable[[str], None], tf_lookup: Callable | None = None,
                     max_pending: int = 32) -> StampPairer:
    """InstanceArrays (frames) wait `image_wait` for the image and camera_info of their stamp and, with
    `use_depth`, `depth_wait` for the depth frame of it. Without its image an array cannot be used (counted
    no_image_for_instances); camera_info falls back to the newest (counted camera_info_latest_used). With
    `tf_lookup(target, source, stamp_ns)` and a `fixed_frame` parameter, they also wait `image_wait` for TF
    fixed_frame <- image frame at their stamp (as tf2's message filter does; the user counts its absence)."""
    image_wait = values["image_wait"]
    inputs = [PairedInput(IMAGE, wait_s=image_wait, capacity=16, missing_event="no_image_for_instances",
                          required=True),
              PairedInput(CAMERA_INFO, wait_s=image_wait, latest_fallback=True)]
    if use_depth:
        inputs += [PairedInput(DEPTH, wait_s=values["depth_wait"], capacity=8),
                   PairedInput(DEPTH_CAMERA_INFO, wait_s=values["depth_wait"], latest_fallback=True, capacity=8)]
    conditions = ()
    if tf_lookup is not None and "fixed_frame" in values:
        def tf_ready(stamp_ns: int, here: dict) -> bool:
            image, fixed = here.get(IMAGE), values["fixed_frame"]  # read at each check: runtime changes count
            return not fixed or image is None or tf_lookup(fixed, image.header.frame_id, stamp_ns) is not None

        conditions = (PairedCondition(FIXED_FRAME_TF, tf_ready, wait_s=image_wait),)
    return StampPairer(inputs, clock, conditions=conditions, max_pending=max_pending, on_event=on_event,
                       on_drop=on_drop)


def update_instance_waits(pairer: StampPairer, values: dict) -> None:
    for name in pairer.inputs:
        pairer.set_wait(name, values["depth_wait"] if name in (DEPTH, DEPTH_CAMERA_INFO) else values["image_wait"])
    if FIXED_FRAME_TF in pairer.conditions:
        pairer.set_wait(FIXED_FRAME_TF, values["image_wait"])


def paired_image(paired: Paired, max_pixels: int | None = None):
    """(rgb8 image, its message, intrinsics or None) of a released InstanceArray; None without its image.
    An image over `max_pixels` (the node's max_image_pixels; None = the process limit) is BadInputError
    'too_large'."""
    from sensor_msgs.msg import CompressedImage

    from perception_fm.ros.camera_info import camera_info_to_intrinsics
    from perception_fm.ros.image_codec import compressed_to_rgb8, image_to_rgb8

    message = paired.inputs.get(IMAGE)
    if message is None:
        return None
    image = compressed_to_rgb8(message, max_pixels) if isinstance(message, CompressedImage) \
        else image_to_rgb8(message, max_pixels)
    info = paired.inputs.get(CAMERA_INFO)
    K = camera_info_to_intrinsics(info).K if info is not None else None
    return image, message, K
