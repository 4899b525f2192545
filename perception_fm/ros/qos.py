"""Named QoS profiles, chosen by node parameters (input_qos / output_qos)."""
from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

PROFILES = ("sensor_data", "reliable", "transient_local")


def qos_profile(name: str, depth: int = 1) -> QoSProfile:
    """sensor_data: best effort, volatile (what camera drivers publish; matches reliable publishers too).
    reliable: reliable, volatile. transient_local: reliable and latched for late subscribers.
    Keep-last `depth`: a perception node wants the newest frame, never a backlog."""
    if name == "sensor_data":
        reliability, durability = ReliabilityPolicy.BEST_EFFORT, DurabilityPolicy.VOLATILE
    elif name == "reliable":
        reliability, durability = ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE
    elif name == "transient_local":
        reliability, durability = ReliabilityPolicy.RELIABLE, DurabilityPolicy.TRANSIENT_LOCAL
    else:
        raise ValueError(f"unknown QoS profile {name!r}; one of {', '.join(PROFILES)}")
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=max(1, int(depth)), reliability=reliability,
                      durability=durability)
