"""Safety layer between the policy and the robot: step limits and a rate limit, counted (no rclpy).

Step limit: every action value ``a[j, d]`` is clipped to ``[-step_limit[d], step_limit[d]]``.
Rate limit: the change between consecutive steps is at most ``rate_limit[d]`` per step, including the
change from the step commanded in the previous period (the previous chunk's first step, zero after a
hold or at start) to this chunk's first step; so motion ramps up from rest and never jumps between chunks.
Every clipped value is counted; nothing is changed silently. A limit of ``inf`` disables that dimension.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SafetyResult:
    """Actions after the safety layer and how many values each limit changed."""

    actions: np.ndarray
    step_clipped: int
    rate_clipped: int
    clipped: int
    """Action values changed by any limit (a value changed by both counts once)."""


class SafetyLimiter:
    """Applies per-dimension step and rate limits to ``[H, D]`` chunks; remembers the last commanded step."""

    def __init__(self, step_limits: Sequence[float], rate_limits: Sequence[float]) -> None:
        step = np.asarray(step_limits, dtype=np.float32)
        rate = np.asarray(rate_limits, dtype=np.float32)
        if step.ndim != 1 or step.shape != rate.shape or step.size == 0:
            raise ValueError(
                f"step and rate limits need one value per action dimension, got {step.shape}, {rate.shape}"
            )
        if (step <= 0).any() or (rate <= 0).any() or np.isnan(step).any() or np.isnan(rate).any():
            raise ValueError("step and rate limits must be positive (inf disables a limit)")
        self.step_limits = step
        self.rate_limits = rate
        self._previous = np.zeros(step.size, np.float32)
        self.total_clipped = 0
        self.chunks_clipped = 0

    @property
    def dims(self) -> int:
        """Number of action dimensions."""
        return int(self.step_limits.size)

    def reset(self) -> None:
        """Forget the previous command (the robot is at rest): after a hold, deactivation or start."""
        self._previous = np.zeros(self.dims, np.float32)

    def apply(self, actions: np.ndarray) -> SafetyResult:
        """Limit a finite ``[H, D]`` chunk; updates the counters and the remembered first step."""
        # float32 throughout, like the message: a float32 0.1 must not count as clipped by a float64 0.1 limit
        actions = np.asarray(actions, dtype=np.float32)
        if actions.ndim != 2 or actions.shape[1] != self.dims:
            raise ValueError(f"actions must be [H, {self.dims}], got {actions.shape}")
        if not np.isfinite(actions).all():
            raise ValueError("the safety layer takes finite actions only (hold on non-finite output first)")
        stepped = np.clip(actions, -self.step_limits, self.step_limits)
        step_changed = stepped != actions
        limited = np.empty_like(stepped)
        reference = self._previous
        for j in range(stepped.shape[0]):
            limited[j] = np.clip(stepped[j], reference - self.rate_limits, reference + self.rate_limits)
            reference = limited[j]
        rate_changed = limited != stepped
        changed = int((step_changed | rate_changed).sum())
        self._previous = limited[0].copy()
        self.total_clipped += changed
        self.chunks_clipped += int(changed > 0)
        return SafetyResult(limited, int(step_changed.sum()), int(rate_changed.sum()), changed)
