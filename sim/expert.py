"""Scripted expert: solves the insertion task from ground truth (for demonstrations and the benchmark).

Strategy: rise/descend to a hover height while moving over the instructed target, then descend at an
approach speed to just above the surface and insert at a slow constant speed until the tip reaches the
target depth, then hold. Its decisions depend only on the tip pose and the scene, so a chunk of future
steps is a roll-out of the same rule through ``models.pose_math.apply_delta``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from contracts.constants import ACTION_PERIOD_S, GRIPPER_DEFAULT
from models.pose_math import apply_delta
from sim.scene import Scene

_ALIGNED_MM = 0.05
_AT_DEPTH_MM = 0.02


class ScriptedExpert:
    """Ground-truth expert emitting delta-pose actions ``[dx, dy, dz, drx, dry, drz, gripper]``.

    Speeds vary slightly per episode (drawn from ``seed``) so demonstrations are not all identical.
    """

    def __init__(
        self,
        scene: Scene,
        step_s: float = ACTION_PERIOD_S,
        seed: int = 0,
        gripper: float = GRIPPER_DEFAULT,
        target_xy: Callable[[], np.ndarray] | None = None,
    ) -> None:
        """``target_xy`` reports where the target is now (a moving phantom); default the scene's target."""
        rng = np.random.default_rng(seed)
        self.scene = scene
        self._target_xy = target_xy or (lambda: scene.target_xy_mm)
        self.step_s = step_s
        self.gripper = gripper
        self.hover_mm = float(rng.uniform(2.0, 3.0))
        self.lateral_speed_mm_s = float(rng.uniform(8.0, 11.0))
        self.approach_speed_mm_s = float(rng.uniform(3.5, 5.0))
        self.insert_speed_mm_s = float(rng.uniform(1.2, 1.8))
        self.slow_above_mm = 0.5

    def at_goal(self, pose: np.ndarray) -> bool:
        """Whether the tip is over the target at the target depth (the expert then holds still)."""
        pose = np.asarray(pose, dtype=np.float64)
        lateral = np.linalg.norm(pose[0:2] - self._target_xy())
        return bool(lateral <= _ALIGNED_MM and abs(-pose[2] - self.scene.target_depth_mm) <= _AT_DEPTH_MM)

    def act(self, pose: np.ndarray) -> np.ndarray:
        """Return the action for the next step from the tip ``pose`` (7-vector)."""
        pose = np.asarray(pose, dtype=np.float64)
        action = np.zeros(7)
        action[6] = self.gripper
        offset = self._target_xy() - pose[0:2]
        lateral = float(np.linalg.norm(offset))
        z = pose[2]
        if lateral > _ALIGNED_MM:
            # Never move sideways inside tissue: rise to the hover height first.
            step = self.lateral_speed_mm_s * self.step_s
            if z >= 0:
                action[0:2] = offset * min(1.0, step / lateral)
            action[2] = np.clip(
                self.hover_mm - z,
                -self.approach_speed_mm_s * self.step_s,
                self.approach_speed_mm_s * self.step_s,
            )
            return action
        action[0:2] = offset
        goal_z = -self.scene.target_depth_mm
        approaching = z > self.slow_above_mm + 1e-3
        speed = self.approach_speed_mm_s if approaching else self.insert_speed_mm_s
        dz = np.clip(goal_z - z, -speed * self.step_s, speed * self.step_s)
        if approaching and z + dz < self.slow_above_mm:
            dz = self.slow_above_mm - z
        action[2] = dz
        return action

    def chunk(self, pose: np.ndarray, horizon: int = 8) -> np.ndarray:
        """Return ``horizon`` consecutive actions [H, 7] rolled out from ``pose``, as a policy chunk."""
        pose = np.asarray(pose, dtype=np.float64).copy()
        actions = np.zeros((horizon, 7))
        for j in range(horizon):
            actions[j] = self.act(pose)
            if np.any(actions[j, 3:6]):
                pose = apply_delta(pose, actions[j])
            else:  # translation only: skip the rotation algebra (the expert never rotates from upright)
                pose = np.concatenate([pose[0:3] + actions[j, 0:3], pose[3:6], actions[j, 6:7]])
        return actions
