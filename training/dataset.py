"""Training datasets over episode folders: single ticks (Stage 1) and groups of R ticks sharing t0 (Stage 2).

A sample is addressed by ``(episode, tick, k)``: tick ``t`` on the episode's 100 ms grid and a feature time
``t0 = t - k*dt`` (also on the grid). All randomness (which k) lives in :mod:`training.sampler`, so a
dataset item is a pure function of its address and resuming a run replays the same samples.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contracts.constants import ACTION_PERIOD_S, NS_PER_S
from contracts.episode import Episode, EpisodeFormatError
from training.alignment import (
    EpisodeTimeline,
    frame_at_or_before,
    motion_since,
    pose_at_or_before,
    sensor_window_slice,
    target_chunk,
)


@dataclass(frozen=True)
class AlignmentConfig:
    """How ticks, windows, targets and staleness are laid out (defaults = DESIGN.md numbers)."""

    window: int = 65
    horizon: int = 8
    dt_s: float = ACTION_PERIOD_S
    reuse: int = 17
    """R: ticks that share one VL feature (VLM period / action period)."""
    age_weights: tuple[float, ...] | None = None
    """Optional probabilities of k = 0..len-1 (max age (len-1)*dt); None = uniform over [0, R)."""
    group_offset: int = 0
    """Stage 2: the R ticks sharing a feature are k = offset .. offset + R - 1 after it (the VLM latency)."""

    @property
    def dt_ns(self) -> int:
        """Tick period in ns."""
        return round(self.dt_s * NS_PER_S)

    @property
    def max_k(self) -> int:
        """Largest staleness step k that can be sampled."""
        return (len(self.age_weights) if self.age_weights else self.reuse) - 1


@dataclass(frozen=True)
class FeatureRef:
    """Which images (and instruction) one VL feature is computed from; the feature cache key source."""

    episode: str
    cameras: tuple[str, ...]
    frame_indices: tuple[int, ...]
    frame_stamps_ns: tuple[int, ...]
    instruction: str
    content_id: str = ""
    """The episode's ``Episode.content_id``: folder names alone are not unique across recordings."""

    @property
    def newest_stamp_ns(self) -> int:
        """Capture time of the newest image used (the feature's age reference)."""
        return max(self.frame_stamps_ns)


