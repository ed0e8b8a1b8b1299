"""Speed of the simulated rig: 5-view renders, 100 ms control steps (robot + 65 samples), expert episodes.

Metrics: ``render_5view_112_{p50,p99,mean}_ms``, ``render_5view_640x360_*``, ``step_100ms_*`` (one action
incl. its 65 force/OCT samples), ``episode_s`` (mean wall time of a camera-free expert episode) and
``expert_success`` (fraction of the seeded episodes the expert solved).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import base_parser, emit, percentiles_ms  # noqa: E402
from sim.config import RigConfig  # noqa: E402
from sim.expert import ScriptedExpert  # noqa: E402
from sim.rig import InsertionRig  # noqa: E402


def _time_renders(config: RigConfig, repeats: int) -> list[float]:
    rig = InsertionRig(config, seed=0)
    rig.reset()
    samples = []
    for i in range(repeats):
        rig.apply_action([0.2 * np.sin(i), 0.2 * np.cos(i), -0.05, 0, 0, 0, 1.0])
        start = time.perf_counter()
        rig.render_cameras()
        samples.append(time.perf_counter() - start)
    return samples


def main() -> None:
    args = base_parser(__doc__.splitlines()[0]).parse_args()
    repeats, episodes = (30, 5) if args.quick else (200, 20)
    small = RigConfig().with_image_size(112, 112)
    metrics = {}
    metrics.update(percentiles_ms(_time_renders(small, repeats), "render_5view_112"))
    metrics.update(percentiles_ms(_time_renders(RigConfig(), max(repeats // 5, 5)), "render_5view_640x360"))

    rig = InsertionRig(small, seed=1)
    step_times, episode_times, successes = [], [], []
    for _ in range(episodes):
        rig.reset(render=False)
        expert = ScriptedExpert(rig.scene)
        start = time.perf_counter()
        for _ in range(250):
            action = expert.act(rig.pose())
            t = time.perf_counter()
            rig.apply_action(action)
            rig.sensor_samples_until()
            step_times.append(time.perf_counter() - t)
            if expert.at_goal(rig.pose()):
                break
        episode_times.append(time.perf_counter() - start)
        successes.append(rig.evaluate()["success"])
    metrics.update(percentiles_ms(step_times, "step_100ms"))
    metrics["episode_s"] = float(np.mean(episode_times))
    metrics["expert_success"] = float(np.mean(successes))
    config = {"quick": args.quick, "render_repeats": repeats, "episodes": episodes}
    emit("sim_speed", config, metrics, args.out)


if __name__ == "__main__":
    main()
