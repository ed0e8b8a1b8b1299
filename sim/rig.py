"""``InsertionRig``: the simulated rig as one object (scene, robot, 650 Hz sensor, cameras, task scoring).

Time starts at 0 on every ``reset`` and advances only through :meth:`InsertionRig.apply_action`, in whole
control ticks (10 ms). Streams are stamped on fixed grids from the episode start: poses at 100 Hz
(tick ``i`` -> ``start_ns + i * 10 ms``), sensor samples at 650 Hz (sample ``k`` -> ``start_ns +
round(k * 1e9 / 650)``), camera frames at their render time. ``start_ns`` (1 s by default) keeps every
stamp non-zero: a zero header stamp means "unset" in ROS tools.
Typical loop::

    rig = InsertionRig(RigConfig().with_image_size(112, 112), seed=0)
    obs = rig.reset(target="Red")
    while not done:
        rig.apply_action(action7)                 # 100 ms of motion at 100 Hz
        stamps_ns, samples = rig.sensor_samples_until(rig.time_s)   # the new 65 samples
        frames = rig.render_cameras()             # {"view1": HxWx3 uint8, ...}
    result = rig.evaluate()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from contracts.constants import CAMERA_NAMES, NS_PER_S
from sim.config import TARGET_COLOURS, RigConfig, instruction_for
from sim.render import CameraRig
from sim.robot import Robot, needle_axis
from sim.scene import Scene, sample_scene
from sim.sensor import NeedleSensor

DEFAULT_START_NS = NS_PER_S


@dataclass
class Observation:
    """What the rig offers a controller at one instant (no ground truth)."""

    time_s: float
    stamp_ns: int
    pose: np.ndarray
    images: dict[str, np.ndarray]
    instruction: str


class InsertionRig:
    """Deterministic simulated needle-insertion rig.

    ``seed`` fixes the whole sequence of episodes: the n-th ``reset()`` (without its own ``seed``) always
    draws the same scene, camera jitter, lighting and noise streams.
    """

    def __init__(self, config: RigConfig | None = None, seed: int = 0) -> None:
        self.config = config or RigConfig()
        self._episode_seeds = np.random.SeedSequence(seed)
        self.scene: Scene | None = None
        self.episode_seed: int | None = None

    # -- episode -----------------------------------------------------------------------------------

    def reset(
        self,
        target: str | None = None,
        seed: int | None = None,
        render: bool = True,
        start_ns: int = DEFAULT_START_NS,
    ) -> Observation:
        """Start a new episode (time 0) and return its first observation.

        ``target`` is one of :data:`sim.config.TARGET_COLOURS` (random when ``None``); ``seed`` pins this
        episode (otherwise the next one of the rig's seed sequence is used). ``render=False`` skips the
        cameras for the returned observation (``images`` is then empty). ``start_ns`` is the stamp of time 0.
        """
        if seed is None:
            seed = int(self._episode_seeds.spawn(1)[0].generate_state(1)[0])
        self.episode_seed = int(seed)
        # A 4th child leaves the first three (and so every still-phantom episode) unchanged.
        scene_seq, sensor_seq, camera_seq, drift_seq = np.random.SeedSequence(self.episode_seed).spawn(4)
        scene_rng = np.random.default_rng(scene_seq)
        if target is None:
            target = TARGET_COLOURS[int(scene_rng.integers(len(TARGET_COLOURS)))]
        cfg = self.config
        self.scene = sample_scene(cfg.scene, cfg.tissue, scene_rng, target, cfg.robot.gripper)
        drift_rng = np.random.default_rng(drift_seq)
        angle, self._drift_phase = drift_rng.uniform(0.0, 2.0 * np.pi, size=2)
        self._drift_direction = np.array([np.cos(angle), np.sin(angle)])
        self.robot = Robot(cfg.robot, self.scene.start_pose)
        self.sensor = NeedleSensor(cfg.sensor, cfg.tissue, self.scene, np.random.default_rng(sensor_seq))
        self._camera_seed = camera_seq
        self._cameras: CameraRig | None = None
        self.instruction = instruction_for(target)
        self._tick = 0
        self.start_ns = int(start_ns)
        self._poses = [self.robot.pose.copy()]
        self._pose_read = 0
        self._sensor_stamps: list[np.ndarray] = []
        self._sensor_samples: list[np.ndarray] = []
        self._next_sample = 0
        self.limited_steps = 0
        self._generate_sensor(np.stack([self.robot.pose, self.robot.pose]))
        return self.observe(render=render)

    def _require_episode(self) -> Scene:
        if self.scene is None:
            raise RuntimeError("call reset() first")
        return self.scene

    # -- time and motion ---------------------------------------------------------------------------

    @property
    def time_s(self) -> float:
        """Episode time in seconds (0 at reset)."""
        return self._tick / self.config.robot.control_rate_hz

    @property
    def stamp_ns(self) -> int:
        """Stamp of the current time: ``start_ns`` + episode time, integer nanoseconds."""
        return self.start_ns + self._tick * NS_PER_S // self.config.robot.control_rate_hz

    def phantom_shift_mm(self, t_s: float | np.ndarray | None = None) -> np.ndarray:
        """Where tissue motion has moved the phantom at episode time ``t_s`` (default now): x/y mm.

        ``[2]`` for a scalar time, ``[n, 2]`` for ``n`` times; zero unless ``scene.drift_amplitude_mm``.
        """
        self._require_episode()
        scene = self.config.scene
        t = np.asarray(self.time_s if t_s is None else t_s, float)
        if scene.drift_amplitude_mm == 0.0:
            return np.zeros((*t.shape, 2))
        sway = np.sin(2.0 * np.pi * scene.drift_frequency_hz * t + self._drift_phase) - np.sin(
            self._drift_phase
        )
        return scene.drift_amplitude_mm * sway[..., None] * self._drift_direction

    def target_xy_mm(self) -> np.ndarray:
        """Ground truth: where the instructed target is now (the scene's position plus tissue motion)."""
        return self._require_episode().target_xy_mm + self.phantom_shift_mm()

    def pose(self) -> np.ndarray:
        """Return the needle tip pose, 7-vector ``[x, y, z mm, rx, ry, rz rad, gripper]``."""
        self._require_episode()
        return self.robot.pose.copy()

    def apply_action(self, delta: np.ndarray, duration_s: float = 0.1) -> bool:
        """Follow one delta-pose action ``[dx, dy, dz mm, drx, dry, drz rad, gripper]`` over ``duration_s``.

        The motion is spread uniformly over the duration and integrated at the control rate; the sensor
        samples of the interval are generated on the way. Returns whether a rate/workspace limit acted.
        """
        self._require_episode()
        start = self.robot.pose.copy()
        poses, limited = self.robot.follow(delta, duration_s)
        self._poses.extend(poses)
        self._tick += poses.shape[0]
        self.limited_steps += int(limited)
        self._generate_sensor(np.concatenate([start[None], poses]))
        return limited

    def _generate_sensor(self, poses: np.ndarray) -> None:
        """Sensor samples with stamps in (previous tick, current tick], tip interpolated between ticks."""
        rate, control = self.config.sensor.rate_hz, self.config.robot.control_rate_hz
        last = self._tick * rate // control
        k = np.arange(self._next_sample, last + 1)
        if k.size == 0:
            return
        first_tick = self._tick - (poses.shape[0] - 1)
        ticks = k * control / rate - first_tick
        index = np.clip(np.floor(ticks).astype(int), 0, poses.shape[0] - 2)
        frac = (ticks - index)[:, None]
        tips = poses[index, 0:3] + frac * (poses[index + 1, 0:3] - poses[index, 0:3])
        velocity = (poses[index + 1, 0:3] - poses[index, 0:3]) * control
        depth_rate = -velocity[:, 2]
        tips[:, 0:2] -= self.phantom_shift_mm(k / rate)  # the tissue sees the tip in its own frame
        samples, _ = self.sensor.sample(k / rate, tips, depth_rate)
        self._sensor_stamps.append(self.start_ns + (2 * k * NS_PER_S + rate) // (2 * rate))  # nearest ns
        self._sensor_samples.append(samples)
        self._next_sample = int(last + 1)

    # -- streams -----------------------------------------------------------------------------------

    def sensor_samples_until(self, t_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return the sensor samples not yet returned up to episode time ``t_s`` (s; default: now).

        Returns ``(stamps_ns [n] int64, samples [n, C])``.

        ``samples`` is float32 ``[n, 1026]``: channel 0 force (N), 1..1025 the OCT A-line (0..1).
        """
        self._require_episode()
        stamps = np.concatenate(self._sensor_stamps) if self._sensor_stamps else np.zeros(0, np.int64)
        samples = (
            np.concatenate(self._sensor_samples)
            if self._sensor_samples
            else np.zeros((0, self.sensor.num_channels), np.float32)
        )
        limit = self.stamp_ns if t_s is None else self.start_ns + round(t_s * NS_PER_S)
        cut = int(np.searchsorted(stamps, limit, side="right"))
        rest_stamps, rest_samples = stamps[cut:], samples[cut:]
        self._sensor_stamps = [rest_stamps] if rest_stamps.size else []
        self._sensor_samples = [rest_samples] if rest_stamps.size else []
        return stamps[:cut], samples[:cut]

    def pose_samples_until(self, t_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return the 100 Hz poses not yet returned up to episode time ``t_s``: (stamps_ns, poses [m, 7])."""
        self._require_episode()
        control = self.config.robot.control_rate_hz
        last = self._tick if t_s is None else min(self._tick, int(np.floor(t_s * control + 1e-9)))
        ticks = np.arange(self._pose_read, last + 1)
        self._pose_read = max(self._pose_read, last + 1)
        poses = np.asarray(self._poses[ticks[0] : ticks[-1] + 1]) if ticks.size else np.zeros((0, 7))
        return self.start_ns + ticks * NS_PER_S // control, poses.reshape(-1, 7)

    @property
    def cameras(self) -> CameraRig:
        """The episode's cameras (built on first use, so camera-free runs skip the ray casting)."""
        scene = self._require_episode()
        if self._cameras is None:
            cfg = self.config
            rng = np.random.default_rng(self._camera_seed)
            self._cameras = CameraRig(cfg.camera, cfg.scene, scene, rng, cfg.robot.needle_length_mm)
        return self._cameras

    def render_cameras(self, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Render the camera views (default all of ``view1..view5``) now: ``{name: HxWx3 uint8}``."""
        self._require_episode()
        return self.cameras.render(self.robot.pose, names, self.phantom_shift_mm())

    @property
    def camera_names(self) -> tuple[str, ...]:
        """Camera names in model input order (``view5`` = tool view)."""
        return CAMERA_NAMES

    def observe(self, render: bool = True) -> Observation:
        """Return the current observation (pose, images, instruction) without ground truth."""
        self._require_episode()
        images = self.render_cameras() if render else {}
        return Observation(self.time_s, self.stamp_ns, self.pose(), images, self.instruction)

    # -- ground truth ------------------------------------------------------------------------------

    def tip_depth_mm(self) -> float:
        """Ground-truth depth of the tip below the phantom surface (negative above it)."""
        return float(-self.robot.pose[2])

    def evaluate(self) -> dict[str, Any]:
        """Score the episode so far against ground truth.

        ``success`` needs the tip inside the target layer (exactly ``target_layer`` membranes torn below
        the surface), within the lateral and depth tolerances, with the peak force never above the limit.
        """
        scene = self._require_episode()
        task = self.config.task
        tip = self.robot.pose[0:3]
        depth = self.tip_depth_mm()
        lateral = float(np.linalg.norm(tip[0:2] - self.target_xy_mm()))
        depth_error = depth - scene.target_depth_mm
        membranes = max(self.sensor.punctured_count - 1, 0)
        in_layer = bool(self.sensor.punctured[0]) and membranes == scene.target_layer
        in_layer = in_layer and scene.layer_at_depth(depth) == scene.target_layer
        force_ok = self.sensor.max_force_n <= task.force_limit_n
        success = (
            in_layer
            and lateral <= task.lateral_tolerance_mm
            and abs(depth_error) <= task.depth_tolerance_mm
            and force_ok
        )
        axis = needle_axis(self.robot.pose)
        return {
            "success": bool(success),
            "target": scene.target,
            "depth_error_mm": float(depth_error),
            "lateral_error_mm": lateral,
            "max_force_n": float(self.sensor.max_force_n),
            "force_limit_n": float(task.force_limit_n),
            "force_ok": bool(force_ok),
            "in_target_layer": in_layer,
            "membranes_punctured": membranes,
            "target_layer": scene.target_layer,
            "target_depth_mm": float(scene.target_depth_mm),
            "tip_depth_mm": depth,
            "tilt_rad": float(np.arccos(np.clip(-axis[2], -1.0, 1.0))),
            "time_s": self.time_s,
            "limited_steps": int(self.limited_steps),
            "episode_seed": self.episode_seed,
        }