class EpisodeData:
    """One episode opened for sampling: stamps and poses in memory, sensor samples memory-mapped."""

    def __init__(
        self, path: str | os.PathLike, config: AlignmentConfig, cameras: Sequence[str] | None = None
    ):
        self.episode = Episode(path)
        problems = self.episode.problems()
        if problems:
            raise EpisodeFormatError(f"{self.episode.path}: " + "; ".join(problems))
        self.config = config
        self.name = self.episode.name
        self.instruction = self.episode.instruction
        self.cameras = tuple(cameras) if cameras is not None else tuple(self.episode.cameras)
        missing = [c for c in self.cameras if c not in self.episode.cameras]
        if missing:
            raise EpisodeFormatError(f"{self.name}: cameras {missing} not in episode {self.episode.cameras}")
        self.sensor = self.episode.sensor
        self.sensor_stamps_ns = np.asarray(self.episode.sensor_stamps_ns)
        self.pose = np.asarray(self.episode.pose)
        self.pose_stamps_ns = np.asarray(self.episode.pose_stamps_ns)
        self.frame_stamps_ns = {c: np.asarray(self.episode.frame_stamps_ns(c)) for c in self.cameras}
        self.timeline = EpisodeTimeline(
            self.sensor_stamps_ns,
            self.pose_stamps_ns,
            self.frame_stamps_ns,
            config.window,
            config.dt_ns,
            self.episode.action_start_ns,
        )

    @property
    def num_ticks(self) -> int:
        """Number of ticks on this episode's grid."""
        return self.timeline.num_ticks

    @property
    def context_ticks(self) -> int:
        """Feature times before the first tick (``EpisodeTimeline.context_ticks``): k may reach that far."""
        return self.timeline.context_ticks

    @property
    def num_channels(self) -> int:
        """Sensor channels per sample."""
        return int(self.sensor.shape[1])

    def feature_ref(self, t0_ns: int) -> FeatureRef:
        """Pick the newest frame at or before ``t0_ns`` of every camera."""
        indices, stamps = [], []
        for camera in self.cameras:
            index = frame_at_or_before(self.frame_stamps_ns[camera], t0_ns)
            if index < 0:
                raise ValueError(f"{self.name}: camera {camera} has no frame at or before {t0_ns}")
            indices.append(index)
            stamps.append(int(self.frame_stamps_ns[camera][index]))
        return FeatureRef(
            self.name, self.cameras, tuple(indices), tuple(stamps), self.instruction, self.episode.content_id
        )

    def load_images(self, ref: FeatureRef) -> list[np.ndarray]:
        """Decode the frames a feature reference names, in camera order."""
        return [self.episode.load_frame(c, i) for c, i in zip(ref.cameras, ref.frame_indices)]

    def sample(self, tick: int, k: int) -> dict[str, Any]:
        """Arrays for tick index ``tick`` with the feature taken ``k`` ticks earlier."""
        if not (0 <= tick < self.num_ticks and 0 <= k <= tick + self.context_ticks):
            raise IndexError(
                f"{self.name}: tick {tick}, k {k} outside ticks [0, {self.num_ticks}) with "
                f"k <= tick + {self.context_ticks}"
            )
        cfg = self.config
        tick_ns = self.timeline.tick_ns(tick)
        ref = self.feature_ref(self.timeline.tick_ns(tick - k))
        window = sensor_window_slice(self.sensor_stamps_ns, tick_ns, cfg.window)
        if window is None:  # cannot happen for ticks on the timeline; guards against edits to it
            raise ValueError(f"{self.name}: no full sensor window at {tick_ns}")
        actions, mask = target_chunk(self.pose_stamps_ns, self.pose, tick_ns, cfg.horizon, cfg.dt_ns)
        state = pose_at_or_before(self.pose_stamps_ns, self.pose, tick_ns)
        return {
            "sensor_window": np.ascontiguousarray(self.sensor[window], dtype=np.float32),
            "vl_age_s": np.float32((tick_ns - ref.newest_stamp_ns) / NS_PER_S),
            "target_actions": actions,
            "action_mask": mask,
            "robot_state": state,
            "motion": motion_since(self.pose_stamps_ns, self.pose, ref.newest_stamp_ns, state),
            "tick_ns": tick_ns,
            "k": k,
            "ref": ref,
        }


def open_episodes(
    paths: Sequence[str | os.PathLike], config: AlignmentConfig, cameras: Sequence[str] | None = None
) -> list[EpisodeData]:
    """Open episodes for sampling; all must share cameras (order) and sensor channel count."""
    episodes = [EpisodeData(p, config, cameras) for p in paths]
    if episodes:
        first = episodes[0]
        for ep in episodes[1:]:
            if ep.cameras != first.cameras or ep.num_channels != first.num_channels:
                raise EpisodeFormatError(
                    f"{ep.name}: cameras {ep.cameras} / {ep.num_channels} channels differ from "
                    f"{first.name}: {first.cameras} / {first.num_channels}"
                )
    return episodes


class TickDataset(torch.utils.data.Dataset):
    """Stage 1 items: one tick each; ``dataset[(index, k)]`` (the sampler chooses k)."""

    def __init__(self, episodes: Sequence[EpisodeData], config: AlignmentConfig, with_images: bool = False):
        self.episodes = list(episodes)
        self.config = config
        self.with_images = with_images
        self.index = np.array(
            [(e, t) for e, ep in enumerate(self.episodes) for t in range(ep.num_ticks)], dtype=np.int64
        ).reshape(-1, 2)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def max_k(self) -> np.ndarray:
        """Largest valid k per item (the feature time must be a grid time of the same episode)."""
        context = np.array([ep.context_ticks for ep in self.episodes], dtype=np.int64)
        reach = self.index[:, 1] + (context[self.index[:, 0]] if len(self.index) else 0)
        return np.minimum(reach, self.config.max_k)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        index, k = item
        episode, tick = self.index[int(index)]
        ep = self.episodes[int(episode)]
        sample = ep.sample(int(tick), int(k))
        if self.with_images:
            sample["images"] = ep.load_images(sample["ref"])
        return sample


