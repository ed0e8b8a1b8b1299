"""Convert the users' original (pre-ROS) recordings into episodes, every layout their collection code wrote.

Sessions are found under ``root`` by what they hold, and each one's layout is chosen on its own
(``LegacyOptions.layout`` forces one):

- v1 ``recv_all_<ts>/`` (Insertion_VLA ``Make_dataset/Total_reciver.py``), v3 ``data_collection_<ts>/``
  (Insertion_VLAv3 ``Data_collection/data_collector.py``), or any folder holding ``robot_state_*.csv``,
  ``robot_rt_*.csv`` or ``sensor_data_*.npz`` (v1 when its views have ``left/``/``right/`` folders):
  read by :mod:`training.legacy_layouts`;
- v4 ``episode_<ts>.h5`` (Insertion_VLAv4 ``New_dataset/Robot_action.py``): read by :mod:`training.legacy_h5`.

Poses are Meca500 ``GetPose`` values (mm, degrees); the Euler convention defaults to the robot's
(intrinsic x-y'-z'') and is stored in each episode's metadata. The instruction is the original training
code's, "Perform <task with spaces> insertion task"; the task is the session's parent folder for v1/v3
(as the original loaders), and for v4 files the first folder below ``root`` (their layout is
``<Task>/<Task>/<date>/<operator>/episode_*.h5``). Bare-number stamps go through
:func:`training.timestamps.to_ns` (unit an option, default auto).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from training.conversion_report import ConversionReport, EpisodeReport
from training.episode_builder import CleaningPolicy, RawEpisode, build_episode
from training.image_codec import ImageDecodeError
from training.legacy_h5 import read_h5_episode
from training.legacy_layouts import DEFAULT_VIEWS, ZED_VIEWS, read_folder_session
from training.legacy_options import (
    DEFAULT_EULER,
    LAYOUT_SOURCES,
    LAYOUTS,
    LegacyOptions,
    euler_convention_arg,
    instruction_for,
    parse_euler_convention,
)

__all__ = [
    "DEFAULT_EULER",
    "DEFAULT_VIEWS",
    "LAYOUTS",
    "LegacyOptions",
    "convert_legacy",
    "detect_layout",
    "euler_convention_arg",
    "find_sessions",
    "legacy_summary",
    "parse_euler_convention",
]

FOLDER_PREFIXES = {"recv_all_": "v1", "data_collection_": "v3"}
STREAM_PATTERNS = ("robot_state_*.csv", "robot_rt_*.csv", "sensor_data_*.npz")
H5_SUFFIXES = (".h5", ".hdf5")
LOOKED_FOR = (
    "recv_all_*/ (v1), data_collection_*/ (v3), folders holding robot_state_*.csv, robot_rt_*.csv or "
    "sensor_data_*.npz, and episode_*.h5 files (v4)"
)


def _is_folder_session(path: Path) -> bool:
    if any(path.name.startswith(prefix) for prefix in FOLDER_PREFIXES):
        return True
    return any(next(path.glob(pattern), None) is not None for pattern in STREAM_PATTERNS)


def _kind_matches(path: Path, layout: str) -> bool:
    is_h5 = path.suffix.lower() in H5_SUFFIXES
    return layout == "auto" or (layout == "v4") == is_h5


def find_sessions(root: str | os.PathLike, layout: str = "auto") -> list[Path]:
    """Every session under ``root`` (or ``root`` itself): folders of v1/v3, h5 files of v4.

    A forced ``layout`` keeps only sessions of its kind (folders for v1/v3, h5 files for v4).
    """
    root = Path(root)
    if root.is_file():
        found = [root] if root.suffix.lower() in H5_SUFFIXES else []
    elif _is_folder_session(root):
        found = [root]
    else:
        found = []
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            dirnames.sort()
            sessions = [d for d in dirnames if _is_folder_session(here / d)]
            found += [here / d for d in sessions]
            dirnames[:] = [d for d in dirnames if d not in sessions]  # never descend into a session
            found += [here / f for f in sorted(filenames) if Path(f).suffix.lower() in H5_SUFFIXES]
    return sorted(p for p in found if _kind_matches(p, layout))


def detect_layout(session: Path) -> str:
    """v4 for h5 files; v1/v3 from a folder's name, else v1 when its ZED views have left/right folders."""
    if session.suffix.lower() in H5_SUFFIXES:
        return "v4"
    for prefix, layout in FOLDER_PREFIXES.items():
        if session.name.startswith(prefix):
            return layout
    stereo = any((session / v / side).is_dir() for v in ZED_VIEWS for side in ("left", "right"))
    return "v1" if stereo else "v3"


