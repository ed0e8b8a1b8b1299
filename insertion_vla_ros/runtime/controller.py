"""The one tick controller: features + causal sensor window + robot state -> OK chunk or HOLD (no rclpy).

Every loop that judges a tick calls :meth:`TickController.step`: the action expert node on the robot, the
in-process simulated loop (``tools.sim_loop``) behind the closed-loop bench, ``evaluate`` on recorded bags
and ``scripts/openloop_check.py``. Inputs only arrive through ``add_*`` (like ``writeFromNonRT``: the
subscriptions store, they decide nothing); ``step(tick_ns)`` decides:

1. the window of the newest ``window`` samples stamped at or before the tick, checked (incomplete, stale,
   gappy, non-finite, wrong sensor rate) by the ring buffer;
2. the newest features by capture stamp, checked by :func:`hold_policy.check_inputs` (missing, other model,
   from the future, too old), with the robot state (newest pose at or before the tick; for a policy with
   motion input also the pose at the features' capture stamp) and the force guard;
3. after a backward jump of the clock, HOLD ``time_jump_back`` until a complete window and features
   captured after the jump exist;
4. the policy forward (an exception is a HOLD ``inference_error``, counted; ticking goes on), the
   non-finite output check, and the safety layer.

A HOLD carries zero motion and resets the safety layer, so motion ramps up from rest afterwards. Bad
configuration (shapes, limits) raises at construction; bad data never raises from ``step``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from contracts.constants import (
    ACTION_PERIOD_S,
    DEFAULT_RATE_LIMITS,
    DEFAULT_STEP_LIMITS,
    NS_PER_S,
    POSE_RATE_HZ,
)
from insertion_vla_ros.runtime.force_guard import DEFAULT_FORCE_GUARD_N, force_problem
from insertion_vla_ros.runtime.hold_policy import (
    ChunkStatus,
    Decision,
    FeatureInfo,
    HoldTracker,
    check_inputs,
    check_output,
)
from insertion_vla_ros.runtime.robot_state import RobotStateBuffer
from insertion_vla_ros.runtime.safety import SafetyLimiter
from insertion_vla_ros.runtime.sensor_buffer import SensorRingBuffer
from models.pose_math import pose_delta

DEFAULT_SENSOR_RATE_TOLERANCE = 0.05
"""Largest relative difference between the sensor's declared or measured rate and the checkpoint's."""


class Policy(Protocol):
    """What the controller needs of a policy (``models.policy.AsyncVLAPolicy`` is one)."""

    config: Any
    fingerprint: str

    def encode_vl_features(self, vl_features: Any) -> Any:
        """Once-per-feature encoding reused by every tick."""

    def predict_actions(
        self,
        vl_features: Any,
        sensor_window: Any,
        vl_age_s: Any,
        vl_mask: Any = None,
        robot_state: Any = None,
    ) -> Any:
        """A chunk ``[H, D]`` for one tick."""


def default_max_age_s(config: Any) -> float:
    """The maximum feature age a node accepts by default: the trained range plus one period of slack.

    With a known recipe, ages beyond the oldest one trained on plus a quarter VLM period (a late VLM
    result) are held; an unknown recipe falls back to ``action_expert.max_age_s``.
    """
    staleness = config.staleness
    if not staleness.known:
        return float(config.action_expert.max_age_s)
    period = staleness.vlm_period_s or config.vlm_period_s
    return float(staleness.max_age_s + config.action_period_s + 0.25 * period)


@dataclass(frozen=True)
class ControllerSettings:
    """What a tick is judged by. :meth:`from_policy` takes the shapes from the checkpoint's config."""

    window: int
    channels: int
    sample_rate_hz: float
    horizon: int
    action_dim: int
    force_channels: int = 1
    state_dim: int = 0
    motion_input: bool = False
    vl_max_age_s: float = 3.4
    trained_ages_s: tuple[float, float] | None = None
    """Feature ages the policy was trained on (``None``: unknown recipe); reported, not enforced."""
    expected_fingerprint: str | None = None
    sensor_max_age_s: float = 0.1
    sensor_gap_tolerance_samples: int = 0
    sensor_rate_tolerance: float = DEFAULT_SENSOR_RATE_TOLERANCE
    sensor_buffer_s: float = 2.0
    pose_max_age_s: float = 0.1
    force_guard_n: float = DEFAULT_FORCE_GUARD_N
    step_limits: tuple[float, ...] = DEFAULT_STEP_LIMITS
    rate_limits: tuple[float, ...] = DEFAULT_RATE_LIMITS
    period_s: float = ACTION_PERIOD_S

    @classmethod
    def from_policy(
        cls, policy: Policy, check_fingerprint: bool = True, **overrides: Any
    ) -> ControllerSettings:
        """Settings of ``policy`` (its ``PolicyConfig``); keyword arguments override (node parameters).

        ``vl_max_age_s=0`` (or missing) means :func:`default_max_age_s` of the checkpoint (its recipe).
        """
        cfg = policy.config
        values: dict[str, Any] = {
            "window": cfg.sensor.window,
            "channels": cfg.sensor.channels,
            "sample_rate_hz": float(cfg.sensor.sample_rate_hz),
            "force_channels": cfg.sensor.force_channels,
            "horizon": cfg.action_expert.horizon,
            "action_dim": cfg.action_expert.action_dim,
            "state_dim": cfg.action_expert.state_dim,
            "motion_input": cfg.action_expert.motion_input,
            "vl_max_age_s": default_max_age_s(cfg),
            "trained_ages_s": (cfg.staleness.min_age_s, cfg.staleness.max_age_s)
            if cfg.staleness.known
            else None,
            "expected_fingerprint": policy.fingerprint if check_fingerprint else None,
        }
        defaults = dict(values)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if not values.get("vl_max_age_s"):
            values["vl_max_age_s"] = defaults["vl_max_age_s"]
        for name in ("step_limits", "rate_limits"):
            values[name] = tuple(float(v) for v in values.get(name, getattr(cls, name)))
        return cls(**values)


