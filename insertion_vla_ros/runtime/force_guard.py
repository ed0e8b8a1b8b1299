"""Force guard: HOLD while the measured needle force is at or above a threshold (no rclpy).

The policy is trained to stay under the task's force limit but nothing makes it; the guard does. It reads
the force channel of the same causal sensor window the policy sees and takes the median of the newest few
samples, so one noisy sample neither trips it nor hides a real rise. Holding is the safe action here: at
rest the motion-driven load (friction, cutting) stops and nothing pushes the force higher, and the tick
after the force drops below the threshold the policy is back in command. A load that does not relax (the
tissue deflected sideways) keeps the robot holding until an operator takes over; the guard never moves it.
"""

from __future__ import annotations

import numpy as np

DEFAULT_FORCE_GUARD_N = 2.4
"""Default threshold: 80 % of the simulated task's 3 N force limit (set a robot's own in its YAML)."""

RECENT_SAMPLES = 7
"""Samples in the median (about 11 ms at 650 Hz)."""


def force_problem(
    samples: np.ndarray | None, guard_n: float, force_channels: int = 1, recent: int = RECENT_SAMPLES
) -> str:
    """``""`` when the recent force is below ``guard_n``; else a ``force_over_limit: ...`` HOLD reason.

    ``samples`` is a sensor window ``[T, C]`` (oldest first) whose first ``force_channels`` channels are
    force in newtons (the model's ``sensor.force_channels``); their per-channel medians are combined as a
    vector magnitude. ``guard_n <= 0`` disables the guard. An empty or missing window is left to the window
    checks (it returns ``""``). The magnitude counts: pulling a needle out against a large friction load is
    no safer than pushing it in.
    """
    if guard_n <= 0 or samples is None or len(samples) == 0:
        return ""
    recent_force = np.asarray(samples)[-recent:, :force_channels]
    force = float(np.linalg.norm(np.median(recent_force, axis=0)))
    if not np.isfinite(force) or force < guard_n:
        return ""
    return f"force_over_limit: |force| {force:.2f} N >= guard {guard_n:.2f} N (holding until it drops)"
