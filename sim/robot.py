"""The arm holding the needle: follows delta-pose actions with 100 Hz integration and rate/workspace limits.

The pose is the needle tip in the base frame (see ``models.pose_math``); with a zero rotation vector the
needle points straight down (-z).
"""

from __future__ import annotations

import numpy as np

from models.pose_math import matrix_to_rotvec, rotvec_to_matrix
from sim.config import RobotConfig

NEEDLE_AXIS_LOCAL = np.array([0.0, 0.0, -1.0])
"""Direction the tip points in the tool frame (down at the zero rotation)."""


def needle_axis(pose: np.ndarray) -> np.ndarray:
    """Return the unit vector the needle points along (towards the tip), base frame."""
    return rotvec_to_matrix(np.asarray(pose, dtype=np.float64)[3:6]) @ NEEDLE_AXIS_LOCAL


class Robot:
    """Position-controlled arm: integrates the commanded delta at the control rate, with limits."""

    def __init__(self, config: RobotConfig, pose: np.ndarray) -> None:
        self.config = config
        self.pose = np.asarray(pose, dtype=np.float64).copy()
        self._lo = np.asarray(config.workspace_min_mm, dtype=np.float64)
        self._hi = np.asarray(config.workspace_max_mm, dtype=np.float64)

    @property
    def dt_s(self) -> float:
        """Integration step (1 / control rate)."""
        return 1.0 / self.config.control_rate_hz

    def substeps(self, duration_s: float) -> int:
        """Return how many control ticks a command of ``duration_s`` spans (at least one)."""
        if not np.isfinite(duration_s) or duration_s <= 0:
            raise ValueError(f"duration must be positive, got {duration_s}")
        return max(1, round(duration_s * self.config.control_rate_hz))

    def follow(self, delta: np.ndarray, duration_s: float) -> tuple[np.ndarray, bool]:
        """Move by ``delta`` spread uniformly over ``duration_s``; return (poses per tick [n, 7], limited).

        Velocities beyond the rate limits are scaled down (direction kept), positions are clamped to the
        workspace and rotations that would tilt the needle beyond ``max_tilt_rad`` are refused. ``limited``
        tells whether any limit acted.
        """
        delta = np.asarray(delta, dtype=np.float64).reshape(-1)
        if delta.shape[0] != 7 or not np.all(np.isfinite(delta)):
            raise ValueError(f"an action is 7 finite values, got {delta}")
        n = self.substeps(duration_s)
        dt = self.dt_s
        velocity = delta[0:3] / (n * dt)
        omega = delta[3:6] / (n * dt)
        limited = False
        speed = float(np.linalg.norm(velocity))
        if speed > self.config.max_speed_mm_s:
            velocity *= self.config.max_speed_mm_s / speed
            limited = True
        rate = float(np.linalg.norm(omega))
        if rate > self.config.max_angular_speed_rad_s:
            omega *= self.config.max_angular_speed_rad_s / rate
            limited = True
        pose = self.pose
        if rate == 0:  # pure translation: integrate all ticks at once
            steps = np.arange(1, n + 1)[:, None] * (velocity * dt)[None, :]
            # From inside the box at constant velocity, clamping the straight path equals clamping per tick.
            positions = np.clip(pose[0:3] + steps, self._lo, self._hi)
            limited = limited or not np.allclose(positions, pose[0:3] + steps, rtol=0, atol=1e-12)
            poses = np.empty((n, 7))
            poses[:, 0:3] = positions
            poses[:, 3:6] = pose[3:6]
            poses[:, 6] = delta[6]
            self.pose = poses[-1].copy()
            return poses, limited
        step_rot = rotvec_to_matrix(omega * dt)
        poses = np.empty((n, 7))
        rot = rotvec_to_matrix(pose[3:6])
        for i in range(n):
            position = pose[0:3] + velocity * dt
            bounded = np.clip(position, self._lo, self._hi)
            limited = limited or not np.array_equal(bounded, position)
            new_rot = step_rot @ rot
            tilt = np.arccos(np.clip(-(new_rot @ NEEDLE_AXIS_LOCAL)[2], -1.0, 1.0))
            if tilt > self.config.max_tilt_rad:
                new_rot, limited = rot, True
            rot = new_rot
            pose = np.concatenate([bounded, matrix_to_rotvec(rot), [delta[6]]])
            poses[i] = pose
        self.pose = pose
        return poses, limited
