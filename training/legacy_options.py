"""How ``convert-legacy`` reads the users' original recordings: layouts, Euler angles, instruction text.

Angle conventions are named with their frame, never by bare axis letters: ``intrinsic-XYZ`` (rotating
axes, x-y'-z''; the Meca500's ``GetPose`` alpha/beta/gamma, the default), ``extrinsic-xyz`` (fixed axes;
what scipy's lowercase ``"xyz"`` means, and what the users' v3 loaders used), ``intrinsic-ZYZ``... A bare
``xyz``/``XYZ``/``ZYZ`` is refused: scipy reads lowercase as extrinsic and uppercase as intrinsic, and
people use both spellings for both meanings.

The instruction is the original training code's: ``f"Perform {task.replace('_', ' ')} insertion task"``
(Insertion_VLAv2 ``vla_datasets/unified_dataset.py``, Insertion_VLA ``training/A5st_VLA_TRAIN_Unified.py``;
v3's loader uses the same task name), or the folder name verbatim with ``task_verbatim``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from contracts.constants import GRIPPER_DEFAULT, SENSOR_RATE_HZ
from models.pose_math import euler_to_matrix, extrinsic_euler_to_matrix, matrix_to_rotvec

LAYOUTS = ("v1", "v3", "v4")
"""v1: ``recv_all_<ts>/`` folders; v3: ``data_collection_<ts>/`` folders; v4: ``episode_<ts>.h5`` files."""

LAYOUT_SOURCES = {
    "v1": "Najongs/Insertion_VLA Make_dataset/Total_reciver.py",
    "v3": "Najongs/Insertion_VLAv3 Data_collection/data_collector.py",
    "v4": "Najongs/Insertion_VLAv4 New_dataset/Robot_action.py",
}

DEFAULT_EULER = "intrinsic-XYZ"
"""Mecademic Meca500 ``GetPose``: mm and degrees, Euler angles about the mobile axes x-y'-z''."""

EULER_AXES = ("XYZ", "XZY", "YXZ", "YZX", "ZXY", "ZYX", "XYX", "XZX", "YXY", "YZY", "ZXZ", "ZYZ")
EULER_FRAMES = ("intrinsic", "extrinsic")
ZED_SIDES = ("left", "right")


def euler_choices() -> list[str]:
    """Every accepted convention name, canonical spelling (intrinsic upper case, extrinsic lower case)."""
    return [f"intrinsic-{a}" for a in EULER_AXES] + [f"extrinsic-{a.lower()}" for a in EULER_AXES]


def parse_euler_convention(text: str) -> str:
    """Canonical name of a convention (``intrinsic-XYZ``, ``extrinsic-xyz``...); ValueError if ambiguous.

    The frame prefix is required; the axis letters may be in either case once the frame is named.
    """
    frame, _, axes = str(text).strip().partition("-")
    frame, axes = frame.lower(), axes.upper()
    if not axes:
        raise ValueError(
            f"ambiguous Euler convention {text!r}: name the frame too, e.g. intrinsic-XYZ (rotating axes "
            f"x-y'-z'', Meca500 GetPose, the default) or extrinsic-xyz (fixed axes, scipy 'xyz', the users' "
            f"v3 loaders); choices: {', '.join(euler_choices())}"
        )
    if frame not in EULER_FRAMES or axes not in EULER_AXES:
        raise ValueError(f"unknown Euler convention {text!r}; choices: {', '.join(euler_choices())}")
    return f"intrinsic-{axes}" if frame == "intrinsic" else f"extrinsic-{axes.lower()}"


def euler_convention_arg(text: str) -> str:
    """``argparse`` type for ``--euler``: the canonical name, or the refusal with the choices."""
    try:
        return parse_euler_convention(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def euler_deg_to_rotvec(angles_deg: np.ndarray, convention: str) -> np.ndarray:
    """Euler angles in degrees (..., 3) in ``convention`` -> rotation vectors (..., 3, rad)."""
    name = parse_euler_convention(convention)
    frame, axes = name.split("-")
    angles = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    to_matrix = euler_to_matrix if frame == "intrinsic" else extrinsic_euler_to_matrix
    return matrix_to_rotvec(to_matrix(angles, axes.upper()))


def instruction_for(task: str, verbatim: bool = False) -> str:
    """The original training code's instruction for a task folder name."""
    name = task if verbatim else task.replace("_", " ")
    return f"Perform {name} insertion task"


@dataclass
class LegacyOptions:
    """Interpretation of the legacy files (every field has a CLI flag of the same name).

    ``views``: camera names in model order; None takes the layout's own (View1..View5 for v1/v3, every
    ``observations/images`` key of a v4 file, sorted). ``layout``: "auto" (per session) or one of
    :data:`LAYOUTS`. ``task``: overrides the task name taken from the folders. ``zed_side``: which image of
    a v1 ZED stereo pair (``View1-4/left|right``). ``sensor_rate_hz``: used only to place v4 sensor samples
    whose stamps were stored as float32 (too coarse to use).
    """

    views: tuple[str, ...] | None = None
    euler_convention: str = DEFAULT_EULER
    pose_stamp_column: str = "origin_timestamp"
    time_unit: str = "auto"
    gripper: float = GRIPPER_DEFAULT
    layout: str = "auto"
    task: str | None = None
    task_verbatim: bool = False
    zed_side: str = "left"
    sensor_rate_hz: float = SENSOR_RATE_HZ

    def __post_init__(self) -> None:
        self.euler_convention = parse_euler_convention(self.euler_convention)
        if self.layout not in ("auto", *LAYOUTS):
            raise ValueError(f"unknown layout {self.layout!r}; choose auto or one of {LAYOUTS}")
        if self.zed_side not in ZED_SIDES:
            raise ValueError(f"zed_side must be one of {ZED_SIDES}, got {self.zed_side!r}")
        if not self.sensor_rate_hz > 0:
            raise ValueError(f"sensor_rate_hz must be positive, got {self.sensor_rate_hz}")
        if self.views is not None:
            self.views = tuple(self.views)
