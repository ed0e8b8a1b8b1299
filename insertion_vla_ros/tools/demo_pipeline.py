"""Cached steps of the demo (and the closed-loop benches): sim demonstrations, Stage 1 and Stage 2 policies.

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

TRAINING_RECIPE_VERSION = 4
"""Part of the cached policy's key: bump it when the training code changes what a run produces (2: constant
action dimensions keep their constant, ``training.normalization.CONSTANT_ACTION_STD``; 3: age recipes and
the motion-since-capture input; 4: features may come from an episode's context before its first tick, and
the grounding read-out also enters compensated for the motion since capture)."""
DEMO_MODEL = "tiny_sim"
"""The embedded default: the Stage 0 sim-pretrained Qwen2.5-VL (``builtin:tiny-sim``) + a small expert."""
DEMO_VLM_LATENCY_S = 1.5
"""VLM latency the demo's policies are trained for and the demo's loop models (the users' 1.5 s)."""
DEMO_VLM_PERIOD_S = 1.7
"""VLM period of the demo (``config/models/tiny_sim.yaml``'s ``vlm_period_s``)."""


@dataclass(frozen=True)
class DataSettings:
    """Which demonstrations to generate."""

    episodes: int = 96
    seed: int = 0
    image_size: tuple[int, int] = (112, 112)
    camera_rate_hz: float = 10.0
    hold_steps: int = 20
    """Expert steps at rest at the goal before each demonstration ends (see ``sim.demos``)."""
    pause_probability: float = 0.25
    """Chance per step inside the tissue that the expert pauses (see ``sim.demos.run_expert_episode``)."""
    start_wait_s: float = DEMO_VLM_LATENCY_S + DEMO_VLM_PERIOD_S
    """Rest before the expert acts. The node holds until the VLM's first result, so the robot's first move
    is made on features 1.5-3.2 s old; a demonstration that moves at once has no such sample, and a policy
    trained on it learned "old features: already aligned, descend" and went down wherever it was."""


@dataclass(frozen=True)
class TrainSettings:
    """Stage 1 on cached VL features (frozen VLM)."""

    steps: int = 1600
    global_batch: int = 32
    recipe: str = "matched"
    """Feature ages to train on (``training.age_recipe``): fresh, reuse or matched."""
    vlm_latency_s: float = DEMO_VLM_LATENCY_S
    vlm_period_s: float = DEMO_VLM_PERIOD_S
    seed: int = 0
    lr: float = 1e-3
    model: str = DEMO_MODEL
    """Model config name or YAML path."""


@dataclass(frozen=True)
class Stage2Settings:
    """Stage 2: LoRA on the VLM with feature reuse, from a Stage 1 checkpoint (one VLM forward per group)."""

    steps: int = 100
    groups: int = 4
    lr_lora: float = 2e-4
    lr_heads: float = 2e-4
    seed: int = 0


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
        start_wait_s=settings.start_wait_s,
    )
    (staging / "summary.json").write_text(json.dumps(summaries, indent=1, default=str))
    shutil.rmtree(root, ignore_errors=True)
    staging.rename(root)
    return root / "episodes", json.loads(marker.read_text())


def ensure_policy(
    work: Path, data_dir: Path, data: DataSettings, train: TrainSettings, progress: bool = True
) -> Path:
    """Train (or reuse) a Stage 1 policy on ``data_dir``; return its final checkpoint directory."""
    from models.config import load_model_config
    from training.config import TrainConfig
    from training.trainer import train as run_training

    # The model config is part of the key: editing config/models/*.yaml must retrain, not reuse.
    key = _tag(data, train, load_model_config(train.model).to_dict(), TRAINING_RECIPE_VERSION)
    out = Path(work) / "train" / f"stage1-{key}"
    final = out / "final"
    if (final / "config.json").is_file():
        return final
    cfg = TrainConfig(
        stage=1,
        data=str(data_dir),
        out=str(out),
        model=train.model,
        cache_dir=str(Path(work) / "vl_cache"),
        cache_mode="build",
        steps=train.steps,
        global_batch=train.global_batch,
        micro_batch=train.global_batch,
        lr_sensor_encoder=train.lr,
        lr_action_expert=train.lr,
        warmup_steps=min(50, max(1, train.steps // 10)),
        age_recipe=train.recipe,
        vlm_latency_s=train.vlm_latency_s,
        vlm_period_s=train.vlm_period_s,
        val_fraction=0.125,
        val_every=max(1, train.steps // 4),
        val_max_items=128,
        checkpoint_every=max(1, train.steps // 4),
        seed=train.seed,
        device="cpu",
        progress=progress,
    )
    return _finished(run_training(cfg), train.steps)


def ensure_stage2_policy(
    work: Path,
    data_dir: Path,
    stage1: Path,
    train: TrainSettings,
    stage2: Stage2Settings,
    progress: bool = True,
) -> Path:
    """Fine-tune (or reuse) LoRA on the VLM from the Stage 1 checkpoint ``stage1``; return the checkpoint.

    Each step is ``groups`` VLM forwards, each shared by the R ticks that reuse its feature (at the ages of
    the Stage 1 recipe), exactly as a feature is reused at run time.
    """
    from training.config import TrainConfig
    from training.trainer import train as run_training

    key = _tag(str(stage1), train, stage2, TRAINING_RECIPE_VERSION)
    out = Path(work) / "train" / f"stage2-{key}"
    final = out / "final"
    if (final / "config.json").is_file():
        return final
    cfg = TrainConfig(
        stage=2,
        data=str(data_dir),
        out=str(out),
        init_checkpoint=str(stage1),
        cache_mode="off",
        steps=stage2.steps,
        global_batch=stage2.groups,
        micro_batch=stage2.groups,
        lr_lora=stage2.lr_lora,
        lr_sensor_encoder=stage2.lr_heads,
        lr_action_expert=stage2.lr_heads,
        warmup_steps=min(20, max(1, stage2.steps // 10)),
        age_recipe=train.recipe,
        vlm_latency_s=train.vlm_latency_s,
        vlm_period_s=train.vlm_period_s,
        group_stride=4,
        val_fraction=0.125,
        val_every=max(1, stage2.steps // 2),
        val_max_items=16,
        checkpoint_every=max(1, stage2.steps // 2),
        seed=stage2.seed,
        device="cpu",
        progress=progress,
    )
    return _finished(run_training(cfg), stage2.steps)


def _finished(result, steps: int) -> Path:
    if result.final_checkpoint is None:
        raise RuntimeError(f"training stopped at step {result.step} of {steps}; run again to resume")
    return Path(result.final_checkpoint)
