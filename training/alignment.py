"""Causal, timestamp-aligned sample construction (pure numpy, no I/O).

For a control tick ``t`` and a feature time ``t0 = t - k * dt``:

- images: per camera, the newest frame whose capture stamp is ``<= t0``;
- sensor window: the ``W`` newest samples whose stamp is ``<= t`` (never a sample after the tick);
- robot state: the newest recorded pose at or before ``t`` (what the robot actually did);
- target chunk: ``H`` per-step deltas ``pose(t + j*dt) -> pose(t + (j+1)*dt)`` from
  :func:`models.pose_math.pose_delta`, with poses interpolated at those times (linear position and
  gripper, constant-angular-velocity rotation: ``R(a) = exp(a * log(R1 R0^T)) R0``, which is slerp).
  Times after the last recorded pose hold the last pose (the robot is held still) and the steps that end
  after it are marked ``False`` in the action mask.
"""

from __future__ import annotations

import numpy as np

from models.pose_math import matrix_to_rotvec, pose_delta, rotvec_to_matrix


def interpolate_poses(stamps_ns: np.ndarray, poses: np.ndarray, times_ns: np.ndarray) -> np.ndarray:
    """Poses [len(times), 7] at ``times_ns``; times outside the stream clamp to its first/last pose."""
    stamps_ns = np.asarray(stamps_ns, dtype=np.int64)
    poses = np.asarray(poses, dtype=np.float64)
    times_ns = np.asarray(times_ns, dtype=np.int64).reshape(-1)
    if stamps_ns.shape[0] == 0:
        raise ValueError("no poses to interpolate")
    clamped = np.clip(times_ns, stamps_ns[0], stamps_ns[-1])
    upper = np.searchsorted(stamps_ns, clamped, side="left")  # first stamp >= time
    upper = np.clip(upper, 0, stamps_ns.shape[0] - 1)
    exact = stamps_ns[upper] == clamped
    lower = np.where(exact, upper, np.maximum(upper - 1, 0))
    span = (stamps_ns[upper] - stamps_ns[lower]).astype(np.float64)
    alpha = np.where(span > 0, (clamped - stamps_ns[lower]) / np.where(span > 0, span, 1.0), 0.0)
    p0, p1 = poses[lower], poses[upper]
    out = np.empty((times_ns.shape[0], poses.shape[1]), dtype=np.float64)
    out[:, 0:3] = p0[:, 0:3] + alpha[:, None] * (p1[:, 0:3] - p0[:, 0:3])
    r0 = rotvec_to_matrix(p0[:, 3:6])
    relative = matrix_to_rotvec(rotvec_to_matrix(p1[:, 3:6]) @ np.swapaxes(r0, -1, -2))
    out[:, 3:6] = matrix_to_rotvec(rotvec_to_matrix(alpha[:, None] * relative) @ r0)
    out[:, 6:] = p0[:, 6:] + alpha[:, None] * (p1[:, 6:] - p0[:, 6:])
    # Exact stamps return the recorded pose bit for bit (no round trip through matrices).
    out[exact] = poses[upper[exact]]
    return out


def target_chunk(
    stamps_ns: np.ndarray, poses: np.ndarray, tick_ns: int, horizon: int, dt_ns: int
) -> tuple[np.ndarray, np.ndarray]:
    """Target actions [H, 7] float32 and action mask [H] bool for the tick ``tick_ns``.

    Step ``j`` is ``pose_delta(pose(t + j*dt), pose(t + (j+1)*dt))``; a step is valid (mask True) only if
    ``t + (j+1)*dt`` is at or before the last pose stamp.
    """
    times = int(tick_ns) + np.arange(horizon + 1, dtype=np.int64) * int(dt_ns)
    path = interpolate_poses(stamps_ns, poses, times)
    actions = pose_delta(path[:-1], path[1:]).astype(np.float32)
    mask = times[1:] <= int(np.asarray(stamps_ns)[-1])
    return actions, mask


def pose_at_or_before(stamps_ns: np.ndarray, poses: np.ndarray, time_ns: int) -> np.ndarray:
    """The newest recorded pose with stamp ``<= time_ns``: the robot state a controller had then.

    The first pose when every stamp is later.
    """
    index = max(frame_at_or_before(stamps_ns, time_ns), 0)
    return np.asarray(poses[index], dtype=np.float32)


def motion_since(stamps_ns: np.ndarray, poses: np.ndarray, capture_ns: int, state: np.ndarray) -> np.ndarray:
    """The robot's pose change from the features' capture to the tick: ``[6]`` float32 (mm, rad).

    ``state`` is the pose at the tick (:func:`pose_at_or_before` of the tick); the pose at capture is the
    newest recorded at or before ``capture_ns``, exactly what the node takes from its pose buffer.
    """
    then = pose_at_or_before(stamps_ns, poses, capture_ns)
    return pose_delta(then.astype(np.float64), np.asarray(state, np.float64))[:6].astype(np.float32)


def sensor_window_slice(stamps_ns: np.ndarray, tick_ns: int, window: int) -> slice | None:
    """Slice of the ``window`` newest samples with stamp ``<= tick_ns``; None when fewer exist."""
    end = int(np.searchsorted(stamps_ns, int(tick_ns), side="right"))
    if end < window:
        return None
    return slice(end - window, end)


def frame_at_or_before(stamps_ns: np.ndarray, time_ns: int) -> int:
    """Index of the newest frame with stamp ``<= time_ns``; -1 when there is none."""
    return int(np.searchsorted(stamps_ns, int(time_ns), side="right")) - 1


class EpisodeTimeline:
    """The tick grid of one episode: ticks ``first_tick_ns + i * dt_ns`` for ``i < num_ticks``.

    The first tick is the earliest time at which a full sensor window, a frame from every camera and a
    pose exist, and not before ``action_start_ns`` (``contracts.episode``); the last tick is at or before
    both the last pose and the last sensor sample. The ``context_ticks`` grid points before the first tick
    (negative indices) are feature times only: every camera has a frame there, but nothing is a target.
    """

    def __init__(
        self,
        sensor_stamps_ns: np.ndarray,
        pose_stamps_ns: np.ndarray,
        frame_stamps_ns: dict[str, np.ndarray],
        window: int,
        dt_ns: int,
        action_start_ns: int | None = None,
    ) -> None:
        self.dt_ns = int(dt_ns)
        self.context_ticks = 0
        candidates = [int(pose_stamps_ns[0]) if len(pose_stamps_ns) else None]
        candidates.append(int(sensor_stamps_ns[window - 1]) if len(sensor_stamps_ns) >= window else None)
        frames_from = [int(s[0]) if len(s) else None for s in frame_stamps_ns.values()]
        candidates += frames_from
        if any(c is None for c in candidates) or len(sensor_stamps_ns) == 0:
            self.first_tick_ns, self.num_ticks = 0, 0
            return
        self.first_tick_ns = max(candidates + ([int(action_start_ns)] if action_start_ns is not None else []))
        last = min(int(pose_stamps_ns[-1]), int(sensor_stamps_ns[-1]))
        self.num_ticks = max(0, (last - self.first_tick_ns) // self.dt_ns + 1)
        self.context_ticks = (self.first_tick_ns - max(frames_from)) // self.dt_ns

    def tick_ns(self, index: int) -> int:
        """Time of tick ``index``."""
        return self.first_tick_ns + int(index) * self.dt_ns
