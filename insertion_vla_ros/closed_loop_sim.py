"""Deterministic in-process closed loop on a simulated clock: rig + policy + modelled VLM latency, no DDS.

The same rules as the real graph: the VLM starts an inference every ``vlm_period_s`` (or right after one
that took longer), on the newest camera frame, and its features become usable ``vlm_latency_s`` later; the
action expert ticks every 100 ms with the newest usable features, their age and a causal sensor window
(:class:`insertion_vla_ros.sensor_buffer.SensorRingBuffer`), goes through the hold policy and the safety
layer of the node, and the rig follows the chunks with the sim node's
:class:`insertion_vla_ros.closed_loop.ChunkExecutor`. Modes:

* ``async``: the deployment loop above (``zero_latency`` is async with latency 0 and a 100 ms period);
* ``sync``: VLM then action expert, one chunk per VLM result, no reuse: chunk ``i`` is ready
  ``vlm_latency_s`` after its capture and the robot plays its steps until the next one (or holds);
* ``expert``: the scripted expert's chunk every tick (the ceiling).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from insertion_vla_ros.closed_loop import Chunk, ChunkExecutor, EndRule, control_piece, hold_action
from insertion_vla_ros.force_guard import DEFAULT_FORCE_GUARD_N, force_problem
from insertion_vla_ros.hold_policy import ChunkStatus, FeatureInfo, check_inputs, check_output
from insertion_vla_ros.safety import SafetyLimiter
from insertion_vla_ros.sensor_buffer import SensorRingBuffer

NS_PER_S = 1_000_000_000
DEFAULT_STEP_LIMITS = (2.0, 2.0, 2.0, 0.05, 0.05, 0.05, 1.0)
DEFAULT_RATE_LIMITS = (0.5, 0.5, 0.5, 0.02, 0.02, 0.02, 1.0)


@dataclass
class LoopConfig:
    """One closed-loop setting."""

    mode: str = "async"
    vlm_latency_s: float = 0.0
    vlm_period_s: float = 1.7
    action_period_s: float = 0.1
    max_episode_s: float = 15.0
    max_age_s: float = 0.0
    """HOLD beyond this feature age (0: the checkpoint's ``action_expert.max_age_s``)."""
    step_limits: tuple[float, ...] = DEFAULT_STEP_LIMITS
    rate_limits: tuple[float, ...] = DEFAULT_RATE_LIMITS
    force_guard_n: float = DEFAULT_FORCE_GUARD_N
    """HOLD while the needle force is at or above this, N (0 disables), as the node's ``force_guard_n``."""
    lateral_oracle: bool = False
    """Diagnostic: replace the policy's lateral steps (dx, dy) by the scripted expert's, so the episode
    measures the learned depth control (sensor pathway) alone, with the target found by ground truth."""

    def __post_init__(self) -> None:
        if self.mode not in ("async", "sync", "expert"):
            raise ValueError(f"mode must be async, sync or expert, got {self.mode!r}")


@dataclass
class VlmResult:
    """Features from one inference: capture time, when they become usable, the tensor (or encoding)."""

    sequence: int
    capture_ns: int
    ready_ns: int
    features: Any


@dataclass
class SimulatedVlm:
    """VLM scheduling on a simulated clock (period, latency, never queueing), as the vlm_node does it.

    ``extract(start_ns)`` runs the model on the newest input at ``start_ns`` and returns ``(capture_ns,
    features)`` or ``None`` when there is no input yet (the next try is one period later).
    """

    extract: Callable[[int], tuple[int, Any] | None]
    period_ns: int
    latency_ns: int
    next_start_ns: int | None = None
    results: list[VlmResult] = field(default_factory=list)
    _pending: list[VlmResult] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)

    def advance(self, t_ns: int) -> None:
        """Start the inferences due by ``t_ns`` and publish those finished by then."""
        if self.next_start_ns is None:
            self.next_start_ns = t_ns
        while self.next_start_ns <= t_ns:
            start = self.next_start_ns
            started = time.perf_counter()
            out = self.extract(start)
            self.wall_s.append(time.perf_counter() - started)
            if out is not None:
                capture_ns, features = out
                sequence = len(self.results) + len(self._pending) + 1
                self._pending.append(VlmResult(sequence, capture_ns, start + self.latency_ns, features))
            self.next_start_ns = start + max(self.period_ns, self.latency_ns)
        ready = [r for r in self._pending if r.ready_ns <= t_ns]
        self._pending = [r for r in self._pending if r.ready_ns > t_ns]
        self.results.extend(ready)

    def newest(self) -> VlmResult | None:
        """The newest published features."""
        return self.results[-1] if self.results else None