class GroupDataset(torch.utils.data.Dataset):
    """Stage 2 items: R consecutive ticks sharing one feature time t0, images decoded once.

    The ticks are k = offset .. offset + R - 1 after t0 (``AlignmentConfig.group_offset``: 0, or the VLM
    latency in ticks for deployment-matched ages), each with its own sensor window and target.
    """

    def __init__(self, episodes: Sequence[EpisodeData], config: AlignmentConfig, stride: int = 1):
        self.episodes = list(episodes)
        self.config = config
        span = config.group_offset + config.reuse
        # g is the feature's grid index: it may be a context time, its first tick g + offset may not.
        self.index = np.array(
            [
                (e, g)
                for e, ep in enumerate(self.episodes)
                for g in range(-min(ep.context_ticks, config.group_offset), ep.num_ticks - span + 1, stride)
            ],
            dtype=np.int64,
        ).reshape(-1, 2)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def max_k(self) -> np.ndarray:
        """Return zeros: groups take no sampled k (every k in [0, R) appears once)."""
        return np.zeros(len(self), dtype=np.int64)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        index, _ = item
        episode, start = self.index[int(index)]
        ep = self.episodes[int(episode)]
        offset = self.config.group_offset
        samples = [ep.sample(int(start) + offset + j, offset + j) for j in range(self.config.reuse)]
        ref = samples[0]["ref"]
        assert all(s["ref"] == ref for s in samples)
        group = _stack(samples)
        group["images"] = ep.load_images(ref)
        group["instruction"] = ref.instruction
        group["ref"] = ref
        return group


def _stack(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "sensor_window": np.stack([s["sensor_window"] for s in samples]),
        "vl_age_s": np.asarray([s["vl_age_s"] for s in samples], dtype=np.float32),
        "target_actions": np.stack([s["target_actions"] for s in samples]),
        "action_mask": np.stack([s["action_mask"] for s in samples]),
        "robot_state": np.stack([s["robot_state"] for s in samples]),
        "motion": np.stack([s["motion"] for s in samples]),
        "tick_ns": np.asarray([s["tick_ns"] for s in samples], dtype=np.int64),
        "k": np.asarray([s["k"] for s in samples], dtype=np.int64),
    }


def collate_ticks(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stage 1 batch: tensors ``[N, ...]`` plus ``refs`` (and ``images`` when loaded)."""
    stacked = _stack(samples)
    batch: dict[str, Any] = {
        "sensor_window": torch.from_numpy(stacked["sensor_window"]),
        "vl_age_s": torch.from_numpy(stacked["vl_age_s"]),
        "target_actions": torch.from_numpy(stacked["target_actions"]),
        "action_mask": torch.from_numpy(stacked["action_mask"]),
        "robot_state": torch.from_numpy(stacked["robot_state"]),
        "motion": torch.from_numpy(stacked["motion"]),
        "refs": [s["ref"] for s in samples],
    }
    if "images" in samples[0]:
        batch["images"] = [s["images"] for s in samples]
    return batch


def collate_groups(groups: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stage 2 batch: N = G*R rows, group-major (rows g*R .. g*R+R-1 share group g's images)."""
    return {
        "sensor_window": torch.from_numpy(np.concatenate([g["sensor_window"] for g in groups])),
        "vl_age_s": torch.from_numpy(np.concatenate([g["vl_age_s"] for g in groups])),
        "target_actions": torch.from_numpy(np.concatenate([g["target_actions"] for g in groups])),
        "action_mask": torch.from_numpy(np.concatenate([g["action_mask"] for g in groups])),
        "robot_state": torch.from_numpy(np.concatenate([g["robot_state"] for g in groups])),
        "motion": torch.from_numpy(np.concatenate([g["motion"] for g in groups])),
        "images": [g["images"] for g in groups],
        "instructions": [g["instruction"] for g in groups],
        "group_size": int(groups[0]["sensor_window"].shape[0]),
        "refs": [g["ref"] for g in groups],
    }


def split_episodes(paths: Sequence[Path], val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Split episode folders into train / validation by episode (never by tick), deterministically."""
    paths = sorted(Path(p) for p in paths)
    if val_fraction <= 0 or len(paths) < 2:
        return paths, []
    order = np.random.default_rng(seed).permutation(len(paths))
    n_val = min(len(paths) - 1, max(1, round(val_fraction * len(paths))))
    val = sorted(paths[i] for i in order[:n_val])
    return [p for p in paths if p not in val], val