@dataclass(frozen=True)
class FeatureEntry:
    """Received VL features: their identity, the encoding (``None`` if unusable) and why not."""

    info: FeatureInfo
    encoded: Any = None
    problem: str = ""


@dataclass(frozen=True)
class TickResult:
    """What one tick produced: the chunk to publish (zeros unless OK) and why."""

    tick_ns: int
    actions: np.ndarray
    decision: Decision
    vl_sequence: int = 0
    latency_s: float = 0.0
    clipped: int = 0

    @property
    def ok(self) -> bool:
        """Whether the chunk commands motion."""
        return self.decision.ok


@dataclass
class TickStats:
    """Counters of the controller, for diagnostics (one place, not loose fields on a node)."""

    ticks: int = 0
    ok_ticks: int = 0
    inference_errors: int = 0
    features_received: int = 0
    features_rejected: int = 0
    time_jumps_back: int = 0
    time_jumps_forward: int = 0
    last_latency_s: float = float("nan")
    last_error: str = ""
    last_reject_ns: int | None = None
    last_result: TickResult | None = None


def newest_entry(entries: list[FeatureEntry], tick_ns: int) -> FeatureEntry | None:
    """The entry with the newest capture stamp at or before ``tick_ns`` (else the newest overall).

    By stamp, not by arrival: features are encoded in a worker thread, so a rejected message can be
    stored before an older good one finishes encoding. Equal stamps: the later arrival wins.
    """
    if not entries:
        return None
    usable = [entry for entry in entries if entry.info.stamp_ns <= tick_ns] or entries
    return max(reversed(usable), key=lambda entry: entry.info.stamp_ns)


