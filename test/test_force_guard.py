"""The force guard: when the needle force makes the action expert hold, and what it reports."""

from __future__ import annotations

import numpy as np
import pytest

from insertion_vla_ros.runtime.force_guard import DEFAULT_FORCE_GUARD_N, RECENT_SAMPLES, force_problem
from insertion_vla_ros.runtime.hold_policy import ChunkStatus, FeatureInfo, check_inputs

S = 1_000_000_000


def window(force: np.ndarray, channels: int = 4) -> np.ndarray:
    samples = np.zeros((len(force), channels), np.float32)
    samples[:, 0] = force
    return samples


def test_force_below_the_guard_passes_and_at_or_above_it_holds_with_the_figures():
    assert force_problem(window(np.full(65, 2.3)), 2.4) == ""
    reason = force_problem(window(np.full(65, 2.4)), 2.4)
    assert reason.startswith("force_over_limit:") and "2.40 N >= guard 2.40 N" in reason
    assert force_problem(window(np.full(65, -3.0)), 2.4).startswith("force_over_limit")  # pulling counts too


def test_only_the_newest_samples_count_and_one_spike_does_not_trip_the_guard():
    force = np.full(65, 1.0)
    force[:-RECENT_SAMPLES] = 5.0  # an old excursion that has passed
    assert force_problem(window(force), 2.4) == ""
    force = np.full(65, 1.0)
    force[-1] = 10.0  # a single noisy sample
    assert force_problem(window(force), 2.4) == ""
    force[-RECENT_SAMPLES // 2 - 1 :] = 3.0  # most of the newest samples: a real rise
    assert force_problem(window(force), 2.4).startswith("force_over_limit")


def test_force_channels_combine_as_a_vector_magnitude():
    samples = np.zeros((65, 6), np.float32)
    samples[:, 0:3] = 1.6  # each axis under the guard, |F| = 2.77 N over it
    assert force_problem(samples, 2.4, force_channels=1) == ""
    assert "2.77 N" in force_problem(samples, 2.4, force_channels=3)


def test_a_zero_guard_disables_it_and_empty_windows_are_left_to_the_window_checks():
    assert force_problem(window(np.full(65, 50.0)), 0.0) == ""
    assert force_problem(None, 2.4) == ""
    assert force_problem(np.zeros((0, 4), np.float32), 2.4) == ""


def test_the_default_guard_sits_below_the_simulated_task_limit():
    from sim.config import RigConfig

    assert DEFAULT_FORCE_GUARD_N == pytest.approx(0.8 * RigConfig().task.force_limit_n)


def test_check_inputs_holds_on_force_but_waiting_and_stale_features_come_first():
    over = force_problem(window(np.full(65, 3.0)), 2.4)
    features = FeatureInfo(sequence=1, stamp_ns=S, fingerprint="fp")
    decision = check_inputs(2 * S, features, expected_fingerprint="fp", max_age_ns=3 * S, force_problem=over)
    assert decision.status == ChunkStatus.HOLD and decision.code == "force_over_limit"
    assert decision.vl_age_s == pytest.approx(1.0)
    waiting = check_inputs(2 * S, None, expected_fingerprint="fp", max_age_ns=3 * S, force_problem=over)
    assert waiting.status == ChunkStatus.WAITING
    stale = check_inputs(9 * S, features, expected_fingerprint="fp", max_age_ns=3 * S, force_problem=over)
    assert stale.code == "vl_features_stale"
