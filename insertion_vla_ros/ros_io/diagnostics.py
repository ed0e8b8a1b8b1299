"""diagnostic_updater-style status for /diagnostics, written with diagnostic_msgs directly.

diagnostic_updater is not installable everywhere this package runs, so this module follows its conventions
by hand: one ``DiagnosticStatus`` per task named ``"<node>: <task>"``, a ``hardware_id``, levels
OK/WARN/ERROR/STALE, and for rates the key-values of ``diagnostic_updater.FrequencyStatus``
("Events in window", "Actual frequency (Hz)", "Target frequency (Hz)", ...). ``FrequencyMonitor`` and
``TaskStatus`` are plain Python; :func:`diagnostic_array` builds the message.
"""

from __future__ import annotations

import collections
import enum
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from contracts.constants import NS_PER_S


class Level(enum.IntEnum):
    """``diagnostic_msgs/DiagnosticStatus`` levels."""

    OK = 0
    WARN = 1
    ERROR = 2
    STALE = 3


@dataclass
class TaskStatus:
    """One diagnostic task's result (the plain-Python twin of ``DiagnosticStatus``)."""

    name: str
    level: Level = Level.OK
    message: str = "OK"
    values: dict[str, Any] = field(default_factory=dict)

    def merge(self, level: Level, message: str) -> None:
        """Raise the level to ``level`` if higher, keeping the most severe message (like ``mergeSummary``)."""
        if level > self.level:
            self.level, self.message = level, message
        elif level == self.level and level != Level.OK and message not in self.message:
            self.message = f"{self.message}; {message}"


class FrequencyMonitor:
    """Counts events and reports their rate over a window, like ``diagnostic_updater.FrequencyStatus``.

    ``tick(now_ns)`` is cheap (append under a lock); ``report`` runs in the 1 Hz diagnostics callback.
    """

    def __init__(self, target_hz: float, tolerance: float = 0.1, window_s: float = 5.0) -> None:
        self.target_hz = float(target_hz)
        self.tolerance = float(tolerance)
        self.window_ns = int(window_s * NS_PER_S)
        self._events: collections.deque[int] = collections.deque()
        self._total = 0
        self._lock = threading.Lock()

    def tick(self, now_ns: int) -> None:
        """Record one event at ``now_ns``."""
        with self._lock:
            self._events.append(now_ns)
            self._total += 1

    def frequency(self, now_ns: int) -> tuple[float, int, float]:
        """``(Hz, events in window, window duration s)`` over the events newer than the window."""
        with self._lock:
            while self._events and now_ns - self._events[0] > self.window_ns:
                self._events.popleft()
            events = list(self._events)
        if len(events) < 2:
            return 0.0, len(events), 0.0
        duration = (events[-1] - events[0]) / NS_PER_S
        return ((len(events) - 1) / duration if duration > 0 else 0.0), len(events), duration

    def report(self, name: str, now_ns: int) -> TaskStatus:
        """Build a task status with FrequencyStatus' key-values; WARN outside target +/- tolerance."""
        hz, count, duration = self.frequency(now_ns)
        low, high = self.target_hz * (1 - self.tolerance), self.target_hz * (1 + self.tolerance)
        if count < 2:
            status = TaskStatus(name, Level.ERROR, "No events recorded.")
        elif hz < low:
            status = TaskStatus(name, Level.WARN, "Frequency too low.")
        elif hz > high:
            status = TaskStatus(name, Level.WARN, "Frequency too high.")
        else:
            status = TaskStatus(name, Level.OK, "Desired frequency met")
        status.values.update(
            {
                "Events in window": count,
                "Events since startup": self._total,
                "Duration of window (s)": round(duration, 6),
                "Actual frequency (Hz)": round(hz, 4),
                "Target frequency (Hz)": self.target_hz,
                "Minimum acceptable frequency (Hz)": round(low, 4),
                "Maximum acceptable frequency (Hz)": round(high, 4),
            }
        )
        return status


def diagnostic_array_type() -> Any:
    """The ``diagnostic_msgs/DiagnosticArray`` class (imported on use: this module needs no ROS)."""
    from diagnostic_msgs.msg import DiagnosticArray

    return DiagnosticArray


def diagnostic_array(stamp_ns: int, hardware_id: str, statuses: Iterable[TaskStatus]) -> Any:
    """Build a ``diagnostic_msgs/DiagnosticArray`` from task statuses (values formatted as strings)."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    from insertion_vla_ros.ros_io.time_conversions import ns_to_stamp

    array = DiagnosticArray()
    array.header.stamp = ns_to_stamp(stamp_ns)
    for task in statuses:
        status = DiagnosticStatus()
        status.level = bytes([int(task.level)])
        status.name = task.name
        status.message = task.message
        status.hardware_id = hardware_id
        status.values = [KeyValue(key=str(key), value=_format(value)) for key, value in task.values.items()]
        array.status.append(status)
    return array


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
