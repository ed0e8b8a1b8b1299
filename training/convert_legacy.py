"""Convert the original system's collection layout into episodes.

Source layout (one session = one episode)::

    <root>/<Task>/data_collection_<ts>/
        View1 .. View5/<anything>_<stamp>.jpg     frame capture stamp in the file name
        robot_state_<ts>.csv                      recv/origin/send timestamps, force placeholder,
                                                  joint_1..joint_6 (deg), pose_x/y/z (mm), pose_a/b/r (deg)
        sensor_data_<ts>.npz                      timestamps, send_timestamps, forces [N], alines [N, 1025]

The instruction is "Perform <Task> insertion task". Pose angles a/b/r are intrinsic Euler angles in
degrees; the convention is an option (default ZYZ, Doosan's A/B/C) and is stored in the episode metadata.
Bare-number stamps are converted with :func:`training.timestamps.to_ns` (unit an option, default auto).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from contracts.constants import GRIPPER_DEFAULT
from contracts.episode import encode_jpeg
from models.pose_math import euler_to_matrix, matrix_to_rotvec
from training.conversion_report import ConversionReport, EpisodeReport
from training.episode_builder import CleaningPolicy, RawEpisode, build_episode
from training.image_codec import ImageDecodeError, decode_compressed, is_jpeg
from training.timestamps import to_ns

DEFAULT_VIEWS = ("View1", "View2", "View3", "View4", "View5")
POSE_COLUMNS = ("pose_x", "pose_y", "pose_z", "pose_a", "pose_b", "pose_r")


@dataclass
class LegacyOptions:
    """Interpretation of the legacy files."""

    views: tuple[str, ...] = DEFAULT_VIEWS
    euler_convention: str = "ZYZ"
    pose_stamp_column: str = "origin_timestamp"
    time_unit: str = "auto"
    gripper: float = GRIPPER_DEFAULT


def find_sessions(root: str | os.PathLike) -> list[Path]:
    """Every ``<Task>/data_collection_*`` folder under ``root`` (or ``root`` itself if it is one)."""
    root = Path(root)
    if root.name.startswith("data_collection_"):
        return [root]
    return sorted(p for p in root.glob("*/data_collection_*") if p.is_dir())


def _frame_stamp(path: Path) -> float:
    """Parse the stamp after the last underscore of the file stem."""
    return float(path.stem.rsplit("_", 1)[-1])


def _load_jpeg(path: Path) -> bytes:
    data = path.read_bytes()
    decode_compressed(data)  # raises ImageDecodeError on a corrupt or truncated file
    return data if is_jpeg(data) else encode_jpeg(decode_compressed(data))


def _read_pose_csv(path: Path, options: LegacyOptions) -> tuple[np.ndarray, np.ndarray]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{path.name} has no rows")
    header = list(rows[0])
    stamp_column = options.pose_stamp_column
    if stamp_column not in header:
        fallback = [c for c in header if "timestamp" in c.lower()]
        if not fallback:
            raise ValueError(f"{path.name}: no {stamp_column!r} (or any timestamp) column in {header}")
        stamp_column = fallback[0]
    missing = [c for c in POSE_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{path.name}: missing columns {missing}")

    def number(text: str | None) -> float:
        try:
            return float(text) if text not in (None, "") else float("nan")
        except ValueError:
            return float("nan")

    stamps = np.array([number(r[stamp_column]) for r in rows])
    values = np.array([[number(r[c]) for c in POSE_COLUMNS] for r in rows])
    rotation = matrix_to_rotvec(euler_to_matrix(np.deg2rad(values[:, 3:6]), options.euler_convention))
    poses = np.concatenate([values[:, 0:3], rotation, np.full((len(rows), 1), options.gripper)], axis=1)
    poses[~np.isfinite(stamps)] = np.nan  # a row without a usable stamp is a bad row
    return to_ns(stamps, options.time_unit), poses


def _read_sensor_npz(path: Path, options: LegacyOptions) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in ("timestamps", "forces", "alines") if k not in data.files]
        if missing:
            raise ValueError(f"{path.name}: missing arrays {missing} (has {data.files})")
        stamps = np.asarray(data["timestamps"], dtype=np.float64).reshape(-1)
        forces = np.asarray(data["forces"], dtype=np.float32).reshape(-1, 1)
        alines = np.asarray(data["alines"], dtype=np.float32)
    if alines.ndim != 2 or not (stamps.shape[0] == forces.shape[0] == alines.shape[0]):
        raise ValueError(
            f"{path.name}: timestamps {stamps.shape}, forces {forces.shape}, alines {alines.shape}"
        )
    sensor = np.concatenate([forces, alines], axis=1)
    sensor[~np.isfinite(stamps)] = np.nan
    return to_ns(stamps, options.time_unit), sensor


def read_session(session: Path, options: LegacyOptions, report: EpisodeReport) -> RawEpisode | None:
    """Read one session folder into raw streams; None (reason in ``report``) when it cannot be used."""
    task = session.parent.name
    raw = RawEpisode(
        name=report.name,
        instruction=f"Perform {task} insertion task",
        cameras=list(options.views),
        source="legacy",
        metadata={"task": task, "session": session.name, "euler_convention": options.euler_convention},
    )
    missing = [v for v in options.views if not (session / v).is_dir()]
    if missing:
        report.skip(f"missing camera folder(s) {missing}")
        return None
    csv_files = sorted(session.glob("robot_state_*.csv"))
    npz_files = sorted(session.glob("sensor_data_*.npz"))
    if len(csv_files) != 1 or len(npz_files) != 1:
        report.skip(
            "expected one robot_state_*.csv and one sensor_data_*.npz, "
            f"found {len(csv_files)}/{len(npz_files)}"
        )
        return None
    try:
        raw.pose_stamps_ns, raw.poses = _read_pose_csv(csv_files[0], options)
        raw.sensor_stamps_ns, raw.sensor = _read_sensor_npz(npz_files[0], options)
    except (ValueError, OSError) as error:
        report.skip(f"unreadable robot/sensor file: {error}")
        return None
    for view in options.views:
        frames = []
        unnamed = 0
        for path in sorted((session / view).glob("*.jpg")):
            try:
                stamp = _frame_stamp(path)
            except ValueError:
                unnamed += 1
                continue
            frames.append((int(to_ns(stamp, options.time_unit)), partial(_load_jpeg, path)))
        if unnamed:
            report.repairs.append(f"camera {view}: {unnamed} frames without a stamp in the file name ignored")
        raw.frames[view] = frames
    return raw


def _episode_name(session: Path) -> str:
    return f"{session.parent.name}__{session.name}"


def convert_legacy(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    options: LegacyOptions | None = None,
    policy: CleaningPolicy | None = None,
    sessions: Sequence[Path] | None = None,
    progress: bool = True,
) -> ConversionReport:
    """Convert every session under ``root`` into ``out_dir``; the report is also saved there as JSON."""
    options = options or LegacyOptions()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ConversionReport("convert-legacy")
    for session in tqdm(
        sessions or find_sessions(root), desc="legacy sessions", unit="ep", disable=not progress
    ):
        entry = EpisodeReport(source=str(session), name=_episode_name(session))
        report.episodes.append(entry)
        try:
            raw = read_session(session, options, entry)
            if raw is not None:
                build_episode(raw, out_dir, entry, policy)
        except (ValueError, ImageDecodeError) as error:
            entry.skip(f"conversion failed: {error}")
    report.save(out_dir / "conversion_report.json")
    return report
