"""Normalisation statistics from training episodes: sensor per channel, actions and state per dimension."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from training.alignment import motion_since, pose_at_or_before, target_chunk
from training.dataset import EpisodeData

CONSTANT_ACTION_STD = 1e-6
"""Scale of an action dimension that never varies in the training data (the smallest std a policy takes)."""


class _Moments:
    """Streaming mean/std in float64."""

    def __init__(self, dim: int) -> None:
        self.n = 0
        self.total = np.zeros(dim)
        self.total_sq = np.zeros(dim)

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.float64)
        self.n += rows.shape[0]
        self.total += rows.sum(axis=0)
        self.total_sq += (rows**2).sum(axis=0)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n == 0:
            raise ValueError("no data to compute normalisation statistics from")
        mean = self.total / self.n
        std = np.sqrt(np.maximum(self.total_sq / self.n - mean**2, 0.0))
        return mean.astype(np.float32), std.astype(np.float32)


def _sampled_ks(age_weights: tuple[float, ...] | None, reuse: int) -> list[int]:
    """Three k the samplers draw (youngest, middle, oldest): enough for the motion's spread."""
    allowed = [k for k, w in enumerate(age_weights) if w > 0] if age_weights else list(range(reuse))
    return sorted({allowed[0], allowed[len(allowed) // 2], allowed[-1]})


def compute_normalization(
    episodes: Sequence[EpisodeData],
    max_sensor_rows: int = 200_000,
    max_ticks: int = 20_000,
    chunk: int = 8192,
) -> dict[str, np.ndarray]:
    """Normalisation statistics of the training episodes.

    Mean/std of sensor samples ``[C]``, valid target steps ``[D]``, robot poses at the ticks ``[7]`` and the
    motion since capture ``[6]`` over the ages the episodes' alignment samples.

    Keys: ``sensor_mean/std``, ``action_mean/std``, ``state_mean/std``, ``motion_mean/std``.

    Large datasets are subsampled with a fixed stride (deterministic). Zero-variance sensor channels and
    state dimensions get std 1, so normalisation leaves them unscaled. Zero-variance action dimensions
    (e.g. no rotation in any demonstration) get ``CONSTANT_ACTION_STD`` instead: the policy then reproduces
    the constant. With std 1 its small residual output (~0.02 in normalised units) came out as 0.02 rad per
    step, which integrated over an episode until the tool hit its tilt limit.
    """
    total_rows = sum(ep.sensor.shape[0] for ep in episodes)
    row_stride = max(1, total_rows // max_sensor_rows)
    sensor = _Moments(episodes[0].num_channels)
    for ep in episodes:
        for start in range(0, ep.sensor.shape[0], chunk * row_stride):
            sensor.add(ep.sensor[start : start + chunk * row_stride : row_stride])
    total_ticks = sum(ep.num_ticks for ep in episodes)
    tick_stride = max(1, total_ticks // max_ticks)
    actions = None
    states = _Moments(episodes[0].pose.shape[1])
    motions = _Moments(6)
    for ep in episodes:
        cfg = ep.config
        ks = _sampled_ks(cfg.age_weights, cfg.reuse)
        for tick in range(0, ep.num_ticks, tick_stride):
            tick_ns = ep.timeline.tick_ns(tick)
            chunk_actions, mask = target_chunk(ep.pose_stamps_ns, ep.pose, tick_ns, cfg.horizon, cfg.dt_ns)
            if actions is None:
                actions = _Moments(chunk_actions.shape[1])
            actions.add(chunk_actions[mask])
            state = pose_at_or_before(ep.pose_stamps_ns, ep.pose, tick_ns)
            states.add(state[None])
            for k in (k for k in ks if k <= tick + ep.context_ticks):
                capture = ep.feature_ref(ep.timeline.tick_ns(tick - k)).newest_stamp_ns
                motions.add(motion_since(ep.pose_stamps_ns, ep.pose, capture, state)[None])
    if actions is None:
        raise ValueError("the training episodes have no ticks")
    sensor_mean, sensor_std = sensor.result()
    action_mean, action_std = actions.result()
    state_mean, state_std = states.result()
    motion_mean, motion_std = motions.result() if motions.n else (np.zeros(6), np.ones(6))
    return {
        "motion_mean": motion_mean.astype(np.float32),
        "motion_std": np.where(motion_std > 1e-6, motion_std, 1.0).astype(np.float32),
        "sensor_mean": sensor_mean,
        "sensor_std": np.where(sensor_std > 1e-6, sensor_std, 1.0).astype(np.float32),
        "action_mean": action_mean,
        "action_std": np.where(action_std > 1e-6, action_std, CONSTANT_ACTION_STD).astype(np.float32),
        "state_mean": state_mean,
        "state_std": np.where(state_std > 1e-6, state_std, 1.0).astype(np.float32),
    }
