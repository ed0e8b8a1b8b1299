"""What the action expert reports: /diagnostics tasks and the ~/status state, from the controller's counters.

Diagnostics never say OK while something is wrong: a HOLD or WAITING tick makes the control loop WARN,
stale features make the "vl features" task WARN and rejected messages make it ERROR (with the last error)
until good features arrive again, a wrong sensor rate is an ERROR, and the sensor counters keep their
reasons apart (gaps, duplicates, out of order, clock jumps).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np

from contracts.constants import NS_PER_S
from insertion_vla_ros.ros_io.diagnostics import FrequencyMonitor, Level, TaskStatus
from insertion_vla_ros.runtime.controller import TickController
from insertion_vla_ros.runtime.hold_policy import ChunkStatus
from insertion_vla_ros.runtime.tick_clock import TickClock


class ControllerState(enum.IntEnum):
    """Mirror of ``ControllerStatus.STATE_*``."""

    INACTIVE = 0
    WAITING = 1
    RUNNING = 2
    HOLD = 3


@dataclass
class SensorRate:
    """Measured sample rate over at least half a second of ROS time."""

    hz: float = float("nan")
    _reference: tuple[int, int] | None = None

    def update(self, now_ns: int, samples: int) -> float:
        """Feed the cumulative sample count at ``now_ns``; returns the newest rate."""
        if self._reference is not None and now_ns > self._reference[0]:
            elapsed = (now_ns - self._reference[0]) / NS_PER_S
            if elapsed >= 0.5:
                self.hz = (samples - self._reference[1]) / elapsed
                self._reference = (now_ns, samples)
        else:
            self._reference = (now_ns, samples)
        return self.hz


def controller_state(controller: TickController | None, active: bool) -> tuple[ControllerState, str]:
    """State and reason for ``~/status``: inactive, waiting, running or holding (with the hold reason)."""
    if not active or controller is None:
        return ControllerState.INACTIVE, "inactive" if controller is not None else "unconfigured"
    result = controller.stats.last_result
    if result is None:
        return ControllerState.WAITING, "no tick yet"
    if result.decision.status == ChunkStatus.WAITING:
        return ControllerState.WAITING, result.decision.reason
    if result.decision.status == ChunkStatus.HOLD:
        return ControllerState.HOLD, result.decision.reason
    return ControllerState.RUNNING, ""


def controller_tasks(
    prefix: str,
    controller: TickController | None,
    clock: TickClock,
    tick_monitor: FrequencyMonitor,
    *,
    active: bool,
    now_ns: int,
    sensor_rate_hz: float,
    chunks_published: int,
    extra_error: str = "",
) -> list[TaskStatus]:
    """The control loop, sensor, vl features and safety tasks of ``/diagnostics``."""
    state, reason = controller_state(controller, active)
    if active:
        loop = tick_monitor.report(f"{prefix}: control loop", now_ns)
    else:
        loop = TaskStatus(f"{prefix}: control loop", Level.OK, reason)
    if extra_error:
        loop.merge(Level.ERROR, extra_error)
    loop.values.update(
        {
            "chunks published": chunks_published,
            "missed ticks": clock.stats.missed_ticks,
            "clock jumps back": clock.stats.jumps_back,
            "clock jumps forward": clock.stats.jumps_forward,
            "state": reason or "running",
        }
    )
    if controller is None:
        return [loop]
    stats = controller.stats
    loop.values.update(
        {
            "last inference (s)": stats.last_latency_s,
            "inference errors": stats.inference_errors,
            "holds": controller.holds.hold_count,
        }
    )
    for code, count in sorted(controller.holds.counts_by_code.items()):
        loop.values[f"holds: {code}"] = count
    if active and state in (ControllerState.HOLD, ControllerState.WAITING):
        loop.merge(Level.WARN, reason)
    return [
        loop,
        _sensor_task(prefix, controller, active, reason, sensor_rate_hz),
        _features_task(prefix, controller, active, reason, now_ns),
        _safety_task(prefix, controller),
    ]


def _sensor_task(
    prefix: str, controller: TickController, active: bool, reason: str, rate_hz: float
) -> TaskStatus:
    buffer = controller.sensor
    stats = buffer.stats
    task = TaskStatus(
        f"{prefix}: sensor",
        Level.OK,
        "OK",
        {
            "Actual frequency (Hz)": rate_hz,
            "Target frequency (Hz)": buffer.sample_rate_hz,
            "declared rate (Hz)": stats.declared_rate_hz,
            "messages": stats.messages,
            "samples": stats.samples,
            "gap samples": stats.gap_samples,
            "duplicate samples": stats.duplicate_samples,
            "out of order samples": stats.out_of_order_samples,
            "non-finite samples": stats.nonfinite_samples,
            "stream resets (clock jumps)": stats.resets,
            "stream jumps (stamps)": stats.stream_jumps,
        },
    )
    if controller.settings.state_dim:
        task.values["robot poses rejected"] = controller.poses.rejected
    if active and stats.samples == 0:
        task.merge(Level.ERROR, "no sensor samples received")
    if reason.startswith("sensor_rate_mismatch"):
        task.merge(Level.ERROR, reason)
    elif reason.startswith(("sensor_", "robot_state_")):
        task.merge(Level.WARN, reason)
    lost = stats.gap_samples + stats.duplicate_samples + stats.out_of_order_samples
    if lost:
        task.merge(
            Level.WARN,
            f"samples lost: {stats.gap_samples} in gaps, {stats.duplicate_samples} duplicates, "
            f"{stats.out_of_order_samples} out of order",
        )
    return task


def _features_task(
    prefix: str, controller: TickController, active: bool, reason: str, now_ns: int
) -> TaskStatus:
    stats = controller.stats
    result = stats.last_result
    entry = controller.newest_features(now_ns)
    age = result.decision.vl_age_s if result is not None else float("nan")
    task = TaskStatus(
        f"{prefix}: vl features",
        Level.OK,
        "OK",
        {
            "received": stats.features_received,
            "rejected": stats.features_rejected,
            "last sequence": entry.info.sequence if entry else -1,
            "age at last tick (s)": age,
            "max age (s)": controller.settings.vl_max_age_s,
            "trained ages (s)": _trained(controller),
            "expected fingerprint": controller.settings.expected_fingerprint or "(not checked)",
        },
    )
    if stats.last_error:
        task.values["last error"] = stats.last_error
    newest_is_bad = entry is not None and entry.encoded is None
    rejected_since_good = stats.last_reject_ns is not None and (
        entry is None or entry.info.stamp_ns <= stats.last_reject_ns
    )
    if active and (newest_is_bad or rejected_since_good) and stats.last_error:
        task.merge(Level.ERROR, stats.last_error)
    outside = controller.age_outside_training(age) if result is not None and result.ok else ""
    if active and outside:
        task.merge(Level.WARN, outside)
    if active and entry is None:
        task.merge(Level.WARN, "no VLFeatures received yet")
    elif active and reason.startswith(("vl_features_", "fingerprint_mismatch", "time_jump_back")):
        task.merge(Level.WARN if np.isfinite(age) else Level.ERROR, reason)
    return task


def _trained(controller: TickController) -> str:
    trained = controller.settings.trained_ages_s
    if trained is None:
        return "unknown recipe (the checkpoint does not record its training ages)"
    return f"{trained[0]:.2f}-{trained[1]:.2f}"


def _safety_task(prefix: str, controller: TickController) -> TaskStatus:
    safety, s = controller.safety, controller.settings
    task = TaskStatus(
        f"{prefix}: safety",
        Level.OK,
        "OK",
        {
            "values clipped": safety.total_clipped,
            "chunks clipped": safety.chunks_clipped,
            "step limits": list(s.step_limits),
            "rate limits": list(s.rate_limits),
            "force guard (N)": s.force_guard_n,
        },
    )
    if safety.total_clipped:
        task.merge(Level.WARN, f"{safety.total_clipped} action values clipped so far")
    return task


def status_fields(
    controller: TickController | None, clock: TickClock, sensor_rate_hz: float
) -> dict[str, Any]:
    """The numeric ``ControllerStatus`` fields (plottable in rqt_plot)."""
    if controller is None:
        return {"tick_period_s": clock.stats.tick_period_s, "missed_ticks": clock.stats.missed_ticks}
    result = controller.stats.last_result
    return {
        "vl_feature_age_s": result.decision.vl_age_s if result is not None else float("nan"),
        "action_latency_s": controller.stats.last_latency_s,
        "tick_period_s": clock.stats.tick_period_s,
        "sensor_rate_hz": sensor_rate_hz,
        "missed_ticks": clock.stats.missed_ticks,
        "dropped_samples": controller.sensor.stats.dropped_samples,
        "hold_count": controller.holds.hold_count,
        "safety_clipped": controller.safety.total_clipped,
    }