def task_name(session: Path, root: Path, layout: str) -> str:
    """v1/v3: the session's parent folder; v4: the first folder below ``root`` (else the file's folder)."""
    if layout == "v4":
        with contextlib.suppress(ValueError):
            parts = session.absolute().relative_to(root.absolute()).parts
            if len(parts) >= 2:
                return parts[0]
    return session.absolute().parent.name


def _new_raw(session: Path, name: str, task: str, layout: str, options: LegacyOptions) -> RawEpisode:
    return RawEpisode(
        name=name,
        instruction=instruction_for(task, options.task_verbatim),
        cameras=list(options.views or DEFAULT_VIEWS),
        source="legacy",
        metadata={
            "task": task,
            "session": session.name,
            "layout": layout,
            "layout_source": LAYOUT_SOURCES[layout],
            "euler_convention": options.euler_convention,
            "pose_units": "Meca500 GetPose: x, y, z mm; a, b, r deg",
        },
    )


def read_session(
    session: Path,
    layout: str,
    task: str,
    options: LegacyOptions,
    report: EpisodeReport,
    stack: contextlib.ExitStack,
) -> RawEpisode | None:
    """Read one session into raw streams; None (reason in ``report``) when it cannot be used.

    A v4 file stays open on ``stack``: its frames are read while the episode is written.
    """
    report.counts["layout"] = layout
    raw = _new_raw(session, report.name, task, layout, options)
    is_h5 = session.suffix.lower() in H5_SUFFIXES and session.is_file()
    if layout == "v4" and not is_h5:
        report.skip(f"layout v4 reads episode_*.h5 files; {session.name} is not one")
        return None
    if layout != "v4" and not session.is_dir():
        report.skip(f"layout {layout} reads session folders; {session.name} is not a folder")
        return None
    if layout == "v4":
        ok = read_h5_episode(session, options, raw, report, stack)
    else:
        ok = read_folder_session(session, layout, options, raw, report)
    return raw if ok else None


def _episode_name(session: Path, task: str, used: set[str]) -> str:
    stem = session.stem if session.suffix.lower() in H5_SUFFIXES else session.name
    name = f"{task}__{stem}"
    if name in used:
        name = f"{name}__{session.parent.name}"
    base, n = name, 2
    while name in used:
        name, n = f"{base}__{n}", n + 1
    used.add(name)
    return name


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
    root, out_dir = Path(root), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ConversionReport("convert-legacy")
    used: set[str] = set()
    found = list(sessions) if sessions is not None else find_sessions(root, options.layout)
    for session in tqdm(found, desc="legacy sessions", unit="ep", disable=not progress):
        layout = detect_layout(session) if options.layout == "auto" else options.layout
        task = options.task or task_name(session, root, layout)
        entry = EpisodeReport(source=str(session), name=_episode_name(session, task, used))
        report.episodes.append(entry)
        with contextlib.ExitStack() as stack:
            try:
                raw = read_session(session, layout, task, options, entry, stack)
                if raw is not None:
                    build_episode(raw, out_dir, entry, policy)
            except (ValueError, ImageDecodeError, OSError) as error:
                entry.skip(f"conversion failed: {error}")
    report.save(out_dir / "conversion_report.json")
    return report


def legacy_summary(report: ConversionReport, options: LegacyOptions, root: str | os.PathLike) -> str:
    """``report.summary()``, the angle convention, each episode's layout, and a hint when none was found."""
    lines = [
        report.summary(),
        f"  angles: pose a/b/r (deg) read as {options.euler_convention} Euler angles "
        f"(--euler; the Meca500's is {DEFAULT_EULER})",
    ]
    if not report.episodes:
        lines.append(f"  no sessions found under {root}: looked for {LOOKED_FOR}")
    for e in report.episodes:
        layout = e.counts.get("layout", "?")
        pose = (
            f", pose {e.counts['pose_file']} [{e.counts['pose_format']}]" if "pose_file" in e.counts else ""
        )
        lines.append(f"  LAYOUT   {e.name}: {layout} ({LAYOUT_SOURCES.get(layout, 'unknown')}){pose}")
    return "\n".join(lines)