class TickController:
    """Owns every input buffer, the safety layer and the hold counters of one control loop (module doc)."""

    def __init__(self, policy: Policy, settings: ControllerSettings) -> None:
        self.policy = policy
        self.settings = settings
        if (
            len(settings.step_limits) != settings.action_dim
            or len(settings.rate_limits) != settings.action_dim
        ):
            raise ValueError(
                f"step and rate limits need {settings.action_dim} values (one per action dimension), got "
                f"{len(settings.step_limits)} and {len(settings.rate_limits)}"
            )
        capacity = max(int(settings.sensor_buffer_s * settings.sample_rate_hz), 2 * settings.window)
        self.sensor = SensorRingBuffer(
            capacity,
            settings.channels,
            settings.sample_rate_hz,
            rate_tolerance=settings.sensor_rate_tolerance,
        )
        # the pose buffer reaches back over the oldest feature age a tick may use (motion since capture)
        pose_seconds = settings.vl_max_age_s + 1.0 if settings.motion_input else 1.0
        self.poses = RobotStateBuffer(capacity=int(pose_seconds * POSE_RATE_HZ * 1.2) + 8)
        self.safety = SafetyLimiter(settings.step_limits, settings.rate_limits)
        self.holds = HoldTracker()
        self.stats = TickStats()
        self._features: deque[FeatureEntry] = deque(maxlen=2)
        self._lock = threading.Lock()  # features + stats: written by the executor and the encoder thread
        self._jump_ns: int | None = None  # new time of the last backward jump, until fresh inputs exist
        self._last_tick_ns: int | None = None

    # ------------------------------------------------------------------------------------------- inputs
    def add_sensor(
        self, stamps_ns: np.ndarray, samples: np.ndarray, declared_rate_hz: float | None = None
    ) -> int:
        """Store sensor samples (ascending stamps); returns how many were kept."""
        return self.sensor.add(stamps_ns, samples, declared_rate_hz=declared_rate_hz)

    def add_pose(self, stamp_ns: int, pose: np.ndarray) -> None:
        """Store one measured pose; raises ``ValueError`` (counted) for a non-finite one."""
        self.poses.add(stamp_ns, pose)

    def add_features(self, info: FeatureInfo, features: Any) -> FeatureEntry:
        """Encode features of the expected model once and keep them for the ticks that reuse them.

        Features of another model are kept unencoded, so ticks HOLD and say why; an encoding failure is
        recorded as a rejected message (the previous features stay in use until they are too old).
        """
        expected = self.settings.expected_fingerprint
        with self._lock:
            self.stats.features_received += 1
        if expected is not None and info.fingerprint != expected:
            entry = FeatureEntry(info, None, "fingerprint_mismatch")
            self._store(entry, rejected=f"VLFeatures #{info.sequence}: from another model")
            return entry
        try:
            entry = FeatureEntry(info, self.policy.encode_vl_features(features))
        except (ValueError, RuntimeError) as error:
            self.reject_features(info, error)
            return FeatureEntry(info, None, str(error))
        self._store(entry)
        return entry

    def reject_features(
        self, info: FeatureInfo, error: BaseException | str, now_ns: int | None = None
    ) -> None:
        """Count a VLFeatures message that could not be used (decode or encode failure)."""
        with self._lock:
            self.stats.features_rejected += 1
            self.stats.last_error = f"VLFeatures #{info.sequence} rejected: {error}"
            self.stats.last_reject_ns = now_ns if now_ns is not None else info.stamp_ns

    def _store(self, entry: FeatureEntry, rejected: str = "") -> None:
        with self._lock:
            if rejected:
                self.stats.features_rejected += 1
                self.stats.last_error = rejected
                self.stats.last_reject_ns = entry.info.stamp_ns
            self._features.append(entry)

    def newest_features(self, tick_ns: int) -> FeatureEntry | None:
        """The stored entry :func:`newest_entry` picks for ``tick_ns``."""
        with self._lock:
            entries = list(self._features)
        return newest_entry(entries, tick_ns)

    # ------------------------------------------------------------------------------------------- state
    def reset(self) -> None:
        """Forget every input and the previous command (activation, a new episode): start from rest."""
        with self._lock:
            self._features.clear()
        self.sensor.clear()
        self.poses.clear()
        self.safety.reset()
        self._jump_ns = None
        self._last_tick_ns = None

    def time_jumped(self, new_now_ns: int, backward: bool) -> None:
        """The clock jumped (sim reset, bag loop): nothing received before may shape a chunk.

        Clears the buffers and the feature slot; after a backward jump ticks HOLD ``time_jump_back`` until
        a complete window and features captured after the jump exist.
        """
        self.reset()
        with self._lock:
            if backward:
                self.stats.time_jumps_back += 1
                self._jump_ns = int(new_now_ns)
            else:
                self.stats.time_jumps_forward += 1

    # -------------------------------------------------------------------------------------------- tick
    def step(self, tick_ns: int) -> TickResult:
        """Judge one tick and return the chunk to publish; never raises on bad data."""
        s = self.settings
        if self._last_tick_ns is not None and tick_ns < self._last_tick_ns:
            self.time_jumped(tick_ns, backward=True)  # a loop that has no clock callback of its own
        self._last_tick_ns = tick_ns
        window = self.sensor.window(
            tick_ns,
            s.window,
            max_age_ns=int(s.sensor_max_age_s * NS_PER_S),
            gap_tolerance_samples=s.sensor_gap_tolerance_samples,
        )
        entry = self.newest_features(tick_ns)
        state, state_problem, motion = None, "", None
        if s.state_dim or s.motion_input:
            state, state_problem = self.poses.state_at(tick_ns, int(s.pose_max_age_s * NS_PER_S))
        if s.motion_input and not state_problem and entry is not None:
            motion, state_problem = self._motion_since(entry.info.stamp_ns, state)
        decision = self._jump_hold(window.ok, entry) or check_inputs(
            tick_ns,
            None if entry is None else entry.info,
            expected_fingerprint=s.expected_fingerprint,
            max_age_ns=int(s.vl_max_age_s * NS_PER_S),
            window_problem=window.problem,
            state_problem=state_problem,
            force_problem=force_problem(window.samples, s.force_guard_n, s.force_channels),
        )
        if decision.ok and (entry is None or entry.encoded is None):
            decision = Decision(
                ChunkStatus.HOLD, "vl_features_invalid: features could not be decoded", decision.vl_age_s
            )
        actions = np.zeros((s.horizon, s.action_dim), np.float32)
        latency, clipped = 0.0, 0
        if decision.ok:
            started = time.perf_counter()
            try:
                extra = {"motion": motion} if s.motion_input else {}
                raw = self.policy.predict_actions(
                    entry.encoded, window.samples, decision.vl_age_s, robot_state=state, **extra
                )
                raw = np.asarray(
                    raw.detach().to("cpu").numpy() if hasattr(raw, "detach") else raw, np.float32
                )
            except Exception as error:  # noqa: BLE001 - a failing forward (CUDA error, bad shapes) must hold
                raw = None
                with self._lock:
                    self.stats.inference_errors += 1
                    self.stats.last_error = f"inference_error: {error}"
                decision = Decision(ChunkStatus.HOLD, f"inference_error: {error}", decision.vl_age_s)
            latency = time.perf_counter() - started
            if raw is not None:
                if raw.shape != actions.shape:
                    decision = Decision(
                        ChunkStatus.HOLD,
                        f"output_shape: policy returned {list(raw.shape)}, expected {list(actions.shape)}",
                        decision.vl_age_s,
                    )
                else:
                    decision = check_output(raw, decision)
                if decision.ok:
                    limited = self.safety.apply(raw)
                    actions, clipped = limited.actions, limited.clipped
        if not decision.ok:
            self.safety.reset()  # the robot holds: the next motion ramps up from rest
        result = TickResult(
            tick_ns, actions, decision, 0 if entry is None else entry.info.sequence, latency, clipped
        )
        self.holds.update(decision)
        with self._lock:
            self.stats.ticks += 1
            self.stats.ok_ticks += int(decision.ok)
            if decision.ok:
                self.stats.last_latency_s = latency
            self.stats.last_result = result
        return result

    def _motion_since(self, capture_ns: int, state: np.ndarray) -> tuple[np.ndarray | None, str]:
        """Pose change from the features' capture to the tick, from the pose buffer (as training does)."""
        then, problem = self.poses.pose_at(capture_ns, int(self.settings.pose_max_age_s * NS_PER_S))
        if problem:
            return None, problem
        return pose_delta(then.astype(np.float64), state.astype(np.float64))[:6].astype(np.float32), ""

    def age_outside_training(self, age_s: float) -> str:
        """A diagnostics note when ``age_s`` lies outside the trained ages (``""`` inside or unknown)."""
        trained = self.settings.trained_ages_s
        if trained is None or not np.isfinite(age_s):
            return ""
        low, high = trained
        slack = self.settings.period_s
        if low - slack <= age_s <= high + slack:
            return ""
        return f"feature age {age_s:.2f} s outside the trained ages {low:.2f}-{high:.2f} s"

    def _jump_hold(self, window_ok: bool, entry: FeatureEntry | None) -> Decision | None:
        """HOLD ``time_jump_back`` while the inputs still predate the last backward jump."""
        if self._jump_ns is None:
            return None
        fresh_features = entry is not None and entry.info.stamp_ns >= self._jump_ns
        if window_ok and fresh_features:
            self._jump_ns = None
            return None
        missing = [
            name
            for name, ok in (("a complete sensor window", window_ok), ("features", fresh_features))
            if not ok
        ]
        return Decision(
            ChunkStatus.HOLD,
            f"time_jump_back: the clock jumped back; waiting for {' and '.join(missing)} from after the jump",
        )

    def update_settings(self, **changes: Any) -> None:
        """Apply run-time parameter changes (force guard, maximum ages, gap tolerance)."""
        self.settings = replace(self.settings, **changes)

    def hold_result(self, tick_ns: int, reason: str) -> TickResult:
        """A zero-motion HOLD chunk with ``reason`` (deactivation, shutdown); resets the safety layer."""
        s = self.settings
        self.safety.reset()
        decision = Decision(ChunkStatus.HOLD, reason)
        self.holds.update(decision)
        return TickResult(tick_ns, np.zeros((s.horizon, s.action_dim), np.float32), decision)
