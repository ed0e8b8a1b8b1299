"""The numbers and names the whole system shares (DESIGN.md "Numbers that define the system").

Each constant lives here once; node parameters, model configs and the rig take their defaults from it.
Units: lengths in mm, angles in rad, times in s (stamps in integer ns), forces in N.
"""

from __future__ import annotations

NS_PER_S = 1_000_000_000
"""Nanoseconds per second (ROS stamps are integer nanoseconds)."""

CAMERA_NAMES: tuple[str, ...] = ("view1", "view2", "view3", "view4", "view5")
"""Camera names in model input order; ``view5`` is the top/tool view."""

ACTION_NAMES: tuple[str, ...] = ("dx", "dy", "dz", "drx", "dry", "drz", "gripper")
"""The 7 action dimensions, in order (mm, mm, mm, rad, rad, rad, unitless)."""

ACTION_PERIOD_S = 0.1
"""Action-expert tick period (10 Hz); also the step dt of an action chunk."""

SENSOR_RATE_HZ = 650.0
"""Force/OCT sensor sample rate."""

POSE_RATE_HZ = 100.0
"""Rate of the measured robot pose stream on the rig."""

CAMERA_RATE_HZ = 10.0
"""Camera frame rate on the simulated rig."""

GRIPPER_DEFAULT = 1.0
"""Gripper value of a pose whose source carries none (``PoseStamped``, legacy CSVs, bags): the same
everywhere, so a ``state_dim: 7`` policy sees in training what it sees on the robot."""

DEFAULT_STEP_LIMITS: tuple[float, ...] = (2.0, 2.0, 2.0, 0.05, 0.05, 0.05, 1.0)
"""Largest |value| per action dimension per step (mm, rad, gripper): the safety layer's default."""

DEFAULT_RATE_LIMITS: tuple[float, ...] = (0.5, 0.5, 0.5, 0.02, 0.02, 0.02, 1.0)
"""Largest change per dimension between consecutive steps and chunks: the safety layer's default."""
