"""Demonstrations: run the scripted expert in the rig and record episodes (training format and/or rosbag2).

Streams per episode: cameras at ``camera_rate_hz`` (frames stamped at capture), the 650 Hz sensor, poses
at 100 Hz, the instruction, and metadata (seeds, target, ground-truth result, rig config). Camera frames
are taken on control ticks, so ``camera_rate_hz`` must divide the 100 Hz control rate (10, 20, 25, 50).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from contracts.constants import ACTION_PERIOD_S, NS_PER_S
from contracts.episode import EpisodeWriter
from sim.config import RigConfig
from sim.expert import ScriptedExpert
from sim.rig import InsertionRig


class EpisodeSink(Protocol):
    """What a recorder implements (``EpisodeWriter`` and ``sim.bag.BagEpisodeWriter`` do)."""

    def add_frame(self, camera: str, stamp_ns: int, rgb: np.ndarray) -> None:
        """Record one camera frame."""

    def add_sensor(self, stamps_ns: np.ndarray, samples: np.ndarray) -> None:
        """Record sensor samples."""

    def add_pose(self, stamp_ns: int, pose: np.ndarray) -> None:
        """Record one pose."""

    def close(self, extra_metadata: dict[str, Any] | None = None) -> Path:
        """Finish the recording."""

    def abort(self) -> None:
        """Discard the recording."""


DEFAULT_HOLD_STEPS = 20
"""Steps the expert stays at its goal before an episode ends. Longer than a chunk (8 steps), so that
training sees ticks whose whole target chunk is "stay": with 3 hold steps no sample ever showed the robot
at rest at the goal, and learned policies kept inserting past the target depth."""


DEFAULT_START_WAIT_S = 0.0
"""Seconds at rest before the expert acts (0: it acts at once, as before)."""


def start_wait_steps(start_wait_s: float, step_s: float = ACTION_PERIOD_S) -> int:
    """Whole expert steps of a start wait (``ValueError`` for a negative one)."""
    if start_wait_s < 0:
        raise ValueError(f"start_wait_s must be >= 0, got {start_wait_s}")
    return round(start_wait_s / step_s)


def episode_seed(seed: int, index: int) -> int:
    """Return the rig seed of demonstration ``index`` in the set generated with ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def run_expert_episode(
    rig: InsertionRig,
    sinks: Sequence[EpisodeSink],
    expert_seed: int = 0,
    camera_rate_hz: float = 10.0,
    step_s: float = ACTION_PERIOD_S,
    max_steps: int = 250,
    hold_steps: int = DEFAULT_HOLD_STEPS,
    pause_probability: float = 0.0,
    pause_steps: tuple[int, int] = (2, 6),
    start_wait_s: float = DEFAULT_START_WAIT_S,
) -> dict[str, Any]:
    """Drive the expert in a ``reset`` rig, streaming everything to ``sinks``; return ``evaluate()``.

    With ``start_wait_s`` > 0 the robot first stays at rest that long (recorded; the episode's
    ``action_start_ns`` says where the expert starts, see ``contracts.episode``).

    The episode ends ``hold_steps`` steps after the expert reaches its goal, or after ``max_steps`` steps.
    With ``pause_probability`` > 0 the expert stops for ``pause_steps`` (inclusive range, drawn from
    ``expert_seed``) with that probability at each step inside the tissue before its goal. Without such
    pauses "the tip was moving" predicts "keep moving" perfectly in the 100 ms sensor window, and a policy
    can imitate its own motion instead of learning where to stop from the OCT/force signals.
    """
    scene = rig.scene
    if scene is None:
        raise RuntimeError("reset the rig before running an episode")
    control = rig.config.robot.control_rate_hz
    frame_ticks = control / camera_rate_hz
    step_ticks = round(step_s * control)
    if abs(frame_ticks - round(frame_ticks)) > 1e-9 or frame_ticks < 1:
        raise ValueError(f"camera_rate_hz {camera_rate_hz} must divide the {control} Hz control rate")
    frame_ticks = round(frame_ticks)
    expert = ScriptedExpert(scene, step_s=step_s, seed=expert_seed, gripper=rig.config.robot.gripper)

    def record_frames() -> None:
        frames = rig.render_cameras()
        for name in rig.camera_names:
            for sink in sinks:
                sink.add_frame(name, rig.stamp_ns, frames[name])

    def record_streams() -> None:
        pose_stamps, poses = rig.pose_samples_until()
        sensor_stamps, samples = rig.sensor_samples_until()
        for sink in sinks:
            for stamp, pose in zip(pose_stamps, poses):
                sink.add_pose(int(stamp), pose)
            sink.add_sensor(sensor_stamps, samples)

    tick = 0
    record_streams()
    record_frames()
    held = 0
    pause_rng = np.random.default_rng([expert_seed, 1])
    paused = 0
    waiting = start_wait_steps(start_wait_s, step_s)
    for _ in range(waiting + max_steps):
        action = expert.act(rig.pose())
        if waiting > 0:
            waiting -= 1
            action = np.concatenate([np.zeros(6), action[6:]])
        inside = rig.pose()[2] < 0.0 and not expert.at_goal(rig.pose())
        if paused == 0 and inside and pause_rng.random() < pause_probability:
            paused = int(pause_rng.integers(pause_steps[0], pause_steps[1] + 1))
        if paused > 0:
            paused -= 1
            action = np.concatenate([np.zeros(6), action[6:]])
        done_ticks = 0
        while done_ticks < step_ticks:
            # Split the step at camera ticks; uniform motion makes the pieces add up to the whole step.
            piece = min(frame_ticks - tick % frame_ticks, step_ticks - done_ticks)
            fraction = piece / step_ticks
            part = np.concatenate([action[:6] * fraction, action[6:]])
            rig.apply_action(part, piece / control)
            done_ticks += piece
            tick += piece
            record_streams()
            if tick % frame_ticks == 0:
                record_frames()
        if expert.at_goal(rig.pose()):
            held += 1
            if held >= hold_steps:
                break
    return rig.evaluate()


