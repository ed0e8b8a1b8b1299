"""The measured robot pose the action expert feeds a policy with state input (no rclpy).

Poses arrive on their own topic (~100 Hz on the rig); a tick uses the newest pose stamped at or before
the tick, exactly as training does (``training.alignment.pose_at_or_before``). A tick without such a
pose, or whose pose is older than the allowed age, is not commanded: ``state_at`` returns a reason that
starts with a stable code, ``robot_state_missing`` or ``robot_state_stale``. Non-finite poses are
rejected when they arrive (``robot_state_nonfinite`` is counted, never stored).
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from contracts.constants import NS_PER_S


class RobotStateBuffer:
    """Recent measured poses ``[x, y, z (mm), rotation vector (rad), gripper]`` by stamp; thread-safe."""

    def __init__(self, capacity: int = 64) -> None:
        """Keep the newest ``capacity`` poses (enough to reach back to a feature's capture stamp)."""
        self._entries: deque[tuple[int, np.ndarray]] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self.rejected = 0

    def add(self, stamp_ns: int, pose: np.ndarray) -> None:
        """Store one pose; raises ``ValueError`` (and counts it) for a non-finite or mis-shaped pose."""
        pose = np.asarray(pose, dtype=np.float32).reshape(-1)
        if pose.shape != (7,) or not np.isfinite(pose).all():
            with self._lock:
                self.rejected += 1
            raise ValueError(f"robot_state_nonfinite: pose must be 7 finite values, got {pose.tolist()}")
        with self._lock:
            self._entries.append((int(stamp_ns), pose))

    def clear(self) -> None:
        """Forget every pose (on cleanup)."""
        with self._lock:
            self._entries.clear()

    def pose_at(self, stamp_ns: int, max_age_ns: int) -> tuple[np.ndarray | None, str]:
        """The newest pose at or before ``stamp_ns`` (an earlier instant, e.g. a feature's capture).

        ``robot_state_missing`` when the buffer does not reach back that far (its oldest pose is newer)
        or the pose found is more than ``max_age_ns`` before the instant.
        """
        with self._lock:
            entries = list(self._entries)
        usable = [(stamp, pose) for stamp, pose in entries if stamp <= stamp_ns]
        if not usable:
            return None, "robot_state_missing: the pose buffer does not reach back to the features' capture"
        stamp, pose = max(usable, key=lambda entry: entry[0])
        if stamp_ns - stamp > max_age_ns:
            gap_s, limit_s = (stamp_ns - stamp) / NS_PER_S, max_age_ns / NS_PER_S
            return None, f"robot_state_missing: no pose within {limit_s:.3f} s of the capture ({gap_s:.3f} s)"
        return pose, ""

    def state_at(self, tick_ns: int, max_age_ns: int) -> tuple[np.ndarray | None, str]:
        """(newest pose stamped ``<= tick_ns``, "") or (None, reason) when there is none or it is too old."""
        with self._lock:
            entries = list(self._entries)
        usable = [(stamp, pose) for stamp, pose in entries if stamp <= tick_ns]
        if not usable:
            return None, "robot_state_missing: no robot pose at or before the tick"
        stamp, pose = max(usable, key=lambda entry: entry[0])
        age_ns = tick_ns - stamp
        if age_ns > max_age_ns:
            age_s, limit_s = age_ns / NS_PER_S, max_age_ns / NS_PER_S
            return None, f"robot_state_stale: newest pose {age_s:.3f} s old > {limit_s:.3f} s"
        return pose, ""
