"""QoS profiles of the package's topics (one home, so publishers and subscribers always pair up).

Checked on these machines: a best-effort publisher never reaches a reliable subscriber, and a volatile
publisher never reaches a transient-local subscriber; the reverse pairings work.
"""

from __future__ import annotations

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

LATCHED_QOS = QoSProfile(
    depth=1,
    history=HistoryPolicy.KEEP_LAST,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
"""VLFeatures and the instruction: reliable + transient local, depth 1: a late subscriber gets the newest."""

RELIABLE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
"""Commands and outputs (ActionChunk, poses): reliable, volatile."""

STREAM_QOS = QoSProfile(depth=50, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
"""The sim's cameras and sensor: offered reliable, so both sensor_data (best effort) and reliable
subscribers receive them."""

LATCHED_RESULTS_QOS = QoSProfile(
    depth=100,
    history=HistoryPolicy.KEEP_LAST,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
"""The sim's episode results: every result of a run reaches a late subscriber."""


def input_qos(kind: str, depth: int) -> QoSProfile:
    """Subscription QoS: ``sensor_data`` (best effort, receives from any publisher) or ``reliable``."""
    if kind == "sensor_data":
        return QoSProfile(
            depth=depth,
            history=HistoryPolicy.KEEP_LAST,
            reliability=qos_profile_sensor_data.reliability,
            durability=qos_profile_sensor_data.durability,
        )
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
