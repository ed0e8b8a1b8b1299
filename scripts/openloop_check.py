"""Open-loop check of a policy on recorded episodes: predicted first step vs the target, tick by tick.

Diagnoses closed-loop failures: when the open-loop predictions on (training) episodes are already wrong,
the model has not learned the behaviour; when they are right, look at the closed loop instead.
    scripts/in-env python scripts/openloop_check.py CHECKPOINT EPISODES_DIR [--episodes 6] [--every 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import load_checkpoint
from training.dataset import AlignmentConfig, EpisodeData
from training.episode import list_episodes


def main() -> int:
    """Print target vs predicted translation of the first chunk step for the first ticks of each episode."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("episodes", type=Path)
    parser.add_argument("--episodes-max", type=int, default=6)
    parser.add_argument("--ticks", type=int, default=40, help="first ticks of each episode to check")
    parser.add_argument("--every", type=int, default=4)
    args = parser.parse_args()
    policy = load_checkpoint(args.checkpoint, load_vlm=True)
    policy.eval()
    for path in list_episodes(args.episodes)[: args.episodes_max]:
        episode = EpisodeData(path, AlignmentConfig())
        print(f"{path.name}: {episode.instruction}")
        for tick in range(0, min(episode.num_ticks, args.ticks), args.every):
            sample = episode.sample(tick, 0)
            features = policy.extract_vl_features(episode.load_images(sample["ref"]), episode.instruction)
            window = torch.from_numpy(sample["sensor_window"])
            predicted = policy.predict_actions(
                features, window, float(sample["vl_age_s"]), robot_state=sample["robot_state"]
            ).numpy()
            target = np.asarray(sample["target_actions"])
            print(
                f"  tick {tick:3d}  target dxyz {target[0, :3].round(2)}  "
                f"predicted {predicted[0, :3].round(2)}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
