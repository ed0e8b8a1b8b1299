"""Build a complete tiny policy checkpoint (tiny Qwen2.5-VL + LoRA + action expert) for tests and benches.

Everything is built locally through the models API and loads exactly like a trained checkpoint:
``python -m insertion_vla_ros.testing.tiny_checkpoint OUT_DIR`` prints the checkpoint directory.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path


def build_tiny_checkpoint(
    out_dir: str | Path,
    *,
    seed: int = 0,
    action_std: Sequence[float] | None = None,
    motion_input: bool = False,
) -> Path:
    """Write ``OUT_DIR/vlm`` (tiny Qwen2.5-VL) and ``OUT_DIR/checkpoint``; return the checkpoint path.

    ``action_std`` overrides the action normalisation (e.g. huge values to provoke non-finite outputs);
    ``motion_input`` gives the action expert the motion-since-capture input.
    """
    import torch

    from models.checkpoint import save_checkpoint
    from models.config import load_model_config
    from models.policy import AsyncVLAPolicy
    from models.tiny_qwen import build_tiny_qwen2_5_vl

    out = Path(out_dir)
    vlm_dir = out / "vlm"
    if not (vlm_dir / "config.json").is_file():
        build_tiny_qwen2_5_vl(vlm_dir, seed=seed)
    config = load_model_config("tiny")
    config.vlm.model_name_or_path = str(vlm_dir)
    config.action_expert.motion_input = motion_input
    torch.manual_seed(seed)
    policy = AsyncVLAPolicy(config.validate(), load_vlm=True)
    if action_std is not None:
        policy.set_normalization(action_std=list(action_std))
    return save_checkpoint(policy, out / "checkpoint")


def main(argv: list[str] | None = None) -> None:
    """Console entry: build the checkpoint and print its directory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_tiny_checkpoint(args.out_dir, seed=args.seed))


if __name__ == "__main__":
    main()
