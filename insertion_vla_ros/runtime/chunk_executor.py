"""ROS-free pieces of the simulated closed loop: receding-horizon chunk execution and episode end rules.

Shared by the sim node (chunks from DDS), the in-process closed-loop benchmark and the tests, so the robot
is commanded by exactly the same rule everywhere:

* the newest chunk (by stamp) decides; a chunk whose status is not OK means hold still;
* step ``j = floor((t - stamp) / step_dt)`` of that chunk applies at time ``t`` (receding horizon: a new
  chunk every tick means only its first step(s) are ever executed);
* a chunk is stale, and the robot holds, once ``t - stamp`` exceeds ``max_chunk_age_s`` or the horizon;
* chunks predicted from VL features captured before the episode started (``stamp - vl_age_s``) describe
  another scene or instruction and are never executed;
* non-finite or mis-shaped actions are never executed.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from contracts.constants import NS_PER_S

STATUS_OK = 0


@dataclass(frozen=True)
class Chunk:
    """One received action chunk (what the executor needs of an ``ActionChunk``)."""

    stamp_ns: int
    actions: np.ndarray
    """``[H, D]`` float deltas per step (mm, rad, gripper)."""
    status: int
    step_dt_s: float
    vl_age_s: float = 0.0
    sequence: int = 0

    @property
    def feature_stamp_ns(self) -> int:
        """Capture time of the VL features the chunk was predicted from."""
        return self.stamp_ns - int(round(self.vl_age_s * NS_PER_S))


@dataclass
class ExecutorStats:
    """Counters of what the executor did per control tick."""

    received: int = 0
    rejected: int = 0
    moving_ticks: int = 0
    hold_ticks: int = 0
    hold_reasons: dict[str, int] = field(default_factory=dict)

    def hold(self, reason: str) -> None:
        """Count one held control tick."""
        self.hold_ticks += 1
        self.hold_reasons[reason] = self.hold_reasons.get(reason, 0) + 1


class ChunkExecutor:
    """Thread-safe receding-horizon follower of action chunks (see the module docstring)."""

    def __init__(self, action_dim: int = 7, max_chunk_age_s: float = 0.3) -> None:
        self.action_dim = int(action_dim)
        self.max_chunk_age_ns = int(round(max_chunk_age_s * NS_PER_S))
        self._lock = threading.Lock()
        self._newest: Chunk | None = None
        self.episode_start_ns = 0
        self.stats = ExecutorStats()
        self.last_reason = "no_chunk"

    def reset(self, episode_start_ns: int) -> None:
        """Forget every chunk: a new episode starts at ``episode_start_ns`` (ROS time)."""
        with self._lock:
            self._newest = None
            self.episode_start_ns = int(episode_start_ns)
            self.stats = ExecutorStats()
            self.last_reason = "no_chunk"

    def offer(self, chunk: Chunk) -> bool:
        """Take a chunk if it is newer than the current one; return whether it was taken."""
        actions = np.asarray(chunk.actions, dtype=np.float64)
        with self._lock:
            self.stats.received += 1
            if actions.ndim != 2 or actions.shape[1] != self.action_dim or actions.shape[0] < 1:
                self.stats.rejected += 1
                return False
            if self._newest is not None and chunk.stamp_ns <= self._newest.stamp_ns:
                self.stats.rejected += 1
                return False
            self._newest = Chunk(
                chunk.stamp_ns,
                actions,
                int(chunk.status),
                float(chunk.step_dt_s),
                float(chunk.vl_age_s),
                int(chunk.sequence),
            )
            return True

    @property
    def newest(self) -> Chunk | None:
        """The chunk currently in charge (``None`` before the first one of the episode)."""
        with self._lock:
            return self._newest

    def step_at(self, t_ns: int) -> tuple[np.ndarray | None, str]:
        """Return ``(action [D] for the step covering t, "")`` or ``(None, hold reason)``; counts the tick."""
        with self._lock:
            action, reason = self._select(int(t_ns))
            if action is None:
                self.stats.hold(reason)
            else:
                self.stats.moving_ticks += 1
            self.last_reason = reason
            return action, reason

    def _select(self, t_ns: int) -> tuple[np.ndarray | None, str]:
        chunk = self._newest
        if chunk is None:
            return None, "no_chunk"
        if chunk.status != STATUS_OK:
            return None, "chunk_not_ok"
        if chunk.feature_stamp_ns < self.episode_start_ns:
            return None, "features_before_episode"
        age_ns = t_ns - chunk.stamp_ns
        if age_ns < 0:
            return None, "chunk_from_future"
        if age_ns > self.max_chunk_age_ns:
            return None, "chunk_stale"
        step_ns = int(round(chunk.step_dt_s * NS_PER_S))
        if step_ns <= 0:
            return None, "chunk_invalid"
        j = age_ns // step_ns
        if j >= chunk.actions.shape[0]:
            return None, "chunk_exhausted"
        action = chunk.actions[j]
        if not np.all(np.isfinite(action)):
            return None, "chunk_nonfinite"
        return action.copy(), ""


def hold_action(gripper: float, action_dim: int = 7) -> np.ndarray:
    """Zero motion keeping the gripper where it is."""
    action = np.zeros(action_dim)
    if action_dim > 6:
        action[6] = gripper
    return action


def control_piece(action: np.ndarray, fraction: float) -> np.ndarray:
    """The part of a step's delta action covered by ``fraction`` of its duration (gripper is absolute)."""
    action = np.asarray(action, dtype=np.float64)
    piece = action * fraction
    if action.shape[0] > 6:
        piece[6:] = action[6:]
    return piece


DEFAULT_MAX_EPISODE_S = 20.0
"""Episode time limit (sim s). A learned policy inserts at the demonstrations' 1.2-1.8 mm/s and, at the
users' 1.5 s VLM latency, starts 3.2 s late: its settled episodes end after 10-20 s, so a 15 s limit cut a
third of them off while the needle was still descending."""


@dataclass
class EndRule:
    """When an episode is over: settled after inserting, force far beyond the limit, or out of time."""

    max_episode_s: float = DEFAULT_MAX_EPISODE_S
    settle_window_s: float = 1.0
    settle_motion_mm: float = 0.1
    min_depth_mm: float = 0.5
    force_abort_factor: float = 1.5

    def __post_init__(self) -> None:
        self._tips: deque[tuple[float, np.ndarray]] = deque()

    def reset(self) -> None:
        """Start watching a new episode."""
        self._tips.clear()

    def update(
        self, time_s: float, tip_mm: np.ndarray, depth_mm: float, max_force_n: float, force_limit_n: float
    ) -> str:
        """Feed the state after a control tick; return the end reason, or ``""`` to go on."""
        self._tips.append((time_s, np.asarray(tip_mm, dtype=np.float64).copy()))
        start = time_s - self.settle_window_s + 1e-9
        while len(self._tips) >= 2 and self._tips[1][0] <= start:  # keep one sample at the window start
            self._tips.popleft()
        if max_force_n > self.force_abort_factor * force_limit_n:
            return "force_abort"
        if time_s >= self.max_episode_s - 1e-9:
            return "timeout"
        if depth_mm >= self.min_depth_mm and self._tips[0][0] <= start:
            tips = np.stack([tip for _, tip in self._tips])
            if float(np.max(np.linalg.norm(tips - tips[-1], axis=1))) <= self.settle_motion_mm:
                return "settled"
        return ""
