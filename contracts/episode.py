"""The on-disk episode format shared by the simulator, the converters and the training datasets.

One folder per episode::

    <episode>/
      meta.json                  format/version, instruction, camera names, rates, source, free metadata,
                                 optional action_start_ns (see below)
      cameras/<name>/stamps_ns.npy   int64 [F]   capture stamp of each frame (ns, strictly increasing)
      cameras/<name>/000000.jpg ...  JPEG frame i (RGB), index-aligned with stamps_ns.npy
      sensor.npy                 float32 [N, C]  650 Hz samples; channel 0 force (N), 1..C-1 OCT A-line
      sensor_stamps_ns.npy       int64 [N]       sample stamps (ns, strictly increasing)
      pose.npy                   float64 [M, 7]  robot pose: x, y, z (mm), rotation vector (rad), gripper
      pose_stamps_ns.npy         int64 [M]       pose stamps (ns, strictly increasing, ~100 Hz)

Why these files: JPEG keeps five camera streams small (frames are decoded only when a VL feature is
computed, which the feature cache makes rare); ``.npy`` arrays open with ``mmap_mode="r"``, so a dataset
indexes the 650 Hz stream without reading whole episodes, and numpy is all a reader needs (no pickle:
arrays load with ``allow_pickle=False``). Episodes are written into a temporary folder and renamed into
place, so a crash never leaves a half-written episode that looks complete.

``action_start_ns`` (optional) is when the recorded robot starts acting. Before it the robot is at rest
and the recording is context only: its frames can be the source of a VL feature for a later tick, but no
tick before it is a training target. A deployed action expert holds until the VLM's first result, so its
first motion is made on features one VLM latency or more old; demonstrations that start at rest for that
long are the only ones whose motion starts at the ages the node sees (``sim.demos``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from contracts.constants import POSE_RATE_HZ, SENSOR_RATE_HZ

FORMAT_NAME = "insertion_vla_episode"
FORMAT_VERSION = 1
POSE_DIM = 7
JPEG_QUALITY = 92


class EpisodeFormatError(ValueError):
    """An episode folder is missing files or holds inconsistent data."""


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """Encode an HxWx3 uint8 RGB array as JPEG bytes."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {rgb.dtype} {rgb.shape}")
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


