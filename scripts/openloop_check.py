"""Open-loop check of a policy on recorded episodes: predicted first step vs the target, tick by tick.

Diagnoses closed-loop failures: when the open-loop predictions on (training) episodes are already wrong,
the model has not learned the behaviour; when they are right, look at the closed loop instead. Ticks are
judged by the node's controller (``evaluate``'s replay, fresh features every tick: latency 0).
    scripts/in-env python scripts/openloop_check.py CHECKPOINT EPISODES_DIR [--episodes-max 6] [--every 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from contracts.episode import list_episodes
from insertion_vla_ros.tools.evaluate import evaluate_episode
from models.checkpoint import load_checkpoint


def main() -> int:
    """Print target vs predicted translation of the first chunk step for the first ticks of each episode."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("episodes", type=Path)
    parser.add_argument("--episodes-max", type=int, default=6)
    parser.add_argument("--ticks", type=int, default=40, help="first ticks of each episode to check")
    parser.add_argument("--every", type=int, default=4)
    args = parser.parse_args()
    policy = load_checkpoint(args.checkpoint, load_vlm=True).eval()
    for path in list_episodes(args.episodes)[: args.episodes_max]:
        run = evaluate_episode(path, policy, vlm_latency_s=0.0, vlm_period_s=0.1)
        print(f"{path.name}: {run['instruction']}")
        for index, tick in enumerate(run["ticks"][: args.ticks]):
            if index % args.every:
                continue
            if "predicted" not in tick:
                print(f"  tick {index:3d}  {tick['reason']}")
                continue
            print(
                f"  tick {index:3d}  target dxyz {tick['recorded'][0, :3].round(2)}  "
                f"predicted {tick['predicted'][0, :3].round(2)}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
