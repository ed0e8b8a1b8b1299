"""Readers of the users' original folder layouts (v1, v3) and of the stream files they share.

v1, ``Insertion_VLA Make_dataset/Total_reciver.py``, one ``recv_all_<YYYYmmdd_HHMMSS>/`` folder per run::

    View1..View4/left/ and right/     ZED stereo pair, ``zed_<serial>_left_<stamp>.jpg`` (capture s, %.3f)
    View5/                            OAK, ``oak_<socket>_<stamp>.jpg``
    Unknown/                          cameras with an unknown serial (ignored)
    robot_state_<ts>.csv              as v3
    sensor_data_<ts>_<int(first stamp)>.npz

v3, ``Insertion_VLAv3 Data_collection/data_collector.py``, one ``data_collection_<YYYYmmdd_HHMMSS>/`` per
episode: ``View1..View5/<cam>_<stamp>.jpg`` (left ZED images only; ``ZED_<serial>_left``, ``OAK``),
``robot_state_<ts>.csv`` and ``sensor_data_<ts>.npz``. View mapping in both: ZED 41182735 -> View1,
49429257 -> View2, 44377151 -> View3, 49045152 -> View4, OAK -> View5.

Pose streams (chosen by the CSV header, in any folder layout):

- collector CSV ``robot_state_*.csv``: ``recv_timestamp, origin_timestamp, send_timestamp,
  force_placeholder, joint_1..joint_6, pose_x, pose_y, pose_z, pose_a, pose_b, pose_r``; the robot sender's
  float32 payload ``<ddf12f`` re-printed, stamped by the sender's clock (``origin_timestamp``).
- robot sender CSV ``robot_rt_<clock>.csv`` (``Data_collection/Robot_sender.py`` ``RtSampler``, 100 Hz):
  ``timestamp, joint_angle_1..6, EE_x, EE_y, EE_z, EE_a, EE_b, EE_r``.

Both hold Meca500 ``GetPose`` values: mm and degrees. Sensor npz: ``timestamps`` (float64 s),
``send_timestamps``, ``forces`` (float32, N) and ``alines`` (float32, N x 1025); the v4 names ``timestamp``,
``force``, ``aline`` are read too.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from contracts.episode import encode_jpeg
from training.conversion_report import EpisodeReport
from training.episode_builder import RawEpisode
from training.image_codec import decode_compressed, is_jpeg
from training.legacy_options import LegacyOptions, euler_deg_to_rotvec
from training.timestamps import to_ns

DEFAULT_VIEWS = ("View1", "View2", "View3", "View4", "View5")
ZED_VIEWS = ("View1", "View2", "View3", "View4")
"""Views that hold a ZED stereo pair in v1 (``left/`` and ``right/`` sub-folders)."""


@dataclass(frozen=True)
class PoseCsvFormat:
    """One pose CSV dialect: its file pattern, pose columns (x, y, z, a, b, r) and stamp column."""

    name: str
    pattern: str
    columns: tuple[str, ...]
    stamp_column: str


POSE_FORMATS = (
    PoseCsvFormat(
        "collector",
        "robot_state_*.csv",
        ("pose_x", "pose_y", "pose_z", "pose_a", "pose_b", "pose_r"),
        "origin_timestamp",
    ),
    PoseCsvFormat(
        "robot-sender", "robot_rt_*.csv", ("EE_x", "EE_y", "EE_z", "EE_a", "EE_b", "EE_r"), "timestamp"
    ),
)

SENSOR_KEY_SETS = (("timestamps", "forces", "alines"), ("timestamp", "force", "aline"))
"""(stamps, force, A-line) array names: the v1/v3 collectors', then v4's."""


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else float("nan")
    except ValueError:
        return float("nan")


def _pose_format(header: list[str], path: Path) -> PoseCsvFormat:
    for fmt in POSE_FORMATS:
        if all(c in header for c in fmt.columns):
            return fmt
    wanted = " or ".join(f"{list(f.columns)} ({f.name})" for f in POSE_FORMATS)
    raise ValueError(f"{path.name}: no pose columns {wanted} in {header}")


def meca_poses(values: np.ndarray, options: LegacyOptions) -> np.ndarray:
    """Meca500 ``GetPose`` rows [N, 6] (mm, deg) -> internal poses [N, 7] (mm, rotation vector, gripper)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1, 6)
    rotation = euler_deg_to_rotvec(values[:, 3:6], options.euler_convention)
    return np.concatenate([values[:, 0:3], rotation, np.full((values.shape[0], 1), options.gripper)], axis=1)


