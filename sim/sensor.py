"""The 650 Hz needle sensor: channel 0 axial force (N), channels 1.. an OCT A-line ahead of the tip.

Force model (per sample, vectorised over a batch):

* tenting: the first intact boundary ahead (the surface, then each membrane) deflects with the tip and
  pushes back ``k * deflection``; when that reaches the boundary's puncture force it tears, the stored
  force vanishes (the puncture drop) and the tip continues into the next layer;
* friction along the inserted shaft ``mu * length * tanh(v / v0)`` (resists motion either way) and a
  cutting force at the tip while advancing;
* a lateral term when the needle moves sideways away from its entry point while inserted.

OCT model: depth grid ``oct_range_mm`` ahead of the tip; each boundary ahead reflects a narrow peak, each
layer back-scatters with its own strength, light attenuates with the layers' coefficients (round trip),
and everything carries multiplicative speckle plus a noise floor; the output is log-compressed to 0..1.
"""

from __future__ import annotations

import numpy as np

from sim.config import SensorConfig, TissueConfig
from sim.scene import Scene


class NeedleSensor:
    """Tissue interaction state (punctures, entry point) plus the force/OCT signal generator."""

    def __init__(
        self, config: SensorConfig, tissue: TissueConfig, scene: Scene, rng: np.random.Generator
    ) -> None:
        self.config = config
        self.tissue = tissue
        self.scene = scene
        self._rng = rng
        boundaries = scene.boundary_depths_mm.shape[0]
        self.punctured = np.zeros(boundaries, dtype=bool)
        self.puncture_times_s: list[float | None] = [None] * boundaries
        self.entry_xy_mm: np.ndarray | None = None
        self.max_force_n = 0.0
        self.grid_mm = np.linspace(0.0, config.oct_range_mm, config.oct_samples, dtype=np.float32)
        self._dz = float(self.grid_mm[1] - self.grid_mm[0])
        # Lookup tables indexed by layer + 1 (index 0 = air ahead of the surface).
        attenuation = np.concatenate([[0.0], np.resize(config.oct_attenuation_per_mm, boundaries)])
        self._attenuation = attenuation.astype(np.float32)
        self._ln_floor = np.float32(np.log(config.oct_noise_floor))
        scattering = np.concatenate([[config.oct_noise_floor], np.resize(config.oct_scattering, boundaries)])
        self._ln_scattering = np.log(scattering).astype(np.float32)
        self._reflectivity = np.resize(np.asarray(config.oct_reflectivity, dtype=np.float32), boundaries)
        # Speckle pool (drawn once per episode; each batch takes a random contiguous cut of it).
        pool = rng.standard_exponential(1 << 19, dtype=np.float32)
        self._speckle_pool = np.log(pool + np.float32(1e-12))

    @property
    def num_channels(self) -> int:
        """Channels per sample (1 force + the A-line)."""
        return 1 + self.config.oct_samples

    @property
    def punctured_count(self) -> int:
        """Number of boundaries (surface included) the needle has torn through."""
        return int(self.punctured.sum())

    def sample(
        self, times_s: np.ndarray, tip_mm: np.ndarray, depth_rate_mm_s: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Advance the tissue state through the samples; returns (samples [n, C] float32, true force [n]).

        ``tip_mm`` [n, 3] are the tip positions at ``times_s`` [n], ``depth_rate_mm_s`` [n] how fast the tip
        moves deeper (positive when inserting).
        """
        tip_mm = np.asarray(tip_mm, dtype=np.float64).reshape(-1, 3)
        n = tip_mm.shape[0]
        depth = -tip_mm[:, 2]
        force = np.zeros(n)
        start = 0
        while start < n:
            force[start:], punctured_at = self._force(
                depth[start:], depth_rate_mm_s[start:], tip_mm[start:, :2]
            )
            if punctured_at is None:
                break
            index = start + punctured_at
            boundary = int(np.argmin(self.punctured))
            self.punctured[boundary] = True
            self.puncture_times_s[boundary] = float(times_s[index])
            if boundary == 0:
                self.entry_xy_mm = tip_mm[index, :2].copy()
            start = index
        if n:
            self.max_force_n = max(self.max_force_n, float(force.max()))
        out = np.empty((n, self.num_channels), dtype=np.float32)
        out[:, 0] = force + self.config.force_noise_n * self._rng.standard_normal(n)
        out[:, 1:] = self._a_lines(depth)
        return out, force

    def _force(self, depth: np.ndarray, rate: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, int | None]:
        """Force under the current puncture state and the first sample index where a boundary tears."""
        scene, tissue = self.scene, self.tissue
        force = np.zeros(depth.shape[0])
        punctured_at = None
        ahead = int(np.argmin(self.punctured)) if not self.punctured.all() else None
        if ahead is not None:
            deflection = np.maximum(depth - scene.boundary_depths_mm[ahead], 0.0)
            tent = scene.stiffness_n_per_mm[ahead] * deflection
            torn = np.nonzero(tent >= scene.puncture_force_n[ahead])[0]
            if torn.size:
                punctured_at = int(torn[0])
                tent[punctured_at:] = 0.0
            force += tent
        if self.punctured[0]:
            inside = depth > 0
            last = self.punctured_count - 1
            layer = np.minimum(np.searchsorted(scene.boundary_depths_mm, depth, side="right") - 1, last)
            layer = np.clip(layer, 0, None)
            motion = np.tanh(rate / tissue.velocity_scale_mm_s)
            friction = scene.friction_n_per_mm[layer] * np.maximum(depth, 0.0) * motion
            cutting = scene.cutting_force_n[layer] * np.maximum(motion, 0.0)
            lateral = tissue.lateral_stiffness_n_per_mm * np.linalg.norm(xy - self.entry_xy_mm, axis=1)
            force += np.where(inside, friction + cutting + lateral, 0.0)
            if punctured_at is not None:
                # Samples from the tear on are recomputed by the caller under the new state.
                force[punctured_at:] = 0.0
        return force, punctured_at

    def _a_lines(self, depth: np.ndarray) -> np.ndarray:
        """OCT A-lines [n, oct_samples] in 0..1 for tips at ``depth`` (mm below the surface).

        Computed in the log domain: the layers' back-scatter attenuates exponentially, so its logarithm is
        piecewise linear and needs no cumulative sum; speckle is a log-exponential term.
        """
        cfg = self.config
        n, bins = depth.shape[0], self.grid_mm.shape[0]
        relative = self.scene.boundary_depths_mm[None, :] - depth[:, None]
        # A torn boundary behind the tip is passed; an intact one cannot be behind it (it tents at 0).
        passed = self.punctured[None, :] & (relative <= 0)
        edge = np.where(passed, -1.0, np.maximum(relative, 0.0)).astype(np.float32)
        grid = self.grid_mm[None, :]
        medium = passed.sum(axis=1)  # layer + 1 at the tip (0 = air)
        optical_depth = self._attenuation[medium][:, None] * grid
        ln_signal = np.empty((n, bins), np.float32)
        ln_signal[:] = self._ln_scattering[medium][:, None]
        for k in range(edge.shape[1]):
            ahead = ~passed[:, k] & (edge[:, k] < self.grid_mm[-1])
            if not ahead.any():
                continue
            # Crossing boundary k: the attenuation slope and the scattering level change from then on.
            start = edge[:, k : k + 1]
            slope = (self._attenuation[k + 1] - self._attenuation[k]) * ahead
            optical_depth += slope[:, None] * np.maximum(grid - start, np.float32(0.0))
            jump = (self._ln_scattering[k + 1] - self._ln_scattering[k]) * ahead
            ln_signal += jump[:, None] * (grid >= start)
        ln_signal -= np.float32(2.0) * optical_depth
        np.maximum(ln_signal, self._ln_floor, out=ln_signal)
        self._add_reflections(ln_signal, edge, passed, optical_depth)
        ln_signal += self._log_speckle(n * bins).reshape(n, bins)
        db = (ln_signal - self._ln_floor) * np.float32(10.0 / np.log(10.0) / cfg.oct_dynamic_range_db)
        return np.clip(db, 0.0, 1.0)

    def _add_reflections(
        self, ln_signal: np.ndarray, edge: np.ndarray, passed: np.ndarray, optical_depth: np.ndarray
    ) -> None:
        """Add each boundary ahead as a narrow Gaussian peak, attenuated by the tissue in front of it."""
        bins = ln_signal.shape[1]
        width = self.config.oct_boundary_width_mm
        half = int(np.ceil(3.0 * width / self._dz))
        centre = np.rint(edge / self._dz).astype(np.intp)
        rows, k = np.nonzero(~passed & (centre - half < bins))
        if not rows.size:
            return
        columns = centre[rows, k][:, None] + np.arange(-half, half + 1)[None, :]
        inside = (columns >= 0) & (columns < bins)
        columns = np.clip(columns, 0, bins - 1)
        at_edge = optical_depth[rows, np.clip(centre[rows, k], 0, bins - 1)]
        amplitude = self._reflectivity[k] * np.exp(-2.0 * at_edge)
        distance = columns * self._dz - edge[rows, k][:, None]
        peak = amplitude[:, None] * np.exp(-((distance / width) ** 2)) * inside
        index = (np.broadcast_to(rows[:, None], columns.shape), columns)
        linear = np.exp(ln_signal[index]) + peak
        ln_signal[index] = np.log(linear).astype(np.float32)

    def _log_speckle(self, size: int) -> np.ndarray:
        """``size`` values of log(Exp(1)) speckle, cut at a random place from a per-episode pool."""
        if size > self._speckle_pool.size // 2:
            return np.log(self._rng.standard_exponential(size, dtype=np.float32) + np.float32(1e-12))
        start = int(self._rng.integers(0, self._speckle_pool.size - size + 1))
        return self._speckle_pool[start : start + size]
