"""The in-process closed loop of bench/closed_loop.py: rates, the sync/async rules and the lateral oracle.

Everything runs on the rig's simulated clock, so the figures checked here are exact, not wall-clock.
"""

from __future__ import annotations

import numpy as np
import pytest

from insertion_vla_ros.tools.sim_loop import ClosedLoopRunner, LoopConfig, _steady_rate
from sim.config import RigConfig
from sim.demos import DEFAULT_HOLD_STEPS
from sim.rig import InsertionRig

NS = 1_000_000_000


def test_steady_rate_counts_intervals_between_ok_chunks():
    assert _steady_rate([]) == 0.0
    assert _steady_rate([5 * NS]) == 0.0
    assert _steady_rate([int(1.5 * NS) + i * NS // 10 for i in range(85)]) == pytest.approx(10.0)
    assert _steady_rate([int(1.5 * NS) * (i + 1) for i in range(6)]) == pytest.approx(1 / 1.5)


def test_demonstrations_rest_at_the_goal_for_longer_than_a_chunk():
    # Otherwise no training sample shows a whole chunk of "stay" and policies insert past the target.
    assert DEFAULT_HOLD_STEPS > 8


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    from insertion_vla_ros.testing.tiny_checkpoint import build_tiny_checkpoint
    from models.checkpoint import load_checkpoint

    checkpoint = build_tiny_checkpoint(tmp_path_factory.mktemp("model"))
    return load_checkpoint(checkpoint, load_vlm=True).eval()


@pytest.fixture()
def rig():
    return InsertionRig(RigConfig().with_image_size(56, 56), seed=3)


def test_expert_mode_solves_a_seeded_episode(rig):
    result = ClosedLoopRunner(rig, None, LoopConfig(mode="expert", max_episode_s=15.0)).run("Blue", 11)
    assert result["success"] and result["end_reason"] == "settled", result  # it stops; no timeout saves it
    assert result["chunks_ok_steady_per_s"] == pytest.approx(10.0)


def test_async_delivers_ten_chunks_per_second_once_features_exist(rig, tiny_policy):
    config = LoopConfig(vlm_latency_s=1.5, vlm_period_s=1.7, max_episode_s=4.0)
    result = ClosedLoopRunner(rig, tiny_policy, config).run("Red", 5)
    assert result["first_ok_chunk_s"] == pytest.approx(1.5)  # nothing to act on before the first result
    assert result["chunks_hold"] == 15
    assert result["chunks_ok_steady_per_s"] == pytest.approx(10.0)
    assert result["chunks_ok_per_s"] < 10.0  # the whole-episode rate includes the start-up wait
    assert result["vl_age_max_s"] <= 1.5 + 1.7 + 1e-6


def test_sync_delivers_at_most_one_chunk_per_latency(rig, tiny_policy):
    config = LoopConfig(mode="sync", vlm_latency_s=1.5, vlm_period_s=1.5, max_episode_s=8.0)
    result = ClosedLoopRunner(rig, tiny_policy, config).run("Red", 5)
    assert result["chunks_ok"] >= 3
    assert result["chunks_ok_steady_per_s"] <= 1 / 1.5 + 1e-9


def test_lateral_oracle_aligns_even_an_untrained_policy(rig, tiny_policy):
    plain = LoopConfig(vlm_latency_s=0.0, vlm_period_s=0.1, max_episode_s=3.0)
    oracle = LoopConfig(vlm_latency_s=0.0, vlm_period_s=0.1, max_episode_s=3.0, lateral_oracle=True)
    without = ClosedLoopRunner(rig, tiny_policy, plain).run("Green", 21)
    with_oracle = ClosedLoopRunner(rig, tiny_policy, oracle).run("Green", 21)
    assert with_oracle["lateral_error_mm"] < 0.1
    assert without["lateral_error_mm"] > 1.0  # the untrained policy alone does not find the target
    assert np.isfinite(with_oracle["depth_error_mm"])


@pytest.fixture(scope="module")
def untrained_tiny_sim_policy():
    """The embedded default's layout (shipped Stage 0 VLM, its grounding read-out), an untrained expert.

    Its lateral steps are decoded freely (not gated by the read-out), so that alone it does not find the
    target and the diagnostic's steering is what the test sees.
    """
    import dataclasses

    import torch

    from models.config import load_model_config
    from models.policy import AsyncVLAPolicy

    torch.manual_seed(0)
    config = load_model_config("tiny_sim")
    config.action_expert = dataclasses.replace(
        config.action_expert, head="regression", lateral_from_readout=False
    )
    policy = AsyncVLAPolicy(config.validate(), load_vlm=True)
    policy.load_grounding_from_vlm()
    return policy.eval()


def test_lateral_readout_steers_by_the_vlm_read_out_not_ground_truth(untrained_tiny_sim_policy, tiny_policy):
    rig = InsertionRig(RigConfig().with_image_size(112, 112), seed=3)
    settings = dict(vlm_latency_s=0.0, vlm_period_s=0.1, max_episode_s=4.0)
    plain = ClosedLoopRunner(rig, untrained_tiny_sim_policy, LoopConfig(**settings)).run("Blue", 31)
    readout = ClosedLoopRunner(rig, untrained_tiny_sim_policy, LoopConfig(**settings, lateral_readout=True))
    steered = readout.run("Blue", 31)
    assert plain["lateral_error_mm"] > 3.0  # the untrained expert alone does not find the target
    assert 0.05 < steered["lateral_error_mm"] < 2.5  # the read-out finds it, to its own accuracy (not 0)
    small_rig = InsertionRig(RigConfig().with_image_size(56, 56), seed=3)
    with pytest.raises(ValueError, match="no grounding read-out"):
        ClosedLoopRunner(small_rig, tiny_policy, LoopConfig(**settings, lateral_readout=True)).run("Blue", 31)
    with pytest.raises(ValueError, match="pick one"):
        LoopConfig(lateral_oracle=True, lateral_readout=True)


def test_loop_config_rejects_unknown_modes():
    with pytest.raises(ValueError, match="mode"):
        LoopConfig(mode="sometimes")
    with pytest.raises(ValueError, match="transport_dtype"):
        LoopConfig(transport_dtype="int8")


def test_float16_transport_rounds_the_features_as_the_wire_does(rig, tiny_policy):
    import torch

    from insertion_vla_ros.tools.sim_loop import transported

    features = torch.randn(80, 64) * 3
    assert transported(features, "float32") is features
    half = transported(features, "float16")
    assert half.dtype == torch.float32 and torch.equal(half, features.half().float())
    assert 0 < float((half - features).abs().max()) < 1e-2
    config = LoopConfig(vlm_latency_s=0.0, vlm_period_s=0.1, max_episode_s=2.0, transport_dtype="float16")
    assert ClosedLoopRunner(rig, tiny_policy, config).run("Red", 5)["chunks_ok"] > 0


def test_expert_follows_a_drifting_phantom_in_the_loop():
    config = RigConfig().with_image_size(56, 56)
    config.scene.drift_amplitude_mm = 2.0
    drifting = InsertionRig(config, seed=3)
    result = ClosedLoopRunner(drifting, None, LoopConfig(mode="expert", max_episode_s=15.0)).run("Blue", 11)
    assert result["lateral_error_mm"] < 1.0, result


class _PoseSink:
    """Keeps the recorded poses (the only stream these checks need)."""

    def __init__(self) -> None:
        self.poses: list[np.ndarray] = []

    def add_frame(self, camera, stamp_ns, rgb) -> None:
        pass

    def add_sensor(self, stamps_ns, samples) -> None:
        pass

    def add_pose(self, stamp_ns, pose) -> None:
        self.poses.append(np.asarray(pose, dtype=np.float64).copy())


def _stationary_steps_inside_before_goal(poses: np.ndarray, goal_depth_mm: float) -> int:
    steps = poses[::10]  # 100 Hz poses -> one per 100 ms step
    inside = (steps[:-1, 2] < -0.05) & (-steps[:-1, 2] < goal_depth_mm - 0.1)
    still = np.linalg.norm(steps[1:, 0:3] - steps[:-1, 0:3], axis=1) < 1e-9
    return int(np.sum(inside & still))


def test_demonstration_pauses_show_the_tip_at_rest_inside_the_tissue_and_still_succeed():
    from sim.demos import run_expert_episode

    rig = InsertionRig(RigConfig().with_image_size(32, 32), seed=0)
    counts = {}
    for probability in (0.0, 0.3):
        rig.reset("Yellow", seed=17, render=False)
        sink = _PoseSink()
        result = run_expert_episode(rig, [sink], expert_seed=17, pause_probability=probability)
        assert result["success"], result
        counts[probability] = _stationary_steps_inside_before_goal(
            np.stack(sink.poses), rig.scene.target_depth_mm
        )
    assert counts[0.0] == 0
    assert counts[0.3] >= 2


class _SidewaysInserter:
    """The tiny policy's plumbing, but every chunk pushes the needle in and sideways: the guard's adversary.

    Moving sideways inside tissue loads the needle laterally, so the force keeps rising while it does.
    """

    def __init__(self, policy) -> None:
        self._policy = policy

    def __getattr__(self, name: str):
        return getattr(self._policy, name)

    def predict_actions(self, vl_features, sensor_window, vl_age_s, robot_state=None):
        import torch

        chunk = torch.zeros(self._policy.config.action_expert.horizon, 7)
        chunk[:, 0], chunk[:, 2], chunk[:, 6] = 0.3, -0.3, 1.0
        return chunk


def test_force_guard_holds_a_policy_that_would_overload_the_needle(rig, tiny_policy):
    pushy = _SidewaysInserter(tiny_policy)
    runs = {}
    for guard in (0.0, 2.4):
        config = LoopConfig(vlm_latency_s=0.0, vlm_period_s=1.0, max_episode_s=8.0, force_guard_n=guard)
        runs[guard] = ClosedLoopRunner(rig, pushy, config).run("Red", 4)
    unguarded, guarded = runs[0.0], runs[2.4]
    assert unguarded["max_force_n"] > unguarded["force_limit_n"], unguarded
    assert unguarded["force_guard_holds"] == 0
    assert guarded["force_guard_holds"] > 0
    # one 100 ms tick of motion past the guard's threshold, no more
    assert 2.4 <= guarded["max_force_n"] < guarded["force_limit_n"], guarded
