"""Labelled grounding samples for Stage 0: the five views of a pose, and where every target lies.

A sample is one rendered frame of a seeded scene at a pose an insertion visits, with its ground truth for
every target colour: the lateral offset target - tip (mm, base frame), the target's pixel position in each
view and whether it is visible there. Training pairs each frame with every colour's instruction: the same
images with different answers are what make the text condition the features.

Poses are drawn per frame from the phases of an insertion towards one of the targets (the scene's
"trajectory" target): ``start`` (the rig's start region), ``approach`` (on the way from the start to
above the target), ``aligned`` (just above the target), ``inside`` (in the tissue under the target); a
fraction of frames tilts the needle within the robot's limit. ``GroundingStream(config, seed)`` is
deterministic: scene ``i`` of seed ``s`` is the same everywhere (and is not any demonstration's scene,
which :func:`sim.demos.episode_seed` draws from another seed space).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from models.pose_math import matrix_to_rotvec, rotvec_to_matrix
from sim.config import TARGET_COLOURS, RigConfig, instruction_for
from sim.rig import InsertionRig

PHASES: tuple[str, ...] = ("start", "approach", "aligned", "inside")
PHASE_WEIGHTS: tuple[float, ...] = (0.3, 0.3, 0.25, 0.15)
"""How often each phase is drawn; aligned and inside frames are where sub-mm precision decides success."""
_SEED_SPACE = 0x67726F75  # "grou": keeps grounding scenes out of the demonstrations' seed space


@dataclass(frozen=True)
class GroundingSample:
    """One rendered frame and its ground truth for every target colour (order of ``TARGET_COLOURS``)."""

    images: tuple[np.ndarray, ...]
    """The five views (``CAMERA_NAMES`` order), HxWx3 uint8."""
    pose: np.ndarray
    """Needle tip pose (7-vector) the frame shows."""
    offsets_mm: np.ndarray
    """[colours, 2] target - tip in the base frame, mm."""
    pixels: np.ndarray
    """[colours, views, 2] target centre (u, v) in each view, pixels."""
    visible: np.ndarray
    """[colours, views] bool: the target centre projects inside the view."""
    phase: str
    scene_index: int

    @property
    def tip_height_mm(self) -> float:
        """Height of the tip above the phantom surface (negative inside the tissue)."""
        return float(self.pose[2])

    def instructions(self) -> list[str]:
        """The instruction of every colour, in ``TARGET_COLOURS`` order."""
        return [instruction_for(colour) for colour in TARGET_COLOURS]


def scene_seed(seed: int, index: int) -> int:
    """Rig seed of grounding scene ``index`` under ``seed``."""
    return int(np.random.SeedSequence([_SEED_SPACE, seed, index]).generate_state(1)[0])


class GroundingStream:
    """Seeded stream of :class:`GroundingSample`: ``frames_per_scene`` frames of each scene in turn.

    Building a scene's cameras ray-casts the four fixed views once, so several frames per scene are cheap.
    """

    def __init__(
        self,
        config: RigConfig,
        seed: int,
        frames_per_scene: int = 8,
        tilt_fraction: float = 0.3,
    ) -> None:
        if frames_per_scene < 1:
            raise ValueError(f"frames_per_scene must be >= 1, got {frames_per_scene}")
        self.config = config
        self.seed = int(seed)
        self.frames_per_scene = int(frames_per_scene)
        self.tilt_fraction = float(tilt_fraction)
        self._rig = InsertionRig(config, seed=self.seed)

    def scene(self, index: int) -> list[GroundingSample]:
        """Every frame of scene ``index`` (deterministic)."""
        seed = scene_seed(self.seed, index)
        rig = self._rig
        rig.reset(seed=seed, render=False)
        scene = rig.scene
        rng = np.random.default_rng([seed, 1])
        cameras = rig.cameras
        samples = []
        for _ in range(self.frames_per_scene):
            phase = PHASES[int(rng.choice(len(PHASES), p=PHASE_WEIGHTS))]
            pose = self._draw_pose(rng, phase, scene.start_pose, scene.targets_xy_mm[scene.target])
            rig.robot.pose = pose
            frames = cameras.render(pose)
            views = tuple(frames[name] for name in rig.camera_names)
            pixels, visible = target_pixels(cameras, pose, scene.targets_xy_mm, rig.camera_names)
            offsets = np.stack([scene.targets_xy_mm[c] - pose[0:2] for c in TARGET_COLOURS])
            samples.append(GroundingSample(views, pose, offsets, pixels, visible, phase, index))
        return samples

    def __iter__(self) -> Iterator[GroundingSample]:
        index = 0
        while True:
            yield from self.scene(index)
            index += 1

    def _draw_pose(
        self, rng: np.random.Generator, phase: str, start: np.ndarray, target_xy: np.ndarray
    ) -> np.ndarray:
        """A tip pose of ``phase`` for an insertion from around ``start`` towards ``target_xy``."""
        scene_cfg = self.config.scene
        half = scene_cfg.start_offset_mm
        start_xy = rng.uniform(-half, half, size=2)
        start_z = rng.uniform(*scene_cfg.start_height_mm)
        if phase == "start":
            xy, z = start_xy, start_z
        elif phase == "approach":
            s = rng.uniform(0.0, 1.0)
            xy = start_xy + s * (target_xy - start_xy)
            z = rng.uniform(1.5, start_z)
        elif phase == "aligned":
            xy = target_xy + _disc(rng, rng.choice([0.3, 1.0, 2.5]))
            z = rng.uniform(0.2, 3.5)
        else:
            xy = target_xy + _disc(rng, rng.choice([0.2, 0.6]))
            z = -rng.uniform(0.0, 9.0)
        rotvec = np.zeros(3)
        if rng.random() < self.tilt_fraction:
            tilt = rng.uniform(0.0, self.config.robot.max_tilt_rad)
            heading = rng.uniform(0.0, 2.0 * np.pi)
            axis = np.array([np.cos(heading), np.sin(heading), 0.0])
            spin = rotvec_to_matrix(np.array([0.0, 0.0, rng.uniform(-0.3, 0.3)]))
            rotvec = matrix_to_rotvec(rotvec_to_matrix(axis * tilt) @ spin)
        return np.concatenate([xy, [z], rotvec, [self.config.robot.gripper]])


def _disc(rng: np.random.Generator, radius: float) -> np.ndarray:
    """A point uniform in a disc of ``radius`` mm."""
    r = radius * np.sqrt(rng.random())
    angle = rng.uniform(0.0, 2.0 * np.pi)
    return np.array([r * np.cos(angle), r * np.sin(angle)])


def target_pixels(
    cameras, pose: np.ndarray, targets_xy_mm: dict[str, np.ndarray], names: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centre ``[colours, views, 2]`` of every target in every view and its visibility."""
    points = np.stack([np.array([*targets_xy_mm[c], 0.0]) for c in TARGET_COLOURS])
    pixels = np.zeros((len(TARGET_COLOURS), len(names), 2))
    visible = np.zeros((len(TARGET_COLOURS), len(names)), dtype=bool)
    for v, name in enumerate(names):
        camera = cameras.camera(name, pose)
        cam = camera.to_camera(points)
        front = cam[:, 2] > 1.0
        depth = np.where(front, cam[:, 2], 1.0)[:, None]
        uv = camera.focal_px * cam[:, :2] / depth + np.array([camera.width / 2.0, camera.height / 2.0])
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < camera.width) & (uv[:, 1] >= 0) & (uv[:, 1] < camera.height)
        pixels[:, v] = uv
        visible[:, v] = front & inside
    return pixels, visible