class EpisodeWriter:
    """Streams one episode to disk; ``close()`` validates it and moves it into place atomically."""

    def __init__(
        self,
        path: str | os.PathLike,
        instruction: str,
        cameras: list[str],
        sensor_rate_hz: float = SENSOR_RATE_HZ,
        pose_rate_hz: float = POSE_RATE_HZ,
        num_sensor_channels: int = 1026,
        source: str = "unknown",
        metadata: dict[str, Any] | None = None,
        action_start_ns: int | None = None,
    ) -> None:
        """``action_start_ns``: when the robot starts acting (module docstring; None: from the start)."""
        self.path = Path(path)
        self._tmp = self.path.with_name(self.path.name + ".partial")
        if self._tmp.exists():
            shutil.rmtree(self._tmp)
        for camera in cameras:
            (self._tmp / "cameras" / camera).mkdir(parents=True)
        self._meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "instruction": instruction,
            "cameras": list(cameras),
            "sensor_rate_hz": float(sensor_rate_hz),
            "pose_rate_hz": float(pose_rate_hz),
            "num_sensor_channels": int(num_sensor_channels),
            "source": source,
            "recording_id": uuid.uuid4().hex,
            "metadata": dict(metadata or {}),
        }
        if action_start_ns is not None:
            self._meta["action_start_ns"] = int(action_start_ns)
        self._frame_stamps: dict[str, list[int]] = {camera: [] for camera in cameras}
        self._sensor_chunks: list[np.ndarray] = []
        self._sensor_stamp_chunks: list[np.ndarray] = []
        self._poses: list[np.ndarray] = []
        self._pose_stamps: list[int] = []

    def add_frame(self, camera: str, stamp_ns: int, rgb: np.ndarray) -> None:
        """Append one RGB frame (HxWx3 uint8) captured at ``stamp_ns``."""
        self.add_jpeg(camera, stamp_ns, encode_jpeg(rgb))

    def add_jpeg(self, camera: str, stamp_ns: int, jpeg: bytes) -> None:
        """Append one already JPEG-encoded frame (converters copy bytes without re-encoding)."""
        if camera not in self._frame_stamps:
            raise KeyError(f"unknown camera {camera!r}; episode cameras are {list(self._frame_stamps)}")
        index = len(self._frame_stamps[camera])
        (self._tmp / "cameras" / camera / f"{index:06d}.jpg").write_bytes(jpeg)
        self._frame_stamps[camera].append(int(stamp_ns))

    def add_sensor(self, stamps_ns: np.ndarray, samples: np.ndarray) -> None:
        """Append sensor samples [n, C] with their stamps [n]."""
        samples = np.asarray(samples, dtype=np.float32)
        stamps_ns = np.asarray(stamps_ns, dtype=np.int64).reshape(-1)
        if samples.ndim != 2 or samples.shape[0] != stamps_ns.shape[0]:
            raise ValueError(f"sensor samples {samples.shape} do not match {stamps_ns.shape[0]} stamps")
        if samples.shape[1] != self._meta["num_sensor_channels"]:
            raise ValueError(
                f"sensor samples have {samples.shape[1]} channels, episode declares "
                f"{self._meta['num_sensor_channels']}"
            )
        self._sensor_chunks.append(samples)
        self._sensor_stamp_chunks.append(stamps_ns)

    def add_pose(self, stamp_ns: int, pose: np.ndarray) -> None:
        """Append one robot pose (7-vector, see module docstring)."""
        pose = np.asarray(pose, dtype=np.float64).reshape(-1)
        if pose.shape[0] != POSE_DIM:
            raise ValueError(f"a pose has {POSE_DIM} values, got {pose.shape[0]}")
        self._poses.append(pose)
        self._pose_stamps.append(int(stamp_ns))

    def close(self, extra_metadata: dict[str, Any] | None = None) -> Path:
        """Write the arrays and meta.json, validate, and rename the episode into place."""
        if extra_metadata:
            self._meta["metadata"].update(extra_metadata)
        channels = self._meta["num_sensor_channels"]
        sensor = (
            np.concatenate(self._sensor_chunks)
            if self._sensor_chunks
            else np.zeros((0, channels), np.float32)
        )
        sensor_stamps = (
            np.concatenate(self._sensor_stamp_chunks) if self._sensor_stamp_chunks else np.zeros(0, np.int64)
        )
        np.save(self._tmp / "sensor.npy", sensor)
        np.save(self._tmp / "sensor_stamps_ns.npy", sensor_stamps)
        np.save(self._tmp / "pose.npy", np.asarray(self._poses, dtype=np.float64).reshape(-1, POSE_DIM))
        np.save(self._tmp / "pose_stamps_ns.npy", np.asarray(self._pose_stamps, dtype=np.int64))
        for camera, stamps in self._frame_stamps.items():
            np.save(self._tmp / "cameras" / camera / "stamps_ns.npy", np.asarray(stamps, dtype=np.int64))
        (self._tmp / "meta.json").write_text(json.dumps(self._meta, indent=2, sort_keys=True))
        problems = Episode(self._tmp).problems()
        if problems:
            raise EpisodeFormatError(f"episode {self.path.name} is invalid: " + "; ".join(problems))
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Discard the partial episode."""
        shutil.rmtree(self._tmp, ignore_errors=True)


class Episode:
    """Read access to one episode folder; arrays are memory-mapped."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not meta_file.is_file():
            raise EpisodeFormatError(f"{self.path}: no meta.json (not an episode folder)")
        raw = meta_file.read_bytes()
        try:
            self.meta: dict[str, Any] = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise EpisodeFormatError(f"{meta_file}: invalid JSON ({error})") from error
        self.content_id = hashlib.sha256(raw).hexdigest()[:16]
        """Digest of ``meta.json``: which recording this is, beyond its folder name. Every writer stamps a
        fresh ``recording_id`` there, so two recordings never share one (sim demo sets all name their
        episodes ``episode_00000``..., with the same frame stamps), while the same folder keeps it."""
        if self.meta.get("format") != FORMAT_NAME or self.meta.get("version") != FORMAT_VERSION:
            raise EpisodeFormatError(
                f"{self.path}: format {self.meta.get('format')!r} v{self.meta.get('version')!r}, "
                f"expected {FORMAT_NAME!r} v{FORMAT_VERSION}"
            )

    @property
    def name(self) -> str:
        """Folder name of the episode."""
        return self.path.name

    @property
    def instruction(self) -> str:
        """Task instruction, e.g. "Perform Red_point insertion task"."""
        return str(self.meta["instruction"])

    @property
    def cameras(self) -> list[str]:
        """Camera names in model input order."""
        return list(self.meta["cameras"])

    @property
    def action_start_ns(self) -> int | None:
        """When the robot starts acting (earlier data is feature context only); None: from the start."""
        value = self.meta.get("action_start_ns")
        return None if value is None else int(value)

    def _array(self, relative: str) -> np.ndarray:
        file = self.path / relative
        if not file.is_file():
            raise EpisodeFormatError(f"{self.path}: missing {relative}")
        try:
            return np.load(file, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as error:
            raise EpisodeFormatError(f"{file}: unreadable ({error})") from error

    @property
    def sensor(self) -> np.ndarray:
        """Sensor samples [N, C] float32 (memory-mapped)."""
        return self._array("sensor.npy")

    @property
    def sensor_stamps_ns(self) -> np.ndarray:
        """Sensor sample stamps [N] int64 ns."""
        return self._array("sensor_stamps_ns.npy")

    @property
    def pose(self) -> np.ndarray:
        """Robot poses [M, 7] float64."""
        return self._array("pose.npy")

    @property
    def pose_stamps_ns(self) -> np.ndarray:
        """Robot pose stamps [M] int64 ns."""
        return self._array("pose_stamps_ns.npy")

    def frame_stamps_ns(self, camera: str) -> np.ndarray:
        """Capture stamps [F] int64 ns of one camera's frames."""
        return self._array(f"cameras/{camera}/stamps_ns.npy")

    def frame_path(self, camera: str, index: int) -> Path:
        """Path of one camera's JPEG frame."""
        return self.path / "cameras" / camera / f"{index:06d}.jpg"

    def load_frame(self, camera: str, index: int) -> np.ndarray:
        """Decode one frame to an HxWx3 uint8 RGB array."""
        path = self.frame_path(camera, index)
        try:
            with Image.open(path) as image:
                return np.array(image.convert("RGB"))  # a writable copy: torch warns on read-only arrays
        except (OSError, ValueError) as error:
            raise EpisodeFormatError(f"{path}: unreadable frame ({error})") from error

    def problems(self) -> list[str]:
        """Every inconsistency found (empty when the episode is usable)."""
        found: list[str] = []
        try:
            sensor, sensor_stamps = self.sensor, self.sensor_stamps_ns
            pose, pose_stamps = self.pose, self.pose_stamps_ns
        except EpisodeFormatError as error:
            return [str(error)]
        if sensor.ndim != 2 or sensor.shape[0] != sensor_stamps.shape[0]:
            found.append(f"sensor {sensor.shape} does not match {sensor_stamps.shape[0]} stamps")
        if pose.ndim != 2 or pose.shape[1] != POSE_DIM or pose.shape[0] != pose_stamps.shape[0]:
            found.append(f"pose {pose.shape} does not match {pose_stamps.shape[0]} stamps")
        for label, stamps in (("sensor", sensor_stamps), ("pose", pose_stamps)):
            if stamps.shape[0] > 1 and not np.all(np.diff(stamps) > 0):
                found.append(f"{label} stamps are not strictly increasing")
        start = self.meta.get("action_start_ns")
        if start is not None and (not isinstance(start, int) or isinstance(start, bool)):
            found.append(f"action_start_ns must be an integer stamp (ns), got {start!r}")
        elif start is not None and pose_stamps.shape[0] and not pose_stamps[0] <= start <= pose_stamps[-1]:
            found.append(
                f"action_start_ns {start} lies outside the pose stream [{pose_stamps[0]}, {pose_stamps[-1]}]"
            )
        if sensor.size and not np.isfinite(sensor).all():
            found.append("sensor holds non-finite values")
        if pose.size and not np.isfinite(pose).all():
            found.append("pose holds non-finite values")
        for camera in self.cameras:
            try:
                stamps = self.frame_stamps_ns(camera)
            except EpisodeFormatError as error:
                found.append(str(error))
                continue
            if stamps.shape[0] == 0:
                found.append(f"camera {camera} has no frames")
            elif stamps.shape[0] > 1 and not np.all(np.diff(stamps) > 0):
                found.append(f"camera {camera} stamps are not strictly increasing")
            missing = [i for i in range(stamps.shape[0]) if not self.frame_path(camera, i).is_file()]
            if missing:
                found.append(f"camera {camera} is missing {len(missing)} frame files (first: {missing[0]})")
        return found


def list_episodes(root: str | os.PathLike) -> list[Path]:
    """Episode folders (those holding meta.json) directly under ``root``, sorted by name."""
    root = Path(root)
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "meta.json").is_file())
