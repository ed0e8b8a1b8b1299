"""The one tick controller at unit level: every HOLD path, the safety layer, clock jumps, no rclpy."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from insertion_vla_ros.runtime.controller import ControllerSettings, TickController
from insertion_vla_ros.runtime.hold_policy import ChunkStatus, FeatureInfo

S = 1_000_000_000
RATE = 650.0
W, C, H, D = 65, 6, 8, 7
FINGERPRINT = "model-a"


@dataclass
class _Sensor:
    window: int = W
    channels: int = C
    force_channels: int = 1
    sample_rate_hz: float = RATE


@dataclass
class _Expert:
    horizon: int = H
    action_dim: int = D
    state_dim: int = 0
    max_age_s: float = 3.4
    motion_input: bool = False


@dataclass
class _Staleness:
    recipe: str = "unknown"
    min_age_s: float = 0.0
    max_age_s: float = 0.0
    vlm_period_s: float = 0.0

    @property
    def known(self) -> bool:
        return self.recipe != "unknown"


@dataclass
class _Config:
    sensor: _Sensor
    action_expert: _Expert
    staleness: _Staleness = field(default_factory=_Staleness)
    action_period_s: float = 0.1
    vlm_period_s: float = 1.7


class ChunkPolicy:
    """A deterministic policy: every chunk is ``chunk``; counts calls; can fail on demand."""

    fingerprint = FINGERPRINT

    def __init__(self, chunk: np.ndarray | None = None, state_dim: int = 0) -> None:
        self.config = _Config(_Sensor(), _Expert(state_dim=state_dim))
        self.chunk = np.full((H, D), 0.1, np.float32) if chunk is None else chunk
        self.calls: list[dict] = []
        self.error: Exception | None = None

    def encode_vl_features(self, features):
        features = np.asarray(features)
        if not np.isfinite(features).all():
            raise ValueError("vl_features contain non-finite values")
        return ("encoded", features.shape)

    def predict_actions(self, vl_features, sensor_window, vl_age_s, vl_mask=None, robot_state=None):
        self.calls.append({"age": vl_age_s, "state": robot_state, "window": np.array(sensor_window)})
        if self.error is not None:
            raise self.error
        return self.chunk.copy()


def samples(first: int, count: int, force: float = 0.1, rate: float = RATE) -> tuple[np.ndarray, np.ndarray]:
    stamps = S + np.round((first + np.arange(count)) * S / rate).astype(np.int64)
    data = np.zeros((count, C), np.float32)
    data[:, 0] = force
    return stamps, data


def ready(policy=None, state_dim: int = 0, **settings) -> tuple[TickController, ChunkPolicy]:
    """A controller with 1000 samples from 1.0 s (to ~2.54 s) and features captured at 2.0 s."""
    policy = policy or ChunkPolicy(state_dim=state_dim)
    controller = TickController(policy, ControllerSettings.from_policy(policy, **settings))
    controller.add_sensor(*samples(0, 1000), declared_rate_hz=RATE)
    controller.add_features(FeatureInfo(1, 2 * S, FINGERPRINT), np.zeros((4, 8), np.float32))
    return controller, policy


TICK = S + int(1.2 * S)  # 2.2 s: 0.2 s after the features at 2.0 s


def test_ok_tick_passes_age_window_and_goes_through_the_safety_layer():
    big = np.full((H, D), 5.0, np.float32)  # beyond every step limit
    controller, policy = ready(ChunkPolicy(big))
    result = controller.step(TICK)
    assert result.ok and result.decision.vl_age_s == pytest.approx(0.2)
    assert policy.calls[0]["window"].shape == (W, C)
    # ramps up from rest: the first step moves at most one rate limit, every value is clipped and counted
    assert result.actions[0, 0] == pytest.approx(0.5) and result.clipped == H * D
    assert controller.safety.total_clipped == H * D


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda c: c.reset(), "no_vl_features"),
        (
            lambda c: c.add_features(FeatureInfo(2, 2 * S + 1, "model-b"), np.zeros((4, 8))),
            "fingerprint_mismatch",
        ),
        (lambda c: c.add_features(FeatureInfo(2, TICK + S, FINGERPRINT), np.zeros((4, 8))), None),
    ],
)
def test_feature_problems_hold_or_wait(change, code):
    controller, _ = ready()
    change(controller)
    result = controller.step(TICK)
    if code is None:  # features from after the tick are not picked; the older good ones still serve
        assert result.ok
        return
    assert not result.ok and result.decision.code == code
    assert result.decision.status == (ChunkStatus.WAITING if code == "no_vl_features" else ChunkStatus.HOLD)
    assert not result.actions.any()


def test_stale_features_hold_with_the_configured_age():
    controller, _ = ready(vl_max_age_s=0.15)
    result = controller.step(TICK)
    assert result.decision.code == "vl_features_stale" and "0.15 s" in result.decision.reason


def test_features_that_fail_to_encode_are_counted_and_the_previous_ones_serve():
    controller, _ = ready()
    controller.add_features(FeatureInfo(2, 2 * S + 5, FINGERPRINT), np.full((4, 8), np.nan, np.float32))
    assert controller.stats.features_rejected == 1 and "non-finite" in controller.stats.last_error
    assert controller.step(TICK).ok  # #1 is still fresh


@pytest.mark.parametrize(
    ("feed", "code"),
    [
        (lambda c: None, "sensor_window_incomplete"),
        (lambda c: c.add_sensor(*samples(0, 100)), "sensor_stale"),
        (lambda c: (c.add_sensor(*samples(0, 760)), c.add_sensor(*samples(765, 35))), "sensor_window_gap"),
    ],
)
def test_sensor_window_problems_hold(feed, code):
    policy = ChunkPolicy()
    controller = TickController(policy, ControllerSettings.from_policy(policy))
    controller.add_features(FeatureInfo(1, 2 * S, FINGERPRINT), np.zeros((4, 8)))
    feed(controller)
    result = controller.step(TICK)
    assert result.decision.code == code, result.decision.reason
    assert policy.calls == []


def test_non_finite_sensor_samples_hold():
    controller, _ = ready()
    stamps, data = samples(1000, 10)
    data[3, 2] = np.nan
    controller.add_sensor(stamps, data)
    assert controller.step(int(stamps[-1])).decision.code == "sensor_window_nonfinite"


def test_a_sensor_at_another_rate_holds_with_both_rates():
    policy = ChunkPolicy()
    controller = TickController(policy, ControllerSettings.from_policy(policy))
    controller.add_features(FeatureInfo(1, 2 * S, FINGERPRINT), np.zeros((4, 8)))
    controller.add_sensor(*samples(0, 1300, rate=1000.0), declared_rate_hz=1000.0)
    result = controller.step(TICK)
    assert result.decision.code == "sensor_rate_mismatch"
    assert "1000 Hz" in result.decision.reason and "650 Hz" in result.decision.reason
    # a stream that declares the right rate but delivers samples faster is caught by the measured rate
    controller = TickController(policy, ControllerSettings.from_policy(policy))
    controller.add_features(FeatureInfo(1, 2 * S, FINGERPRINT), np.zeros((4, 8)))
    controller.add_sensor(*samples(0, 1300, rate=1000.0), declared_rate_hz=RATE)
    result = controller.step(TICK)
    assert result.decision.code == "sensor_rate_mismatch" and "measures 1000 Hz" in result.decision.reason


def test_the_force_guard_holds_at_or_above_its_threshold():
    controller, _ = ready(force_guard_n=2.4)
    controller.add_sensor(*samples(1000, 20, force=2.6))
    stamps, _ = samples(1000, 20)
    result = controller.step(int(stamps[-1]))
    assert result.decision.code == "force_over_limit"
    controller.update_settings(force_guard_n=0.0)  # disabled at run time
    assert controller.step(int(stamps[-1]) + S // 10).decision.code != "force_over_limit"


def test_robot_state_missing_stale_and_used():
    controller, policy = ready(state_dim=3)
    assert controller.step(TICK).decision.code == "robot_state_missing"
    controller.add_pose(TICK - S, np.array([1, 2, 3, 0, 0, 0, 1.0]))
    assert controller.step(TICK + S // 10).decision.code == "robot_state_stale"
    controller.add_pose(TICK + S // 10, np.array([4, 5, 6, 0, 0, 0, 1.0]))
    assert controller.step(TICK + 2 * S // 10).ok
    np.testing.assert_allclose(policy.calls[-1]["state"][:3], [4, 5, 6])


def test_a_failing_forward_holds_with_the_error_and_ticking_goes_on():
    controller, policy = ready()
    policy.error = RuntimeError("CUDA error: an illegal memory access was encountered")
    result = controller.step(TICK)
    assert result.decision.code == "inference_error" and "illegal memory access" in result.decision.reason
    assert controller.stats.inference_errors == 1 and not result.actions.any()
    policy.error = None
    assert controller.step(TICK + S // 10).ok


@pytest.mark.parametrize(
    ("chunk", "code"),
    [
        (np.full((H, D), np.nan, np.float32), "output_nonfinite"),
        (np.zeros((H, D - 1), np.float32), "output_shape"),
    ],
)
def test_bad_model_output_holds(chunk, code):
    controller, _ = ready(ChunkPolicy(chunk))
    assert controller.step(TICK).decision.code == code


def test_a_hold_resets_the_safety_layer_so_motion_ramps_up_again():
    controller, policy = ready(ChunkPolicy(np.full((H, D), 0.45, np.float32)))
    assert controller.step(TICK).actions[0, 0] == pytest.approx(0.45)
    policy.error = RuntimeError("boom")
    controller.step(TICK + S // 10)
    policy.error = None
    policy.chunk = np.full((H, D), 1.5, np.float32)
    assert controller.step(TICK + 2 * S // 10).actions[0, 0] == pytest.approx(0.5)  # from rest, not from 0.45


def test_a_backward_clock_jump_holds_until_fresh_window_and_features():
    controller, _ = ready()
    assert controller.step(TICK).ok
    back = TICK - int(1.2 * S)
    result = controller.step(back)  # nothing from before the jump may shape a chunk
    assert result.decision.code == "time_jump_back"
    assert controller.stats.time_jumps_back == 1
    controller.add_sensor(*samples(0, 400))  # a fresh stream up to ~1.6 s
    result = controller.step(back + S // 10)
    assert result.decision.code == "time_jump_back" and "features" in result.decision.reason
    controller.add_features(FeatureInfo(2, back + S // 20, FINGERPRINT), np.zeros((4, 8)))
    assert controller.step(back + 2 * S // 10).ok


def test_hold_result_is_zero_motion_and_counted():
    controller, _ = ready()
    result = controller.hold_result(TICK, "shutdown: the node is shutting down")
    assert result.decision.code == "shutdown" and not result.actions.any()
    assert controller.holds.counts_by_code["shutdown"] == 1


def test_settings_come_from_the_policy_config_and_overrides_apply():
    policy = ChunkPolicy()
    settings = ControllerSettings.from_policy(policy, vl_max_age_s=0.0, force_guard_n=1.5)
    assert (settings.window, settings.channels, settings.horizon, settings.action_dim) == (W, C, H, D)
    assert settings.vl_max_age_s == 3.4  # 0: the checkpoint's max age
    assert settings.force_guard_n == 1.5 and settings.expected_fingerprint == FINGERPRINT
    with pytest.raises(ValueError, match="7 values"):
        TickController(policy, ControllerSettings.from_policy(policy, step_limits=(1.0, 2.0)))
