"""Reader of the users' v4 episodes: one ALOHA-style ``episode_<YYYYmmdd_HHMMSS>.h5`` per episode.

Written by ``Najongs/Insertion_VLAv4 New_dataset/Robot_action.py`` (``VLARecorder.save_async``; read back
by ``New_dataset/Save_check.py`` and ``Train/hdf5_lerobot_adapter.py``), one row per control-loop step
(``CONTROL_FREQUENCY = 15`` Hz, slower when the loop is)::

    observations/images/camera<i>   JPEG buffers (vlen uint8, from 2025-12-29) or raw RGB [N, H, W, 3] uint8
                                    (earlier); ``camera<i>`` is the i-th OAK device enumerated, not a serial
    observations/qpos               [N, 6] joint angles (deg)
    observations/ee_pose            [N, 6] Meca500 GetPose: x, y, z (mm), alpha, beta, gamma (deg)
    action                          [N, 6] gamepad command (not used: targets come from the poses)
    timestamp                       [N] GlobalClock seconds, float32 from 2025-12-29 (float64 before)
    observations/sensor/force       [S] float16   } every UDP sensor sample received while recording
    observations/sensor/aline       [S, 1025] float16  } (from 2026-01-06)
    observations/sensor/timestamp   [S] float32 sensor clock seconds

Stamps stored as float32 epoch seconds have a 128 s resolution, so they are rebuilt (and the repair is
reported) from what the recorder does: sensor recording starts at ``rec.start()`` and stops in
``save_async()``; step 0's data is read just before ``rec.start()`` and step 1's 0.5 s later (the
``time.sleep(0.5)`` after the record button), then one step per loop until the stop button. Sensor
samples are placed at ``sensor_rate_hz``; steps 1..N-1 are spread evenly from 0.5 s after the recording
start to its end. ``Trim_dataset.py`` output (``*_trimmed_*.h5``) cuts the sensor arrays by frame index and
drops their stamps, so those samples cannot be placed in time: such files are skipped with that reason.
Robot_action.py writes a black 640x480 JPEG for an empty or failed frame; those frames are dropped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from contracts.constants import NS_PER_S
from contracts.episode import encode_jpeg
from training.conversion_report import EpisodeReport
from training.episode_builder import RawEpisode
from training.image_codec import ImageDecodeError, decode_compressed, is_jpeg
from training.legacy_layouts import meca_poses, sensor_matrix
from training.legacy_options import LegacyOptions
from training.timestamps import to_ns

START_DELAY_S = 0.5
"""Robot_action.py ``main``: ``rec.start(); time.sleep(0.5)`` between step 0's reads and step 1's."""

LOOP_HZ = 15.0
"""Robot_action.py ``CONTROL_FREQUENCY``: the loop sleeps to stay at or below this rate."""

MAX_STAMP_RESOLUTION_NS = 1_000_000
"""Stamps coarser than 1 ms (float32 epoch seconds: 128 s) are rebuilt instead of used."""

REQUIRED = ("timestamp", "observations/ee_pose", "observations/images")
SENSOR_GROUP = "observations/sensor"


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as error:  # pragma: no cover - h5py is in requirements.txt
        raise ImportError("reading v4 episode_*.h5 files needs h5py (pip install h5py)") from error
    return h5py


def stamp_resolution_ns(values: np.ndarray, unit: str) -> int:
    """Spacing, in ns, between representable stamps of this array's dtype at its largest magnitude."""
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.floating) or values.size == 0:
        return 0
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0
    peak = np.max(np.abs(finite))
    pair = np.array([peak, peak + np.spacing(peak)], dtype=np.float64)
    return int(np.diff(to_ns(pair, unit))[0])


def _spread_steps(n_steps: int, start_ns: int, end_ns: int) -> np.ndarray:
    """Step 0 at the recording start, steps 1.. from START_DELAY_S later evenly up to its end."""
    delay = round(START_DELAY_S * NS_PER_S)
    if n_steps < 2:
        return np.full(n_steps, start_ns, dtype=np.int64)
    period = (end_ns - start_ns - delay) / (n_steps - 1)
    if period <= 0:
        raise ValueError(
            f"sensor recording ({(end_ns - start_ns) / NS_PER_S:.2f} s) too short for {n_steps} steps"
        )
    steps = start_ns + delay + np.round(np.arange(n_steps - 1) * period).astype(np.int64)
    return np.concatenate([[start_ns], steps]).astype(np.int64)


