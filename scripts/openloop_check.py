"""Open-loop check of a policy on recorded episodes: predicted first step vs the target, tick by tick.

Diagnoses closed-loop failures: when the open-loop predictions on (training) episodes are already wrong,
the model has not learned the behaviour; when they are right, look at the closed loop instead. Ticks are
judged by the node's controller (``evaluate``'s replay; fresh features every tick unless
``--vlm-latency-s`` models the node's VLM timing).
    scripts/in-env python scripts/openloop_check.py CHECKPOINT EPISODES_DIR [--episodes-max 6] [--every 4]

``--around-stop N`` shows the N ticks before and after the recording comes to rest for the last time (the
expert at its goal depth) instead of the first ticks: whether the policy stops because it sees the goal
(it predicts the stop before the recorded one) or only because the window shows the tip at rest (one
tick after), which a closed loop never reaches on its own.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from contracts.episode import list_episodes
from insertion_vla_ros.tools.evaluate import evaluate_episode
from models.checkpoint import load_checkpoint

MOVING_MM = 0.02
"""A recorded first step longer than this (any translation axis) counts as motion."""


def last_move_index(recorded_steps: np.ndarray) -> int | None:
    """Index of the last tick whose recorded first step moves (``[N, 3]`` translations), or None."""
    moving = np.flatnonzero(np.abs(recorded_steps).max(axis=1) > MOVING_MM)
    return int(moving[-1]) if moving.size else None


def main() -> int:
    """Print target vs predicted translation of the first chunk step for the chosen ticks of each episode."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("episodes", type=Path)
    parser.add_argument("--episodes-max", type=int, default=6)
    parser.add_argument("--ticks", type=int, default=40, help="first ticks of each episode to check")
    parser.add_argument("--every", type=int, default=4)
    parser.add_argument(
        "--around-stop", type=int, default=0, help="show N ticks either side of the last recorded motion"
    )
    parser.add_argument("--vlm-latency-s", type=float, default=0.0)
    parser.add_argument("--vlm-period-s", type=float, default=0.1)
    args = parser.parse_args()
    policy = load_checkpoint(args.checkpoint, load_vlm=True).eval()
    for path in list_episodes(args.episodes)[: args.episodes_max]:
        run = evaluate_episode(path, policy, vlm_latency_s=args.vlm_latency_s, vlm_period_s=args.vlm_period_s)
        print(f"{path.name}: {run['instruction']}")
        ticks = list(enumerate(run["ticks"]))
        if args.around_stop:
            judged = [(i, t) for i, t in ticks if "predicted" in t]
            stop = last_move_index(np.array([t["recorded"][0, :3] for _, t in judged]))
            if stop is None:
                print("  the recording never moves")
                continue
            window = judged[max(0, stop - args.around_stop) : stop + args.around_stop + 1]
            shown = [(i, t, "<- last recorded motion" if i == judged[stop][0] else "") for i, t in window]
        else:
            shown = [(i, t, "") for i, t in ticks[: args.ticks] if i % args.every == 0]
        for index, tick, mark in shown:
            if "predicted" not in tick:
                print(f"  tick {index:3d}  {tick['reason']}")
                continue
            print(
                f"  tick {index:3d}  target dxyz {tick['recorded'][0, :3].round(2)}  "
                f"predicted {tick['predicted'][0, :3].round(2)}  {mark}".rstrip(),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