def read_pose_csv(path: Path, options: LegacyOptions) -> tuple[np.ndarray, np.ndarray, str]:
    """Pose stamps (ns), poses [N, 7] and the dialect name of a collector or robot-sender CSV."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{path.name} has no rows")
    header = list(rows[0])
    fmt = _pose_format(header, path)
    stamp_column = options.pose_stamp_column if options.pose_stamp_column in header else fmt.stamp_column
    if stamp_column not in header:
        raise ValueError(f"{path.name}: no {options.pose_stamp_column!r} or {fmt.stamp_column!r} column")
    stamps = np.array([_number(r[stamp_column]) for r in rows])
    poses = meca_poses(np.array([[_number(r[c]) for c in fmt.columns] for r in rows]), options)
    poses[~np.isfinite(stamps)] = np.nan  # a row without a usable stamp is a bad row
    return to_ns(stamps, options.time_unit), poses, fmt.name


def sensor_matrix(stamps: np.ndarray, forces: np.ndarray, alines: np.ndarray, label: str) -> np.ndarray:
    """Channel 0 force, channels 1.. A-line, as float32 [N, 1 + C]; rows of non-finite stamps are NaN."""
    stamps = np.asarray(stamps, dtype=np.float64).reshape(-1)
    forces = np.asarray(forces, dtype=np.float32).reshape(-1, 1)
    alines = np.asarray(alines, dtype=np.float32)
    if alines.ndim != 2 or not (stamps.shape[0] == forces.shape[0] == alines.shape[0]):
        raise ValueError(f"{label}: stamps {stamps.shape}, forces {forces.shape}, alines {alines.shape}")
    sensor = np.concatenate([forces, alines], axis=1)
    sensor[~np.isfinite(stamps)] = np.nan
    return sensor


def read_sensor_npz(path: Path, options: LegacyOptions) -> tuple[np.ndarray, np.ndarray]:
    """Sensor stamps (ns) and samples [N, 1 + C] of a ``sensor_data_*.npz`` (v1/v3 or v4 array names)."""
    with np.load(path, allow_pickle=False) as data:
        keys = next((k for k in SENSOR_KEY_SETS if all(name in data.files for name in k)), None)
        if keys is None:
            wanted = " or ".join(str(list(k)) for k in SENSOR_KEY_SETS)
            raise ValueError(f"{path.name}: no arrays {wanted} (has {data.files})")
        stamps, forces, alines = (np.asarray(data[name]) for name in keys)
    stamps = np.asarray(stamps, dtype=np.float64).reshape(-1)
    return to_ns(stamps, options.time_unit), sensor_matrix(stamps, forces, alines, path.name)


def frame_stamp(path: Path) -> float:
    """The capture stamp after the last underscore of a frame's file stem (``ZED_41182735_left_<s>.jpg``)."""
    return float(path.stem.rsplit("_", 1)[-1])


def load_jpeg_file(path: Path) -> bytes:
    """A frame file as JPEG bytes (validated; non-JPEG files re-encoded)."""
    data = path.read_bytes()
    rgb = decode_compressed(data)  # raises ImageDecodeError on a corrupt or truncated file
    return data if is_jpeg(data) else encode_jpeg(rgb)


def view_folder(session: Path, view: str, layout: str, zed_side: str) -> Path | None:
    """The folder holding a view's frames: v1 ZED views use ``<view>/<side>/``; None when absent."""
    candidates = [session / view, session / "images" / view]
    if layout == "v1" and view in ZED_VIEWS:
        candidates.insert(0, session / view / zed_side)
    return next((c for c in candidates if c.is_dir()), None)


def _one_file(session: Path, pattern: str, found: list[Path]) -> Path | str:
    """The single file matching ``pattern`` or a reason why not."""
    if len(found) != 1:
        return f"expected one {pattern}, found {len(found)}" + (
            f" ({[p.name for p in found]})" if found else ""
        )
    return found[0]


def _stream_files(session: Path) -> tuple[Path, Path] | str:
    """(pose CSV, sensor npz) of a folder session, or the reason they cannot be chosen."""
    pose: Path | str = "expected one robot_state_*.csv or robot_rt_*.csv, found none"
    for fmt in POSE_FORMATS:
        found = sorted(session.glob(fmt.pattern))
        if found:
            pose = _one_file(session, fmt.pattern, found)
            break
    sensor = _one_file(session, "sensor_data_*.npz", sorted(session.glob("sensor_data_*.npz")))
    problems = [p for p in (pose, sensor) if isinstance(p, str)]
    if problems:
        return "; ".join(problems)
    return pose, sensor  # type: ignore[return-value]


def _frames(folder: Path, unit: str) -> tuple[list[tuple[int, Callable[[], bytes]]], int]:
    frames, unnamed = [], 0
    for path in sorted(folder.glob("*.jpg")):
        try:
            stamp = frame_stamp(path)
        except ValueError:
            unnamed += 1
            continue
        frames.append((int(to_ns(stamp, unit)), partial(load_jpeg_file, path)))
    return frames, unnamed


def read_folder_session(
    session: Path, layout: str, options: LegacyOptions, raw: RawEpisode, report: EpisodeReport
) -> bool:
    """Fill ``raw`` from a v1 or v3 folder; False (reason in ``report``) when it cannot be used."""
    folders = {v: view_folder(session, v, layout, options.zed_side) for v in raw.cameras}
    missing = [v for v, folder in folders.items() if folder is None]
    if missing:
        report.skip(f"missing camera folder(s) {missing}")
        return False
    files = _stream_files(session)
    if isinstance(files, str):
        report.skip(files)
        return False
    pose_file, sensor_file = files
    try:
        raw.pose_stamps_ns, raw.poses, pose_format = read_pose_csv(pose_file, options)
        raw.sensor_stamps_ns, raw.sensor = read_sensor_npz(sensor_file, options)
    except (ValueError, OSError) as error:
        report.skip(f"unreadable robot/sensor file: {error}")
        return False
    raw.metadata.update(pose_file=pose_file.name, pose_format=pose_format, sensor_file=sensor_file.name)
    report.counts.update(pose_file=pose_file.name, pose_format=pose_format, sensor_file=sensor_file.name)
    for view, folder in folders.items():
        raw.frames[view], unnamed = _frames(folder, options.time_unit)  # type: ignore[arg-type]
        if unnamed:
            report.repairs.append(f"camera {view}: {unnamed} frames without a stamp in the file name ignored")
    if layout == "v1":
        raw.metadata["zed_side"] = options.zed_side
    return True
