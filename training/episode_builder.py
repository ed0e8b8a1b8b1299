"""Clean raw streams from any converter and write them as one episode, recording every repair.

Policy for bad data (the README documents the same):

- unreadable frame: dropped (repair); a camera left without frames skips the episode;
- missing camera: skips the episode (the model needs every view);
- non-monotonic stamps (any stream): samples sorted by stamp, exact duplicate stamps dropped (repair);
- non-finite sensor rows / pose rows: dropped (repair); more than ``max_nan_fraction`` of them skips;
- too short: streams overlapping for less than ``min_duration_s`` (or fewer sensor samples than one
  window) skips the episode.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contracts.constants import NS_PER_S, SENSOR_RATE_HZ
from contracts.episode import EpisodeWriter
from training.conversion_report import EpisodeReport

FrameLoader = Callable[[], bytes]
"""Returns a frame as JPEG bytes, or raises ImageDecodeError/OSError when the frame is unreadable."""


@dataclass
class CleaningPolicy:
    """Thresholds for skipping episodes."""

    min_duration_s: float = 1.0
    max_nan_fraction: float = 0.1
    min_sensor_samples: int = 65


@dataclass
class RawEpisode:
    """Streams as a converter read them, before cleaning."""

    name: str
    instruction: str
    cameras: list[str]
    frames: dict[str, list[tuple[int, FrameLoader]]] = field(default_factory=dict)
    sensor_stamps_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    sensor: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    sensor_rate_hz: float = SENSOR_RATE_HZ
    pose_stamps_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    poses: np.ndarray = field(default_factory=lambda: np.zeros((0, 7), np.float64))
    source: str = "unknown"
    metadata: dict = field(default_factory=dict)


def _sort_unique(stamps: np.ndarray, label: str, report: EpisodeReport) -> np.ndarray:
    """Return indices that put ``stamps`` in strictly increasing order (first of each duplicate kept)."""
    stamps = np.asarray(stamps, dtype=np.int64)
    if stamps.shape[0] < 2 or np.all(np.diff(stamps) > 0):
        return np.arange(stamps.shape[0])
    order = np.argsort(stamps, kind="stable")
    keep = np.concatenate([[True], np.diff(stamps[order]) > 0])
    out_of_order = int(np.sum(np.diff(stamps) <= 0))
    report.repairs.append(
        f"{label}: stamps not strictly increasing ({out_of_order} places); sorted by stamp, "
        f"{int((~keep).sum())} duplicate stamps dropped"
    )
    return order[keep]


def _finite_rows(
    values: np.ndarray, label: str, report: EpisodeReport, policy: CleaningPolicy
) -> np.ndarray | None:
    """Mask of finite rows; None (and the episode skipped) when too many rows are bad."""
    finite = np.isfinite(values).all(axis=1) if values.size else np.ones(values.shape[0], bool)
    bad = int((~finite).sum())
    if bad:
        fraction = bad / max(1, values.shape[0])
        if fraction > policy.max_nan_fraction:
            report.skip(f"{label}: {bad}/{values.shape[0]} rows non-finite (> {policy.max_nan_fraction:.0%})")
            return None
        report.repairs.append(f"{label}: {bad} non-finite rows dropped")
    return finite


def build_episode(
    raw: RawEpisode, out_dir: str | os.PathLike, report: EpisodeReport, policy: CleaningPolicy | None = None
) -> Path | None:
    """Clean ``raw`` and write it under ``out_dir/raw.name``; None when skipped (reason in ``report``)."""
    policy = policy or CleaningPolicy()
    report.counts.update(
        sensor_samples=int(raw.sensor_stamps_ns.shape[0]),
        poses=int(raw.pose_stamps_ns.shape[0]),
        frames_read={c: len(raw.frames.get(c, [])) for c in raw.cameras},
    )
    missing = [c for c in raw.cameras if not raw.frames.get(c)]
    if missing:
        report.skip(f"no frames for camera(s) {missing}")
        return None

    finite = _finite_rows(raw.sensor, "sensor", report, policy)
    if finite is None:
        return None
    sensor_stamps, sensor = raw.sensor_stamps_ns[finite], raw.sensor[finite]
    order = _sort_unique(sensor_stamps, "sensor", report)
    sensor_stamps, sensor = sensor_stamps[order], sensor[order]

    finite = _finite_rows(raw.poses, "pose", report, policy)
    if finite is None:
        return None
    pose_stamps, poses = raw.pose_stamps_ns[finite], raw.poses[finite]
    order = _sort_unique(pose_stamps, "pose", report)
    pose_stamps, poses = pose_stamps[order], poses[order]

    frames: dict[str, list[tuple[int, bytes]]] = {}
    for camera in raw.cameras:
        readable: list[tuple[int, bytes]] = []
        unreadable: list[str] = []
        for stamp, loader in raw.frames[camera]:
            try:
                readable.append((int(stamp), loader()))
            except (OSError, ValueError) as error:
                unreadable.append(str(error))
        if unreadable:
            report.repairs.append(
                f"camera {camera}: {len(unreadable)} unreadable frames dropped ({unreadable[0]})"
            )
        if not readable:
            report.skip(f"camera {camera}: no readable frames")
            return None
        order = _sort_unique(np.array([s for s, _ in readable]), f"camera {camera}", report)
        frames[camera] = [readable[i] for i in order]

    if sensor_stamps.shape[0] < policy.min_sensor_samples or pose_stamps.shape[0] < 2:
        report.skip(f"too short: {sensor_stamps.shape[0]} sensor samples, {pose_stamps.shape[0]} poses")
        return None
    start = max([int(sensor_stamps[0]), int(pose_stamps[0])] + [f[0][0] for f in frames.values()])
    end = min(int(sensor_stamps[-1]), int(pose_stamps[-1]))
    duration = (end - start) / NS_PER_S
    report.counts["overlap_s"] = round(duration, 3)
    if duration < policy.min_duration_s:
        report.skip(f"too short: streams overlap {duration:.2f} s < {policy.min_duration_s} s")
        return None

    report.counts.update(
        sensor_samples_written=int(sensor_stamps.shape[0]),
        poses_written=int(pose_stamps.shape[0]),
        frames_written={c: len(f) for c, f in frames.items()},
    )
    writer = EpisodeWriter(
        Path(out_dir) / raw.name,
        instruction=raw.instruction,
        cameras=raw.cameras,
        sensor_rate_hz=raw.sensor_rate_hz,
        num_sensor_channels=int(sensor.shape[1]),
        source=raw.source,
        metadata=raw.metadata,
    )
    try:
        for camera, camera_frames in frames.items():
            for stamp, jpeg in camera_frames:
                writer.add_jpeg(camera, stamp, jpeg)
        writer.add_sensor(sensor_stamps, sensor)
        for stamp, pose in zip(pose_stamps, poses):
            writer.add_pose(int(stamp), pose)
        path = writer.close(extra_metadata={"repairs": list(report.repairs)})
    except BaseException:
        writer.abort()
        raise
    report.status = "converted"
    return path
