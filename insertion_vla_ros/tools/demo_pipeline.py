"""Cached steps of the demo (and the closed-loop bench): sim demonstrations, tiny VLM, Stage 1 policy.

Every product lives under a work folder in a sub-folder named by a hash of the settings that made it, and
is complete only when its marker file exists, so a later run with the same settings reuses it and a run
with other settings never does. Training resumes from its last checkpoint if it was interrupted.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

TRAINING_RECIPE_VERSION = 2
"""Part of the cached policy's key: bump it when the training code changes what a run produces (2: constant
action dimensions keep their constant, ``training.normalization.CONSTANT_ACTION_STD``)."""


@dataclass(frozen=True)
class DataSettings:
    """Which demonstrations to generate."""

    episodes: int = 16
    seed: int = 0
    image_size: tuple[int, int] = (112, 112)
    camera_rate_hz: float = 10.0
    hold_steps: int = 20
    """Expert steps at rest at the goal before each demonstration ends (see ``sim.demos``)."""
    pause_probability: float = 0.25
    """Chance per step inside the tissue that the expert pauses (see ``sim.demos.run_expert_episode``)."""


@dataclass(frozen=True)
class TrainSettings:
    """Stage 1 on cached VL features (frozen tiny VLM)."""

    steps: int = 400
    global_batch: int = 32
    reuse: bool = True
    """Staleness training: sample feature ages k = 0..R-1 (False: always fresh features, k = 0)."""
    seed: int = 0
    lr: float = 1e-3


def _tag(*parts: Any) -> str:
    text = json.dumps([asdict(p) if hasattr(p, "__dataclass_fields__") else p for p in parts], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def ensure_demonstrations(
    work: Path, settings: DataSettings, progress: bool = True
) -> tuple[Path, list[dict]]:
    """Generate (or reuse) expert demonstrations; return (episodes folder, per-episode summaries)."""
    from sim.demos import generate_demonstrations

    root = Path(work) / "demos" / f"sim-{_tag(settings)}"
    marker = root / "summary.json"
    if marker.is_file():
        return root / "episodes", json.loads(marker.read_text())
    staging = root.with_name(root.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    summaries = generate_demonstrations(
        staging / "episodes",
        settings.episodes,
        seed=settings.seed,
        image_size=settings.image_size,
        camera_rate_hz=settings.camera_rate_hz,
        hold_steps=settings.hold_steps,
        pause_probability=settings.pause_probability,
        progress=progress,
    )
    (staging / "summary.json").write_text(json.dumps(summaries, indent=1, default=str))
    shutil.rmtree(root, ignore_errors=True)
    staging.rename(root)
    return root / "episodes", json.loads(marker.read_text())


def ensure_tiny_vlm() -> Path:
    """Build (or reuse) the tiny Qwen2.5-VL the ``tiny`` model config names as ``builtin:tiny``."""
    from models.tiny_qwen import cached_tiny_qwen2_5_vl

    return cached_tiny_qwen2_5_vl()


def ensure_policy(
    work: Path, data_dir: Path, data: DataSettings, train: TrainSettings, progress: bool = True
) -> Path:
    """Train (or reuse) a Stage 1 tiny policy on ``data_dir``; return its final checkpoint directory."""
    from models.config import load_model_config
    from training.config import TrainConfig
    from training.trainer import train as run_training

    # The model config is part of the key: editing config/models/tiny.yaml must retrain, not reuse.
    key = _tag(data, train, load_model_config("tiny").to_dict(), TRAINING_RECIPE_VERSION)
    out = Path(work) / "train" / f"stage1-{key}"
    final = out / "final"
    if (final / "config.json").is_file():
        return final
    cfg = TrainConfig(
        stage=1,
        data=str(data_dir),
        out=str(out),
        model="tiny",
        cache_dir=str(Path(work) / "vl_cache"),
        cache_mode="build",
        steps=train.steps,
        global_batch=train.global_batch,
        micro_batch=train.global_batch,
        lr_sensor_encoder=train.lr,
        lr_action_expert=train.lr,
        warmup_steps=min(50, max(1, train.steps // 10)),
        age_weights=None if train.reuse else [1.0],
        val_fraction=0.125,
        val_every=max(1, train.steps // 4),
        val_max_items=128,
        checkpoint_every=max(1, train.steps // 4),
        seed=train.seed,
        device="cpu",
        progress=progress,
    )
    result = run_training(cfg)
    if result.final_checkpoint is None:
        raise RuntimeError(f"training stopped at step {result.step} of {train.steps}; run again to resume")
    return Path(result.final_checkpoint)
