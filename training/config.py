"""Trainer settings (one dataclass for both stages), saved beside every checkpoint as JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainConfig:
    """Everything a training run needs besides the model config (which travels in the checkpoint)."""

    stage: int = 1
    data: str = ""
    """Folder of episode folders."""
    out: str = "runs/train"
    model: str = "tiny"
    """Model config name (``config/models/<name>.yaml``) or YAML path, for a fresh policy."""
    init_checkpoint: str | None = None
    """Start from this checkpoint instead (e.g. Stage 2 from the Stage 1 result)."""
    # data
    val_fraction: float = 0.2
    val_episodes: list[str] = field(default_factory=list)
    """Explicit validation episode names (overrides ``val_fraction``)."""
    val_max_items: int = 256
    age_recipe: str = "reuse"
    """Feature ages to train on (``training.age_recipe``): fresh, reuse (k in [0, R)) or matched (the ages
    the node sees deployed: VLM latency + U[0, period)). Recorded in the checkpoint."""
    vlm_latency_s: float | None = None
    """VLM latency for ``matched`` (default: from ``vlm_profile``, else 0)."""
    vlm_period_s: float | None = None
    """VLM period (default: from ``vlm_profile``, else the model config's ``vlm_period_s``)."""
    vlm_profile: str | None = None
    """``profile_vlm --json`` output: its measured p50 latency and recommended period."""
    group_stride: int = 1
    num_workers: int = 0
    # features (Stage 1)
    cache_dir: str | None = None
    cache_mode: str = "on"
    compute_on_miss: bool = False
    cache_batch_size: int = 8
    # optimisation
    steps: int = 1000
    global_batch: int = 32
    """Samples (Stage 1) or groups of R ticks (Stage 2) per optimizer step, over all ranks."""
    micro_batch: int = 32
    """Per-rank items per forward; accumulation steps = global_batch / (world * micro_batch)."""
    lr_sensor_encoder: float = 3e-4
    lr_action_expert: float = 3e-4
    lr_lora: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    amp: str = "auto"
    """auto (bf16 autocast on CUDA), bf16, or off."""
    renormalize: bool = False
    """Recompute normalisation statistics even when starting from a checkpoint."""
    # bookkeeping
    seed: int = 0
    device: str = "auto"
    val_every: int = 100
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    resume: bool = True
    """Continue from ``<out>/checkpoints/latest`` when it exists."""
    stop_after: int | None = None
    """Stop (as if interrupted) after this many steps of this call; the schedule still spans ``steps``."""
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict, rejecting unknown keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}")
        return cls(**data)

    def validate(self) -> TrainConfig:
        """Raise ``ValueError`` for inconsistent settings; return self."""
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        if self.cache_mode not in ("on", "off", "build"):
            raise ValueError(f"cache_mode must be on, off or build, got {self.cache_mode!r}")
        if self.stage == 1 and self.cache_mode != "off" and not self.cache_dir:
            raise ValueError(f"Stage 1 with cache_mode={self.cache_mode!r} needs cache_dir")
        if self.age_recipe not in ("fresh", "reuse", "matched"):
            raise ValueError(f"age_recipe must be fresh, reuse or matched, got {self.age_recipe!r}")
        if self.amp not in ("auto", "bf16", "off"):
            raise ValueError(f"amp must be auto, bf16 or off, got {self.amp!r}")
        for name in ("steps", "global_batch", "micro_batch", "checkpoint_every", "val_every", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.global_batch % self.micro_batch:
            raise ValueError(
                f"global_batch {self.global_batch} is not a multiple of micro_batch {self.micro_batch}"
            )
        return self