def v4_timeline(
    step_stamps: np.ndarray, sensor_stamps: np.ndarray, options: LegacyOptions, report: EpisodeReport
) -> tuple[np.ndarray, np.ndarray]:
    """Step and sensor stamps (ns): the stored ones when fine enough, else rebuilt (repair reported)."""
    if step_stamps.shape[0] == 0 or sensor_stamps.shape[0] == 0:
        raise ValueError(f"{step_stamps.shape[0]} steps and {sensor_stamps.shape[0]} sensor samples")
    unit = options.time_unit
    step_res = stamp_resolution_ns(step_stamps, unit)
    sensor_res = stamp_resolution_ns(sensor_stamps, unit)
    n_sensor = int(sensor_stamps.shape[0])
    if sensor_res <= MAX_STAMP_RESOLUTION_NS:
        sensor_ns = to_ns(sensor_stamps, unit)
    else:
        first_step = int(to_ns(step_stamps[:1], unit)[0])
        start = (
            first_step - round(START_DELAY_S * NS_PER_S)
            if step_res <= MAX_STAMP_RESOLUTION_NS
            else first_step
        )
        offsets = np.round(np.arange(n_sensor) * (NS_PER_S / options.sensor_rate_hz)).astype(np.int64)
        sensor_ns = start + offsets
        report.repairs.append(
            f"sensor: timestamp stored as {sensor_stamps.dtype} ({sensor_res / NS_PER_S:g} s resolution); "
            f"{n_sensor} samples placed at {options.sensor_rate_hz:g} Hz from the recording start"
        )
    if step_res <= MAX_STAMP_RESOLUTION_NS:
        return to_ns(step_stamps, unit), sensor_ns
    end = int(sensor_ns[-1]) + round(NS_PER_S / options.sensor_rate_hz)
    steps_ns = _spread_steps(int(step_stamps.shape[0]), int(sensor_ns[0]), end)
    period_ms = np.diff(steps_ns[1:]).mean() / 1e6 if steps_ns.shape[0] > 2 else float("nan")
    report.repairs.append(
        f"steps: timestamp stored as {step_stamps.dtype} ({step_res / NS_PER_S:g} s resolution); step 0 "
        f"placed at the sensor recording start, steps 1..{steps_ns.shape[0] - 1} every {period_ms:.1f} ms "
        f"from {START_DELAY_S:g} s later to its end (Robot_action.py's loop)"
    )
    if period_ms < 0.97 * 1000.0 / LOOP_HZ:
        report.repairs.append(
            f"steps: {period_ms:.1f} ms per step is faster than the recorder's {LOOP_HZ:g} Hz loop: sensor "
            f"samples were lost or --sensor-rate-hz ({options.sensor_rate_hz:g}) is not the sensor's rate"
        )
    return steps_ns, sensor_ns


def _not_black(rgb: np.ndarray) -> np.ndarray:
    if rgb.size and int(rgb.max()) == 0:
        raise ImageDecodeError(
            "black placeholder frame (Robot_action.py writes one for an empty or failed frame)"
        )
    return rgb


def _jpeg_frame(dataset: Any, index: int) -> bytes:
    data = np.asarray(dataset[index], dtype=np.uint8).tobytes()
    rgb = _not_black(decode_compressed(data))
    return data if is_jpeg(data) else encode_jpeg(rgb)


def _raw_frame(dataset: Any, index: int) -> bytes:
    return encode_jpeg(_not_black(np.ascontiguousarray(dataset[index], dtype=np.uint8)))


