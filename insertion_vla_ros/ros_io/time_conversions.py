"""Conversions between ROS time messages and integer nanoseconds (no rclpy import)."""

from __future__ import annotations

from typing import Any

from contracts.constants import NS_PER_S


def stamp_to_ns(stamp: Any) -> int:
    """``builtin_interfaces/Time`` (anything with ``sec``/``nanosec``) -> integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def ns_to_stamp(ns: int, stamp_type: type | None = None) -> Any:
    """Integer nanoseconds -> ``builtin_interfaces/Time`` (or ``stamp_type``), exact for ns >= 0."""
    if stamp_type is None:
        from builtin_interfaces.msg import Time as stamp_type  # noqa: N813 (ROS type name)
    ns = int(ns)
    if ns < 0:
        raise ValueError(f"ROS time stamps cannot be negative, got {ns} ns")
    return stamp_type(sec=ns // NS_PER_S, nanosec=ns % NS_PER_S)


def ns_to_s(ns: int) -> float:
    """Nanoseconds -> seconds (float)."""
    return ns / NS_PER_S
