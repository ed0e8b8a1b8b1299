"""Safety layer: step limits, rate limits between consecutive steps and chunks, counting."""

from __future__ import annotations

import numpy as np
import pytest

from insertion_vla_ros.runtime.safety import SafetyLimiter

INF = float("inf")


def test_within_limits_passes_unchanged():
    limiter = SafetyLimiter([1.0] * 3, [INF] * 3)
    chunk = np.full((8, 3), 0.5, np.float32)
    result = limiter.apply(chunk)
    np.testing.assert_array_equal(result.actions, chunk)
    assert result.clipped == 0 and limiter.total_clipped == 0


def test_step_limits_per_dimension_counted():
    limiter = SafetyLimiter([1.0, 0.1], [INF, INF])
    chunk = np.array([[2.0, 0.05], [-3.0, -0.2], [0.5, 0.1]], np.float32)
    result = limiter.apply(chunk)
    np.testing.assert_allclose(result.actions, [[1.0, 0.05], [-1.0, -0.1], [0.5, 0.1]])
    assert result.step_clipped == 3 and result.clipped == 3
    assert limiter.total_clipped == 3 and limiter.chunks_clipped == 1


def test_rate_limit_ramps_from_rest_and_between_chunks():
    limiter = SafetyLimiter([10.0], [0.5])
    first = limiter.apply(np.full((4, 1), 2.0))
    np.testing.assert_allclose(first.actions[:, 0], [0.5, 1.0, 1.5, 2.0])
    assert first.rate_clipped == 3
    # next chunk starts from the previous chunk's first step (0.5), not from its last
    second = limiter.apply(np.full((2, 1), 2.0))
    np.testing.assert_allclose(second.actions[:, 0], [1.0, 1.5])
    assert limiter.total_clipped == 3 + 2
    limiter.reset()  # after a hold the robot is at rest again
    np.testing.assert_allclose(limiter.apply(np.full((1, 1), -2.0)).actions[:, 0], [-0.5])


def test_value_clipped_by_both_limits_counts_once():
    limiter = SafetyLimiter([1.0], [0.25])
    result = limiter.apply(np.array([[5.0]]))
    assert result.step_clipped == 1 and result.rate_clipped == 1 and result.clipped == 1
    assert result.actions[0, 0] == pytest.approx(0.25)


def test_invalid_inputs_rejected():
    with pytest.raises(ValueError):
        SafetyLimiter([1.0, 1.0], [1.0])
    with pytest.raises(ValueError):
        SafetyLimiter([0.0], [1.0])
    limiter = SafetyLimiter([1.0], [1.0])
    with pytest.raises(ValueError):
        limiter.apply(np.array([[np.nan]]))
    with pytest.raises(ValueError):
        limiter.apply(np.zeros((2, 2)))