def frame_loader(dataset: Any, h5py: Any) -> Callable[[Any, int], bytes] | None:
    """How to read one frame of an image dataset (JPEG buffers or raw RGB); None when neither."""
    if h5py.check_vlen_dtype(dataset.dtype) is not None:
        return _jpeg_frame
    if dataset.ndim == 4 and dataset.shape[-1] == 3 and dataset.dtype == np.uint8:
        return _raw_frame
    return None


def _problem(file: Any, path: Path) -> str | None:
    """Why a v4 file cannot be converted, or None."""
    missing = [name for name in REQUIRED if name not in file]
    if missing:
        return f"missing {missing} (has {sorted(file.keys())}; a save that did not finish?)"
    trimmed = "_trimmed_" in path.stem
    if SENSOR_GROUP not in file:
        return (
            f"no {SENSOR_GROUP} group: this recording has no force/OCT stream (Robot_action.py saves it from "
            "2026-01-06 on), and every episode needs the 650 Hz sensor"
        )
    sensor = file[SENSOR_GROUP]
    absent = [k for k in ("force", "aline") if k not in sensor]
    if absent:
        return f"{SENSOR_GROUP} lacks {absent} (has {sorted(sensor.keys())})"
    if trimmed or "timestamp" not in sensor:
        return (
            "a Trim_dataset.py output: it cuts observations/sensor by frame index and drops its timestamps, "
            "so the samples cannot be placed in time; convert the untrimmed episode_<ts>.h5 instead"
        )
    return None


def read_h5_episode(
    path: Path, options: LegacyOptions, raw: RawEpisode, report: EpisodeReport, stack: contextlib.ExitStack
) -> bool:
    """Fill ``raw`` from a v4 file kept open on ``stack``; False (reason in ``report``) when unusable."""
    h5py = _h5py()
    try:
        file = stack.enter_context(h5py.File(path, "r"))
    except OSError as error:
        report.skip(f"unreadable h5 file: {error}")
        return False
    problem = _problem(file, path)
    if problem:
        report.skip(problem)
        return False
    images = file["observations/images"]
    cameras = list(options.views) if options.views else sorted(images.keys())
    missing = [c for c in cameras if c not in images]
    if missing or not cameras:
        report.skip(f"missing camera(s) {missing} in observations/images (has {sorted(images.keys())})")
        return False
    step_stamps = np.asarray(file["timestamp"][()]).reshape(-1)
    ee_pose = np.asarray(file["observations/ee_pose"][()], dtype=np.float64)
    lengths = {"ee_pose": ee_pose.shape[0], **{c: images[c].shape[0] for c in cameras}}
    if any(n != step_stamps.shape[0] for n in lengths.values()):
        report.skip(f"{step_stamps.shape[0]} steps but lengths {lengths}")
        return False
    sensor = file[SENSOR_GROUP]
    sensor_stamps = np.asarray(sensor["timestamp"][()]).reshape(-1)
    try:
        raw.sensor = sensor_matrix(sensor_stamps, sensor["force"][()], sensor["aline"][()], SENSOR_GROUP)
        raw.pose_stamps_ns, raw.sensor_stamps_ns = v4_timeline(step_stamps, sensor_stamps, options, report)
    except ValueError as error:
        report.skip(f"unusable streams: {error}")
        return False
    raw.poses = meca_poses(ee_pose, options)
    raw.sensor_rate_hz = options.sensor_rate_hz
    raw.cameras = cameras
    for camera in cameras:
        loader = frame_loader(images[camera], h5py)
        if loader is None:
            report.skip(
                f"camera {camera}: images {images[camera].dtype} {images[camera].shape} are not JPEG or RGB"
            )
            return False
        raw.frames[camera] = [
            (int(s), _bind(loader, images[camera], i)) for i, s in enumerate(raw.pose_stamps_ns)
        ]
    raw.metadata.update(
        cameras_source="observations/images keys (OAK devices in enumeration order)",
        stamp_dtypes={"steps": str(step_stamps.dtype), "sensor": str(sensor_stamps.dtype)},
    )
    report.counts.update(steps=int(step_stamps.shape[0]))
    return True


def _bind(loader: Callable[[Any, int], bytes], dataset: Any, index: int) -> Callable[[], bytes]:
    return lambda: loader(dataset, index)
