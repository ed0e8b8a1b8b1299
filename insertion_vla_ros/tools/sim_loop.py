"""Deterministic in-process closed loop on a simulated clock: rig + policy + modelled VLM latency, no DDS.

It gives the node's :class:`~insertion_vla_ros.runtime.controller.TickController` exactly what the node
gets on the graph: the rig's 650 Hz sensor samples as they are produced, the measured 100 Hz pose stream
(as sim_node publishes ``/robot/pose``), and VL features from :class:`SimulatedVlm` (the vlm_node's
scheduling rule, :mod:`insertion_vla_ros.runtime.vlm_schedule`, with a modelled latency) on the newest
camera frame. Every 100 ms the controller judges the tick; the rig follows the chunks with the sim node's
:class:`~insertion_vla_ros.runtime.chunk_executor.ChunkExecutor`. Modes:

* ``async``: the deployment loop above (``zero_latency`` is async with latency 0 and a 100 ms period);
* ``sync``: VLM then action expert, one chunk per VLM result, no reuse: chunk ``i`` is ready
  ``vlm_latency_s`` after its capture and the robot plays its steps until the next one (or holds);
* ``expert``: the scripted expert's chunk every tick (the ceiling).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from contracts.constants import ACTION_PERIOD_S, DEFAULT_RATE_LIMITS, DEFAULT_STEP_LIMITS, NS_PER_S
from insertion_vla_ros.runtime.chunk_executor import (
    DEFAULT_MAX_EPISODE_S,
    Chunk,
    ChunkExecutor,
    EndRule,
    control_piece,
    hold_action,
)
from insertion_vla_ros.runtime.controller import ControllerSettings, TickController, TickResult
from insertion_vla_ros.runtime.force_guard import DEFAULT_FORCE_GUARD_N
from insertion_vla_ros.runtime.hold_policy import FeatureInfo
from insertion_vla_ros.runtime.vlm_schedule import SimulatedVlm, VlmResult


@dataclass
class LoopConfig:
    """One closed-loop setting."""

    mode: str = "async"
    vlm_latency_s: float = 0.0
    vlm_period_s: float = 1.7
    action_period_s: float = ACTION_PERIOD_S
    max_episode_s: float = DEFAULT_MAX_EPISODE_S
    max_age_s: float = 0.0
    """HOLD beyond this feature age (0: the default for the checkpoint's recipe, ``default_max_age_s``)."""
    step_limits: tuple[float, ...] = DEFAULT_STEP_LIMITS
    rate_limits: tuple[float, ...] = DEFAULT_RATE_LIMITS
    force_guard_n: float = DEFAULT_FORCE_GUARD_N
    """HOLD while the needle force is at or above this, N (0 disables), as the node's ``force_guard_n``."""
    transport_dtype: str = "float32"
    """Dtype the features travel in (vlm_node ``transport_dtype``): float16/bfloat16 round-trip them."""
    lateral_oracle: bool = False
    """Diagnostic: replace the policy's lateral steps (dx, dy) by the scripted expert's, so the episode
    measures the learned depth control (sensor pathway) alone, with the target found by ground truth."""
    lateral_readout: bool = False
    """Diagnostic: replace the policy's lateral steps by the scripted expert's steering to where the VLM's
    grounding read-out (compensated for the motion since capture) puts the target: the success these
    features allow with perfect lateral control (policies with ``action_expert.grounding_input``)."""

    def __post_init__(self) -> None:
        if self.mode not in ("async", "sync", "expert"):
            raise ValueError(f"mode must be async, sync or expert, got {self.mode!r}")
        if self.transport_dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(
                f"transport_dtype must be float32, float16 or bfloat16, got {self.transport_dtype!r}"
            )
        if self.lateral_oracle and self.lateral_readout:
            raise ValueError("lateral_oracle and lateral_readout both replace the lateral steps; pick one")


def transported(features: Any, dtype: str) -> Any:
    """``features`` as the action expert receives them after travelling in ``dtype`` (float32 values)."""
    import torch

    if dtype == "float32":
        return features
    return torch.as_tensor(features).to(getattr(torch, dtype)).float()


@dataclass
class EpisodeTrace:
    """What happened in one closed-loop episode, besides the rig's score."""

    chunks_ok: int = 0
    chunks_hold: int = 0
    force_guard_holds: int = 0
    ok_stamps_ns: list[int] = field(default_factory=list)
    vl_ages_s: list[float] = field(default_factory=list)
    action_wall_s: list[float] = field(default_factory=list)
    ticks: list[TickResult] = field(default_factory=list)
    """Every controller tick (the agreement test compares them with the node's chunks)."""
    features: list[VlmResult] = field(default_factory=list)
    """Every VLM result, with the time it became usable."""

    def record(self, result: TickResult) -> None:
        """Count one tick of the controller."""
        self.ticks.append(result)
        if result.ok:
            self.chunks_ok += 1
            self.ok_stamps_ns.append(result.tick_ns)
            self.vl_ages_s.append(result.decision.vl_age_s)
            self.action_wall_s.append(result.latency_s)
        else:
            self.chunks_hold += 1
            self.force_guard_holds += result.decision.code == "force_over_limit"


def _steady_rate(stamps_ns: list[int]) -> float:
    """OK chunks per second between the first and the last one.

    This is the rate once features exist, without the start-up wait for the first VLM result that
    ``chunks_ok_per_s`` includes.
    """
    if len(stamps_ns) < 2:
        return 0.0
    return (len(stamps_ns) - 1) * NS_PER_S / (stamps_ns[-1] - stamps_ns[0])


class _LateralOracle:
    """The policy, with the lateral steps (dx, dy) of every chunk taken from the scripted expert."""

    def __init__(self, policy: Any, expert: Any, rig: Any) -> None:
        self._policy, self._expert, self._rig = policy, expert, rig

    def __getattr__(self, name: str) -> Any:
        return getattr(self._policy, name)

    def predict_actions(self, *args: Any, **kwargs: Any) -> Any:
        raw = np.asarray(self._policy.predict_actions(*args, **kwargs), np.float32).copy()
        raw[:, 0:2] = self._expert.chunk(self._rig.pose(), raw.shape[0])[:, 0:2]
        return raw


class _LateralReadout(_LateralOracle):
    """The policy, with the lateral steps of every chunk from the expert steering by the VLM's read-out."""

    def __init__(self, policy: Any, make_expert: Any, rig: Any) -> None:
        """``make_expert(target_xy)``: the episode's scripted expert steering to ``target_xy()``."""
        if policy.action_expert.resampler.grounding is None:
            raise ValueError("lateral_readout: this policy has no grounding read-out (grounding_input false)")
        super().__init__(policy, make_expert(lambda: self.target_estimate_xy), rig)
        self.target_estimate_xy = np.zeros(2)

    def predict_actions(self, vl_features: Any, *args: Any, motion: Any = None, **kwargs: Any) -> Any:
        raw = np.asarray(
            self._policy.predict_actions(vl_features, *args, motion=motion, **kwargs), np.float32
        ).copy()
        offset = self._policy.grounding_offset_mm(vl_features)[0]
        if motion is not None:  # the read-out is the offset at capture; the tip has moved since
            offset = offset - np.asarray(motion, np.float64).reshape(-1)[:2]
        pose = self._rig.pose()
        self.target_estimate_xy = pose[0:2] + offset
        raw[:, 0:2] = self._expert.chunk(pose, raw.shape[0])[:, 0:2]
        return raw


class ClosedLoopRunner:
    """Runs seeded episodes of one :class:`LoopConfig` with a policy (or the expert)."""

    def __init__(self, rig: Any, policy: Any, config: LoopConfig) -> None:
        self.rig = rig
        self.policy = policy
        self.config = config
        self.last_trace: EpisodeTrace | None = None
        self._recorders: list[Any] = []
        self._frames: tuple[int, dict[str, Any]] | None = None

    def controller(self, policy: Any) -> TickController:
        """The node's controller with this loop's limits (a fresh one per episode)."""
        cfg = self.config
        settings = ControllerSettings.from_policy(
            policy,
            vl_max_age_s=cfg.max_age_s,
            force_guard_n=cfg.force_guard_n,
            step_limits=cfg.step_limits,
            rate_limits=cfg.rate_limits,
            period_s=cfg.action_period_s,
        )
        return TickController(policy, settings)

    def run(self, target: str, seed: int, recorders: list[Any] | None = None) -> dict[str, Any]:
        """One episode from ``rig.reset(target, seed)``; returns ``rig.evaluate()`` plus loop statistics.

        ``recorders`` (``sim.demos.EpisodeSink``s, e.g. an ``EpisodeWriter``) receive every input the
        controller got, and a camera frame set every tick, so the episode can be replayed elsewhere.
        """
        self._recorders = list(recorders or [])
        self._frames = None
        cfg, rig = self.config, self.rig
        rig.reset(target=target, seed=seed, render=False)
        dt_ns = int(round(cfg.action_period_s * NS_PER_S))
        control_ns = NS_PER_S // rig.config.robot.control_rate_hz
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
            expert = self._expert(seed, rig.target_xy_mm)
        controller = vlm = None
        if cfg.mode != "expert":
            policy = self.policy
            if cfg.lateral_oracle:
                policy = _LateralOracle(self.policy, expert, rig)
            elif cfg.lateral_readout:
                policy = _LateralReadout(self.policy, lambda target_xy: self._expert(seed, target_xy), rig)
            controller = self.controller(policy)
            vlm = SimulatedVlm(
                self._extractor(),
                int(round(cfg.vlm_period_s * NS_PER_S)),
                int(round(cfg.vlm_latency_s * NS_PER_S)),
            )
        next_tick = rig.start_ns
        new_result = False
        reason = ""
        while not reason:
            now = rig.stamp_ns
            if controller is not None:
                self._feed_streams(controller)
            if now >= next_tick:
                next_tick += dt_ns
                if expert is not None and controller is None:
                    executor.offer(Chunk(now, expert.chunk(rig.pose()), 0, cfg.action_period_s))
                    trace.chunks_ok += 1
                    trace.ok_stamps_ns.append(now)
                else:
                    if self._recorders:  # the frame set of this tick, also the one the VLM sees now
                        self._frames = (now, rig.render_cameras())
                        for name, rgb in self._frames[1].items():
                            for sink in self._recorders:
                                sink.add_frame(name, now, rgb)
                    for result in vlm.advance(now):
                        new_result = True
                        trace.features.append(result)
                        controller.add_features(
                            FeatureInfo(result.sequence, result.capture_ns, controller.policy.fingerprint),
                            result.features,
                        )
                    if not sync or new_result:  # sync: one chunk per VLM result, played until the next
                        new_result = False
                        tick = controller.step(now)
                        trace.record(tick)
                        age = tick.decision.vl_age_s
                        executor.offer(
                            Chunk(
                                now,
                                tick.actions,
                                int(tick.decision.status),
                                cfg.action_period_s,
                                vl_age_s=age if np.isfinite(age) else 0.0,
                            )
                        )
            action, _ = executor.step_at(now)
            if action is None:
                action, step_s = hold_action(rig.pose()[6]), cfg.action_period_s
            else:
                step_s = executor.newest.step_dt_s
            rig.apply_action(control_piece(action, (control_ns / NS_PER_S) / step_s), control_ns / NS_PER_S)
            reason = end.update(
                rig.time_s,
                rig.pose()[0:3],
                rig.tip_depth_mm(),
                rig.sensor.max_force_n,
                rig.config.task.force_limit_n,
            )
        self.last_trace = trace
        return self._summary(rig.evaluate(), reason, trace, vlm)

    def _expert(self, seed: int, target_xy: Any) -> Any:
        """The scripted expert of this episode, steering to ``target_xy()``."""
        from sim.expert import ScriptedExpert

        rig = self.rig
        return ScriptedExpert(
            rig.scene,
            step_s=self.config.action_period_s,
            seed=seed,
            gripper=rig.config.robot.gripper,
            target_xy=target_xy,
        )

    def _feed_streams(self, controller: TickController) -> None:
        """What the node's subscriptions would have stored by now: sensor samples and measured poses."""
        rig = self.rig
        stamps, samples = rig.sensor_samples_until()
        if stamps.size:
            controller.add_sensor(stamps, samples, declared_rate_hz=float(rig.config.sensor.rate_hz))
        pose_stamps, poses = rig.pose_samples_until()
        for stamp, pose in zip(pose_stamps, poses):
            controller.add_pose(int(stamp), pose)
        for sink in self._recorders:
            if stamps.size:
                sink.add_sensor(stamps, samples)
            for stamp, pose in zip(pose_stamps, poses):
                sink.add_pose(int(stamp), pose)

    def _summary(
        self, result: dict[str, Any], reason: str, trace: EpisodeTrace, vlm: SimulatedVlm | None
    ) -> dict[str, Any]:
        rig = self.rig

        def stat(values: list[float], fn: Any, scale: float = 1.0) -> float:
            return float(fn(values) * scale) if values else float("nan")

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
            vl_age_mean_s=stat(trace.vl_ages_s, np.mean),
            vl_age_max_s=stat(trace.vl_ages_s, np.max),
            action_wall_ms_p50=stat(trace.action_wall_s, np.median, 1e3),
            vlm_wall_ms_p50=stat(vlm.wall_s, np.median, 1e3) if vlm is not None else float("nan"),
        )
        return result

    def _extractor(self):
        rig, policy = self.rig, self.policy

        def extract(start_ns: int) -> tuple[int, Any]:
            # Inferences start on ticks (every start time is on the 100 ms grid for the latencies used),
            # so the newest frame at the start is the one rendered now, stamped with the rig's time.
            recorded = self._frames
            frames = (
                recorded[1] if recorded is not None and recorded[0] == rig.stamp_ns else rig.render_cameras()
            )
            features = policy.extract_vl_features(
                [frames[name] for name in rig.camera_names], rig.instruction
            )
            return rig.stamp_ns, transported(features, self.config.transport_dtype)

        return extract
