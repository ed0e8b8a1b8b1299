"""Small synthetic data with known motion, for tests, benchmarks and smoke runs.

``synthetic_pose(t, speed)`` is the ground-truth motion: the tool advances at constant velocity (``speed``
mm/s along x) and turns about a fixed tilted axis at ``0.2 * speed`` deg/s, so every target is known in
closed form and pose interpolation between samples is exact. The sensor's force channel reads
``speed / 10`` N (plus small noise), so a policy can learn the motion from the sensor window; frames show
a bar that moves with time (the same in every episode), so memorising episodes by image does not help.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from contracts.constants import CAMERA_NAMES, GRIPPER_DEFAULT, SENSOR_RATE_HZ
from contracts.episode import EpisodeWriter, encode_jpeg

_AXIS = np.array([0.3, -0.2, 1.0]) / np.linalg.norm([0.3, -0.2, 1.0])


def synthetic_pose(t_s: np.ndarray | float, speed: float) -> np.ndarray:
    """Ground-truth pose(s) [..., 7] at time(s) ``t_s`` (seconds since the episode start)."""
    t = np.asarray(t_s, dtype=np.float64)[..., None]
    position = np.concatenate([speed * t, 0.4 * t, -0.25 * t], axis=-1)
    rotation = _AXIS * (np.deg2rad(0.2 * speed) * t + 0.1)
    return np.concatenate([position, rotation, np.full_like(t, GRIPPER_DEFAULT)], axis=-1)


def synthetic_frame(speed: float, index: int, size: int = 112) -> np.ndarray:
    """Draw frame ``index``: a fixed background with a bar that moves with the index (``speed`` unused)."""
    del speed
    frame = np.zeros((size, size, 3), dtype=np.uint8)
    frame[..., 0] = 120
    frame[..., 1] = 80
    frame[..., 2] = 200
    column = (index * 3) % size
    frame[:, column : column + 4] = 255
    return frame


def make_synthetic_episode(
    path: str | os.PathLike,
    speed: float = 5.0,
    duration_s: float = 3.0,
    start_ns: int = 1_700_000_000_000_000_000,
    cameras: Sequence[str] = CAMERA_NAMES,
    camera_hz: float = 10.0,
    camera_offsets_s: Sequence[float] | None = None,
    sensor_hz: float = SENSOR_RATE_HZ,
    pose_hz: float = 100.0,
    channels: int = 1026,
    image_size: int = 112,
    instruction: str = "Perform Red_point insertion task",
    seed: int = 0,
    action_start_s: float | None = None,
) -> Path:
    """Write an episode with known motion; camera ``i`` starts ``camera_offsets_s[i]`` after the start.

    ``action_start_s``: the episode's ``action_start_ns``, seconds after the start (None: not set).
    """
    rng = np.random.default_rng(seed)
    offsets = (
        list(camera_offsets_s) if camera_offsets_s is not None else [0.013 * i for i in range(len(cameras))]
    )
    writer = EpisodeWriter(
        path,
        instruction,
        list(cameras),
        sensor_rate_hz=sensor_hz,
        pose_rate_hz=pose_hz,
        num_sensor_channels=channels,
        source="synthetic",
        metadata={"speed": speed},
        action_start_ns=None if action_start_s is None else start_ns + round(action_start_s * 1e9),
    )
    for camera, offset in zip(cameras, offsets):
        times = np.arange(offset, duration_s, 1.0 / camera_hz)
        for i, t in enumerate(times):
            writer.add_jpeg(
                camera, start_ns + round(t * 1e9), encode_jpeg(synthetic_frame(speed, i, image_size))
            )
    sensor_t = np.arange(0.0, duration_s, 1.0 / sensor_hz)
    sensor = 0.05 * rng.standard_normal((sensor_t.shape[0], channels)).astype(np.float32)
    sensor[:, 0] += speed / 10.0
    sensor[:, 1:] += np.float32(0.01 * speed)
    writer.add_sensor(start_ns + np.round(sensor_t * 1e9).astype(np.int64), sensor)
    pose_t = np.arange(0.0, duration_s, 1.0 / pose_hz)
    for t, pose in zip(pose_t, synthetic_pose(pose_t, speed)):
        writer.add_pose(start_ns + round(t * 1e9), pose)
    return writer.close()


def make_synthetic_dataset(
    root: str | os.PathLike, num_episodes: int = 6, duration_s: float = 3.0, seed: int = 0, **kwargs
) -> list[Path]:
    """``num_episodes`` synthetic episodes with speeds spread over [2, 10] mm/s."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    speeds = np.linspace(2.0, 10.0, num_episodes) if num_episodes > 1 else np.array([5.0])
    return [
        make_synthetic_episode(
            root / f"episode_{i:03d}", speed=float(s), duration_s=duration_s, seed=seed + i, **kwargs
        )
        for i, s in enumerate(speeds)
    ]
