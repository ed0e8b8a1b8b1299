"""Per-episode ground truth of the phantom: target points, tissue layers, tissue mechanics, start pose.

Base frame: x/y on the phantom's top surface (z = 0), z up, mm. Depth below the surface is ``-z``.
Boundary 0 is the surface; boundary k (k >= 1) is the k-th membrane; layer k lies between boundary k and
boundary k+1 (the last layer reaches the phantom floor).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.config import TARGET_COLOURS, SceneConfig, TissueConfig

TARGET_RGB: dict[str, tuple[int, int, int]] = {
    "Red": (215, 35, 35),
    "Blue": (35, 70, 215),
    "Green": (40, 170, 60),
    "White": (245, 245, 240),
    "Yellow": (240, 215, 40),
}


@dataclass(frozen=True)
class Scene:
    """Ground truth of one episode (all randomised under the episode seed)."""

    target: str
    targets_xy_mm: dict[str, np.ndarray]
    boundary_depths_mm: np.ndarray
    """Depths [K] of the surface (0) and the membranes below it, increasing."""
    target_layer: int
    target_depth_mm: float
    stiffness_n_per_mm: np.ndarray
    """Membrane (tenting) stiffness per boundary [K]."""
    puncture_force_n: np.ndarray
    """Force at which each boundary punctures [K]."""
    friction_n_per_mm: np.ndarray
    """Shaft friction per mm of inserted length while the tip is in layer k [K]."""
    cutting_force_n: np.ndarray
    """Cutting force of the tip advancing through layer k [K]."""
    start_pose: np.ndarray
    """Initial needle tip pose, 7-vector (mm, rotation vector, gripper)."""

    @property
    def target_xy_mm(self) -> np.ndarray:
        """Surface position of the instructed target."""
        return self.targets_xy_mm[self.target]

    def layer_at_depth(self, depth_mm: float) -> int:
        """Layer index at a depth below the surface (-1 above the surface)."""
        return int(np.searchsorted(self.boundary_depths_mm, depth_mm, side="right")) - 1


def sample_scene(
    scene_cfg: SceneConfig, tissue_cfg: TissueConfig, rng: np.random.Generator, target: str, gripper: float
) -> Scene:
    """Draw one episode's phantom (targets, layers, mechanics) and start pose from ``rng``."""
    if target not in TARGET_COLOURS:
        raise ValueError(f"unknown target {target!r}; expected one of {TARGET_COLOURS}")
    thickness = np.array([rng.uniform(lo, hi) for lo, hi in scene_cfg.layer_thickness_mm])
    boundaries = np.concatenate([[0.0], np.cumsum(thickness)])
    k = scene_cfg.target_layer
    if not 0 <= k < boundaries.shape[0]:
        raise ValueError(f"target_layer {k} outside 0..{boundaries.shape[0] - 1}")
    layer_thickness = (
        thickness[k] if k < thickness.shape[0] else float(np.mean(scene_cfg.layer_thickness_mm[-1]))
    )
    n = boundaries.shape[0]

    def draw(bounds: tuple[float, float]) -> np.ndarray:
        return rng.uniform(bounds[0], bounds[1], size=n)

    start_xy = rng.uniform(-scene_cfg.start_offset_mm, scene_cfg.start_offset_mm, size=2)
    start_z = rng.uniform(*scene_cfg.start_height_mm)
    return Scene(
        target=target,
        targets_xy_mm=_sample_targets(scene_cfg, rng),
        boundary_depths_mm=boundaries,
        target_layer=k,
        target_depth_mm=float(boundaries[k] + 0.5 * layer_thickness),
        stiffness_n_per_mm=draw(tissue_cfg.stiffness_n_per_mm),
        puncture_force_n=draw(tissue_cfg.puncture_force_n),
        friction_n_per_mm=draw(tissue_cfg.friction_n_per_mm),
        cutting_force_n=draw(tissue_cfg.cutting_force_n),
        start_pose=np.array([start_xy[0], start_xy[1], start_z, 0.0, 0.0, 0.0, gripper]),
    )


def _sample_targets(cfg: SceneConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Rejection-sample five points with a minimum separation inside the target region."""
    for _ in range(1000):
        points = rng.uniform(
            -cfg.target_region_half_mm, cfg.target_region_half_mm, size=(len(TARGET_COLOURS), 2)
        )
        gaps = np.linalg.norm(points[:, None] - points[None], axis=-1) + np.eye(len(points)) * 1e9
        if gaps.min() >= cfg.target_min_separation_mm:
            return {colour: points[i] for i, colour in enumerate(TARGET_COLOURS)}
    raise RuntimeError("could not place the targets; lower target_min_separation_mm")