@dataclass
class EpisodeTrace:
    """What happened in one closed-loop episode, besides the rig's score."""

    chunks_ok: int = 0
    chunks_hold: int = 0
    force_guard_holds: int = 0
    ok_stamps_ns: list[int] = field(default_factory=list)
    vl_ages_s: list[float] = field(default_factory=list)
    action_wall_s: list[float] = field(default_factory=list)


def _steady_rate(stamps_ns: list[int]) -> float:
    """OK chunks per second between the first and the last one.

    This is the rate once features exist, without the start-up wait for the first VLM result that
    ``chunks_ok_per_s`` includes.
    """
    if len(stamps_ns) < 2:
        return 0.0
    return (len(stamps_ns) - 1) * NS_PER_S / (stamps_ns[-1] - stamps_ns[0])


class ClosedLoopRunner:
    """Runs seeded episodes of one :class:`LoopConfig` with a policy (or the expert)."""

    def __init__(self, rig: Any, policy: Any, config: LoopConfig) -> None:
        self.rig = rig
        self.policy = policy
        self.config = config
        if policy is not None:
            mc = policy.config
            self.window = mc.sensor.window
            self.channels = mc.sensor.channels
            self.fingerprint = policy.fingerprint
            self.max_age_ns = int((config.max_age_s or mc.action_expert.max_age_s) * NS_PER_S)

    def run(self, target: str, seed: int) -> dict[str, Any]:
        """One episode from ``rig.reset(target, seed)``; returns ``rig.evaluate()`` plus loop statistics."""
        cfg, rig = self.config, self.rig
        rig.reset(target=target, seed=seed, render=False)
        dt_ns = int(round(cfg.action_period_s * NS_PER_S))
        tick_ns = NS_PER_S // rig.config.robot.control_rate_hz
        sync = cfg.mode == "sync"
        horizon_s = (
            0.8 if self.policy is None else self.policy.config.action_expert.horizon * cfg.action_period_s
        )
        executor = ChunkExecutor(max_chunk_age_s=horizon_s if sync else 1.5 * cfg.action_period_s)
        executor.reset(rig.start_ns)
        end = EndRule(max_episode_s=cfg.max_episode_s)
        trace = EpisodeTrace()
        expert = None
        if cfg.mode == "expert" or cfg.lateral_oracle:
            from sim.expert import ScriptedExpert

            expert = ScriptedExpert(
                rig.scene, step_s=cfg.action_period_s, seed=seed, gripper=rig.config.robot.gripper
            )
        self.oracle = expert if cfg.lateral_oracle else None
        if cfg.mode != "expert":
            buffer = SensorRingBuffer(4 * self.window, self.channels, float(rig.config.sensor.rate_hz))
            safety = SafetyLimiter(cfg.step_limits, cfg.rate_limits)
            vlm = SimulatedVlm(
                self._extractor(),
                int(round(cfg.vlm_period_s * NS_PER_S)),
                int(round(cfg.vlm_latency_s * NS_PER_S)),
            )
            used_sequence = 0
        next_tick = rig.start_ns
        reason = ""
        while not reason:
            now = rig.stamp_ns
            if now >= next_tick:
                next_tick += dt_ns
                if cfg.mode == "expert":
                    executor.offer(Chunk(now, expert.chunk(rig.pose()), 0, cfg.action_period_s))
                    trace.chunks_ok += 1
                    trace.ok_stamps_ns.append(now)
                else:
                    stamps, samples = rig.sensor_samples_until()
                    if stamps.size:
                        buffer.add(stamps, samples)
                    vlm.advance(now)
                    newest = vlm.newest()
                    if sync and (newest is None or newest.sequence == used_sequence):
                        pass  # no new VLM result: keep playing the current chunk
                    else:
                        chunk = self._tick(now, newest, buffer, safety, trace)
                        if chunk is not None and chunk.status == 0:
                            trace.ok_stamps_ns.append(now)
                        if chunk is not None:
                            executor.offer(chunk)
                        if newest is not None:
                            used_sequence = newest.sequence
            action, _ = executor.step_at(now)
            if action is None:
                action, step_s = hold_action(rig.pose()[6]), cfg.action_period_s
            else:
                step_s = executor.newest.step_dt_s
            rig.apply_action(control_piece(action, (tick_ns / NS_PER_S) / step_s), tick_ns / NS_PER_S)
            reason = end.update(
                rig.time_s,
                rig.pose()[0:3],
                rig.tip_depth_mm(),
                rig.sensor.max_force_n,
                rig.config.task.force_limit_n,
            )
        result = rig.evaluate()
        result.update(
            end_reason=reason,
            chunks_ok=trace.chunks_ok,
            chunks_hold=trace.chunks_hold,
            force_guard_holds=trace.force_guard_holds,
            chunks_ok_per_s=trace.chunks_ok / max(rig.time_s, 1e-9),
            chunks_ok_steady_per_s=_steady_rate(trace.ok_stamps_ns),
            first_ok_chunk_s=(trace.ok_stamps_ns[0] - rig.start_ns) / NS_PER_S
            if trace.ok_stamps_ns
            else float("nan"),
            vl_age_mean_s=float(np.mean(trace.vl_ages_s)) if trace.vl_ages_s else float("nan"),
            vl_age_max_s=float(np.max(trace.vl_ages_s)) if trace.vl_ages_s else float("nan"),
            action_wall_ms_p50=float(np.median(trace.action_wall_s) * 1e3)
            if trace.action_wall_s
            else float("nan"),
            vlm_wall_ms_p50=float(np.median(vlm.wall_s) * 1e3)
            if cfg.mode != "expert" and vlm.wall_s
            else float("nan"),
        )
        return result

    def _extractor(self) -> Callable[[int], tuple[int, Any]]:
        rig, policy = self.rig, self.policy

        def extract(start_ns: int) -> tuple[int, Any]:
            # Cameras run at 10 Hz on the control grid and every start time lies on it: the newest frame at
            # the start is rendered now (the rig is at start_ns).
            frames = rig.render_cameras()
            images = [frames[name] for name in rig.camera_names]
            features = policy.extract_vl_features(images, rig.instruction)
            return start_ns, policy.encode_vl_features(features)

        return extract

    def _tick(
        self,
        now: int,
        newest: VlmResult | None,
        buffer: SensorRingBuffer,
        safety: SafetyLimiter,
        trace: EpisodeTrace,
    ) -> Chunk | None:
        info = None if newest is None else FeatureInfo(newest.sequence, newest.capture_ns, self.fingerprint)
        window = buffer.window(now, self.window, max_age_ns=NS_PER_S // 10)
        decision = check_inputs(
            now,
            info,
            expected_fingerprint=self.fingerprint,
            max_age_ns=self.max_age_ns,
            window_problem=window.problem,
            force_problem=force_problem(
                window.samples, self.config.force_guard_n, self.policy.config.sensor.force_channels
            ),
        )
        horizon = self.policy.config.action_expert.horizon
        actions = np.zeros((horizon, 7), np.float32)
        if decision.ok:
            started = time.perf_counter()
            raw = self.policy.predict_actions(
                newest.features, window.samples, decision.vl_age_s, robot_state=self.rig.pose()
            )
            raw = raw.detach().cpu().numpy()
            trace.action_wall_s.append(time.perf_counter() - started)
            decision = check_output(raw, decision)
            if decision.ok:
                if self.oracle is not None:
                    raw = raw.copy()
                    raw[:, 0:2] = self.oracle.chunk(self.rig.pose(), horizon)[:, 0:2]
                actions = safety.apply(raw).actions
                trace.vl_ages_s.append(decision.vl_age_s)
        if not decision.ok:
            safety.reset()
            trace.chunks_hold += 1
            trace.force_guard_holds += decision.code == "force_over_limit"
        else:
            trace.chunks_ok += 1
        status = int(decision.status) if decision.status != ChunkStatus.OK else 0
        age = decision.vl_age_s if np.isfinite(decision.vl_age_s) else 0.0
        return Chunk(now, actions, status, self.config.action_period_s, vl_age_s=age)
