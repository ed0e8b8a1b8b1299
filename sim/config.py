"""Configuration of the simulated rig: scene randomisation, robot limits, sensor, cameras and the task.

Every length is in mm, every angle in rad, forces in N, times in s. ``RigConfig.to_dict()/from_dict()``
round-trip through JSON (episode metadata stores the config used).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

from contracts.constants import GRIPPER_DEFAULT

TARGET_COLOURS: tuple[str, ...] = ("Red", "Blue", "Green", "White", "Yellow")
"""The five target points on the phantom surface."""


def instruction_for(target: str) -> str:
    """Task instruction for a target colour, e.g. ``"Perform Red_point insertion task"``."""
    if target not in TARGET_COLOURS:
        raise ValueError(f"unknown target {target!r}; expected one of {TARGET_COLOURS}")
    return f"Perform {target}_point insertion task"


def target_from_instruction(instruction: str) -> str:
    """Inverse of :func:`instruction_for` (raises ``ValueError`` on other text)."""
    for colour in TARGET_COLOURS:
        if instruction.strip() == instruction_for(colour):
            return colour
    raise ValueError(f"not an insertion instruction: {instruction!r}")


@dataclass
class SceneConfig:
    """Phantom geometry and its per-episode randomisation."""

    phantom_half_size_mm: float = 30.0
    phantom_height_mm: float = 25.0
    target_radius_mm: float = 2.0
    target_region_half_mm: float = 15.0
    target_min_separation_mm: float = 7.0
    # Membranes below the surface; layer k lies between boundary k and k+1 (boundary 0 = surface).
    layer_thickness_mm: tuple[tuple[float, float], ...] = ((3.0, 5.0), (4.5, 6.5))
    target_layer: int = 1
    """Layer to stop in: the needle must puncture ``target_layer`` membranes below the surface."""
    start_height_mm: tuple[float, float] = (5.0, 9.0)
    start_offset_mm: float = 10.0
    drift_amplitude_mm: float = 0.0
    """Tissue motion: the whole phantom sways sinusoidally by up to this much in x/y (0: still, the task)."""
    drift_frequency_hz: float = 0.2
    """Frequency of the sway (breathing-like); direction and phase are drawn per episode."""


@dataclass
class TissueConfig:
    """Force model: membrane tenting and puncture, friction, cutting and lateral loading."""

    stiffness_n_per_mm: tuple[float, float] = (0.8, 1.2)
    puncture_force_n: tuple[float, float] = (0.7, 1.3)
    friction_n_per_mm: tuple[float, float] = (0.02, 0.04)
    cutting_force_n: tuple[float, float] = (0.05, 0.15)
    lateral_stiffness_n_per_mm: float = 0.8
    velocity_scale_mm_s: float = 0.3


@dataclass
class RobotConfig:
    """Rate and workspace limits of the arm holding the needle (pose = needle tip, base frame)."""

    control_rate_hz: int = 100
    max_speed_mm_s: float = 15.0
    max_angular_speed_rad_s: float = 0.5
    workspace_min_mm: tuple[float, float, float] = (-40.0, -40.0, -20.0)
    workspace_max_mm: tuple[float, float, float] = (40.0, 40.0, 60.0)
    max_tilt_rad: float = 0.35
    needle_length_mm: float = 40.0
    gripper: float = GRIPPER_DEFAULT


@dataclass
class SensorConfig:
    """650 Hz force + OCT A-line sensor."""

    rate_hz: int = 650
    oct_samples: int = 1025
    oct_range_mm: float = 3.0
    force_noise_n: float = 0.01
    oct_noise_floor: float = 1e-3
    oct_attenuation_per_mm: tuple[float, ...] = (0.5, 0.7, 0.9)
    oct_scattering: tuple[float, ...] = (0.02, 0.012, 0.03)
    oct_reflectivity: tuple[float, ...] = (1.0, 0.6, 0.5)
    oct_boundary_width_mm: float = 0.012
    oct_dynamic_range_db: float = 45.0


@dataclass
class CameraConfig:
    """Five pinhole cameras (four around the phantom, ``view5`` from the top)."""

    width: int = 640
    height: int = 360
    fov_deg: float = 42.0
    """Field of view across the smaller image dimension."""
    side_distance_mm: float = 85.0
    side_elevation_deg: float = 40.0
    top_height_mm: float = 110.0
    pose_jitter_mm: float = 3.0
    noise_std: float = 3.0
    light_gain_range: tuple[float, float] = (0.8, 1.15)
    flicker_std: float = 0.02


@dataclass
class TaskConfig:
    """Success criteria."""

    lateral_tolerance_mm: float = 1.0
    depth_tolerance_mm: float = 0.75
    force_limit_n: float = 3.0


@dataclass
class RigConfig:
    """Everything the rig needs; defaults are the realistic setting (640x360 cameras)."""

    scene: SceneConfig = field(default_factory=SceneConfig)
    tissue: TissueConfig = field(default_factory=TissueConfig)
    robot: RobotConfig = field(default_factory=RobotConfig)
    sensor: SensorConfig = field(default_factory=SensorConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    task: TaskConfig = field(default_factory=TaskConfig)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly nested dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RigConfig:
        """Build from :meth:`to_dict` output; unknown keys raise ``ValueError``."""
        return _from_dict(cls, data)

    def with_image_size(self, width: int, height: int) -> RigConfig:
        """Copy with another camera image size."""
        data = self.to_dict()
        data["camera"]["width"], data["camera"]["height"] = int(width), int(height)
        return RigConfig.from_dict(data)


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        if is_dataclass(default):
            kwargs[name] = _from_dict(type(default), value)
        elif isinstance(default, tuple):
            kwargs[name] = _to_tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _to_tuple(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_to_tuple(v) for v in value)
    return value