def generate_demonstrations(
    out_dir: str | os.PathLike,
    num_episodes: int,
    seed: int = 0,
    image_size: tuple[int, int] = (112, 112),
    camera_rate_hz: float = 10.0,
    config: RigConfig | None = None,
    targets: Sequence[str] | None = None,
    bag_dir: str | os.PathLike | None = None,
    write_episodes: bool = True,
    max_steps: int = 250,
    hold_steps: int = DEFAULT_HOLD_STEPS,
    pause_probability: float = 0.0,
    progress: bool = True,
    start_wait_s: float = DEFAULT_START_WAIT_S,
) -> list[dict[str, Any]]:
    """Run the expert for ``num_episodes`` seeded episodes and record each one.

    Episodes go to ``out_dir/episode_00000`` ... in the ``contracts.episode`` format (when
    ``write_episodes``); with ``bag_dir`` the same streams also go to ``bag_dir/episode_00000`` ... as
    rosbag2 MCAP. ``image_size`` is (width, height). ``targets`` cycles through the given colours (random
    per episode when ``None``). ``start_wait_s``: see :func:`run_expert_episode`. Returns one summary per
    episode: paths, seeds and the ``evaluate()`` result.
    """
    from sim.bag import BagEpisodeWriter

    config = (config or RigConfig()).with_image_size(*image_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if bag_dir is not None:
        Path(bag_dir).mkdir(parents=True, exist_ok=True)
    rig = InsertionRig(config, seed=seed)
    summaries = []
    for index in tqdm(range(num_episodes), desc="sim demos", unit="ep", disable=not progress):
        rig_seed = episode_seed(seed, index)
        target = targets[index % len(targets)] if targets else None
        rig.reset(target=target, seed=rig_seed, render=False)
        name = f"episode_{index:05d}"
        metadata = {
            "seed": seed,
            "episode_index": index,
            "episode_seed": rig_seed,
            "target": rig.scene.target,
            "camera_rate_hz": camera_rate_hz,
            "image_size": list(image_size),
            "hold_steps": hold_steps,
            "pause_probability": pause_probability,
            "start_wait_s": start_wait_s,
            "rig_config": config.to_dict(),
        }
        wait_ns = start_wait_steps(start_wait_s) * round(ACTION_PERIOD_S * NS_PER_S)
        sinks: list[Any] = []
        if write_episodes:
            sinks.append(
                EpisodeWriter(
                    out_dir / name,
                    rig.instruction,
                    list(rig.camera_names),
                    sensor_rate_hz=config.sensor.rate_hz,
                    pose_rate_hz=config.robot.control_rate_hz,
                    num_sensor_channels=rig.sensor.num_channels,
                    source="sim",
                    metadata=metadata,
                    action_start_ns=rig.start_ns + wait_ns if wait_ns else None,
                )
            )
        if bag_dir is not None:
            sinks.append(
                BagEpisodeWriter(
                    Path(bag_dir) / name, rig.instruction, list(rig.camera_names), config.sensor.rate_hz
                )
            )
        try:
            result = run_expert_episode(
                rig,
                sinks,
                expert_seed=rig_seed,
                camera_rate_hz=camera_rate_hz,
                max_steps=max_steps,
                hold_steps=hold_steps,
                pause_probability=pause_probability,
                start_wait_s=start_wait_s,
            )
        except BaseException:
            for sink in sinks:
                sink.abort()
            raise
        paths = [str(sink.close(extra_metadata={"result": result})) for sink in sinks]
        summaries.append({"name": name, "paths": paths, **result})
    return summaries
