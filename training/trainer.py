"""The training loop shared by Stage 1 (cached VL features) and Stage 2 (LoRA, one VLM forward per group).

Run under ``torchrun --nproc_per_node=N`` for DDP, or as a plain process. Per optimizer step every rank
takes its micro-batches of the step's global batch (:mod:`training.sampler`); each micro-batch loss is
rescaled by its share of the valid action steps of the whole global batch, so N ranks x A accumulation
steps compute the same gradient as one process with the same global batch.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from contracts.episode import list_episodes
from models.checkpoint import load_checkpoint, save_checkpoint
from models.config import load_model_config
from models.policy import AsyncVLAPolicy
from training import resume_state
from training.age_recipe import age_plan, staleness_config
from training.config import TrainConfig
from training.dataset import (
    AlignmentConfig,
    EpisodeData,
    FeatureRef,
    GroupDataset,
    TickDataset,
    collate_groups,
    collate_ticks,
    open_episodes,
    split_episodes,
)
from training.distributed import DistInfo, all_reduce_sum, barrier, init_distributed, shutdown
from training.feature_cache import CacheMissError, FeatureCache
from training.features import FeatureSource, build_cache, pad_features
from training.normalization import compute_normalization
from training.run_log import RunLog
from training.sampler import BatchPlan, RankBatchSampler, sample_k

LR_GROUPS = {"sensor_encoder": "lr_sensor_encoder", "action_expert": "lr_action_expert", "lora": "lr_lora"}


@dataclass
class TrainResult:
    """What a run produced."""

    step: int
    finished: bool
    final_checkpoint: Path | None
    history: dict[str, list[list[float]]]


def build_policy(cfg: TrainConfig, device: torch.device, load_vlm: bool) -> AsyncVLAPolicy:
    """A fresh policy from ``cfg.model`` or one loaded from ``cfg.init_checkpoint``, set up for the stage."""
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank and in every run
    if cfg.init_checkpoint:
        policy = load_checkpoint(cfg.init_checkpoint, device=device, load_vlm=load_vlm)
    else:
        policy = AsyncVLAPolicy(load_model_config(cfg.model), load_vlm=load_vlm, device=device)
        if policy.config.action_expert.grounding_input:
            policy.load_grounding_from_vlm()
    policy.set_stage(cfg.stage)
    return policy.train()


def lr_lambda(cfg: TrainConfig):
    """Linear warm-up then cosine decay to ``min_lr_ratio`` over ``cfg.steps``."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def all_feature_refs(episodes: list[EpisodeData]) -> list[FeatureRef]:
    """Every feature a dataset over ``episodes`` can ask for (one per grid time used as t0)."""
    refs = [
        ep.feature_ref(ep.timeline.tick_ns(t))
        for ep in episodes
        for t in range(-ep.context_ticks, ep.num_ticks)
    ]
    return list(dict.fromkeys(refs))


class Trainer:
    """Set up once (policy, data, features, optimizer, resume), then :meth:`run`."""

    def __init__(
        self, cfg: TrainConfig, info: DistInfo | None = None, policy: AsyncVLAPolicy | None = None
    ) -> None:
        """Build everything for ``cfg``; ``policy`` reuses an already constructed policy (benchmarks)."""
        self.cfg = cfg.validate()
        self.info = info or init_distributed(cfg.device)
        self.out = Path(cfg.out)
        self.ckpt_root = self.out / "checkpoints"
        self.amp = (self.info.device.type == "cuda" and cfg.amp == "auto") or cfg.amp == "bf16"
        needs_vlm = cfg.stage == 2 or cfg.cache_mode in ("off", "build") or cfg.compute_on_miss
        if policy is None:
            self.policy = build_policy(cfg, self.info.device, needs_vlm)
        else:
            policy.set_stage(cfg.stage)
            self.policy = policy.train()
        pcfg = self.policy.config
        self.ages = age_plan(cfg.age_recipe, pcfg, cfg.vlm_latency_s, cfg.vlm_period_s, cfg.vlm_profile)
        pcfg.staleness = staleness_config(self.ages)  # travels in every checkpoint this run writes
        self.align = AlignmentConfig(
            window=pcfg.sensor.window,
            horizon=pcfg.action_expert.horizon,
            dt_s=pcfg.action_period_s,
            reuse=self.ages.reuse,
            age_weights=self.ages.age_weights,
            group_offset=self.ages.first_k,
        )
        self._open_data()
        self.features = self._feature_source() if cfg.stage == 1 else None
        self.optimizer = torch.optim.AdamW(self._param_groups(), weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.step = 0
        history: dict[str, list[list[float]]] = {}
        latest = resume_state.latest_checkpoint(self.ckpt_root) if cfg.resume else None
        if latest is not None:
            state = resume_state.load_resume_checkpoint(
                latest, self.policy, self.optimizer, self.scheduler, self.info.rank, self.info.world
            )
            self.step, history = int(state["step"]), state.get("history", {})
        elif cfg.init_checkpoint is None or cfg.renormalize:
            stats = compute_normalization(self.train_episodes)
            self.policy.set_normalization(**stats)
        if latest is None:
            torch.manual_seed(cfg.seed + 1000 + self.info.rank)  # per-rank stream for dropout/flow noise
        self.resumed_from = latest
        self.model = self.policy
        if self.info.distributed:
            device_ids = [self.info.local_rank] if self.info.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.policy, device_ids=device_ids)
        self.log = RunLog(self.out, history) if self.info.is_main else None

    # ------------------------------------------------------------------------------------------- setup
    def _open_data(self) -> None:
        cfg = self.cfg
        paths = list_episodes(cfg.data)
        if cfg.val_episodes:
            val = [p for p in paths if p.name in set(cfg.val_episodes)]
            train = [p for p in paths if p not in val]
        else:
            train, val = split_episodes(paths, cfg.val_fraction, cfg.seed)
        if not train:
            raise ValueError(f"no training episodes under {cfg.data}")
        self.train_episodes = open_episodes(train, self.align)
        self.val_episodes = open_episodes(val, self.align, self.train_episodes[0].cameras) if val else []
        sensor = self.policy.config.sensor
        if self.train_episodes[0].num_channels != sensor.channels:
            raise ValueError(
                f"episodes have {self.train_episodes[0].num_channels} sensor channels, "
                f"the model {sensor.channels}"
            )
        if len(self.train_episodes[0].cameras) != self.policy.config.vlm.num_views:
            raise ValueError(
                f"episodes have {len(self.train_episodes[0].cameras)} cameras, "
                f"the model takes {self.policy.config.vlm.num_views} views"
            )
        self.episodes_by_name = {ep.name: ep for ep in self.train_episodes + self.val_episodes}
        if cfg.stage == 1:
            self.train_set = TickDataset(self.train_episodes, self.align)
            self.val_set = TickDataset(self.val_episodes, self.align) if self.val_episodes else None
        else:
            self.train_set = GroupDataset(self.train_episodes, self.align, cfg.group_stride)
            self.val_set = (
                GroupDataset(self.val_episodes, self.align, cfg.group_stride) if self.val_episodes else None
            )
        self.plan = BatchPlan(self.train_set.max_k(), cfg.global_batch, cfg.seed, self.align.age_weights)
        per_rank = cfg.global_batch // self.info.world
        if cfg.global_batch % self.info.world or per_rank % cfg.micro_batch:
            raise ValueError(
                f"global_batch {cfg.global_batch} must split into {self.info.world} ranks x "
                f"micro_batch {cfg.micro_batch}"
            )
        self.accum = per_rank // cfg.micro_batch

    def load_images(self, ref: FeatureRef) -> list[np.ndarray]:
        """Decode the frames of a feature reference."""
        return self.episodes_by_name[ref.episode].load_images(ref)

    def _extract(self, images: list[list[np.ndarray]], instructions: list[str]) -> list[torch.Tensor]:
        with self._autocast():
            return self.policy.extract_vl_features_batch(images, instructions)

    def _feature_source(self) -> FeatureSource:
        cfg = self.cfg
        cache = None
        if cfg.cache_mode != "off":
            cache = FeatureCache(cfg.cache_dir, self.policy.fingerprint, rank=self.info.rank)
        if cfg.cache_mode == "build":
            refs = all_feature_refs(self.train_episodes + self.val_episodes)
            build_cache(
                cache,
                refs,
                self._extract,
                self.load_images,
                cfg.cache_batch_size,
                self.info.rank,
                self.info.world,
                progress=cfg.progress and self.info.is_main,
            )
            barrier(self.info)
            cache.reload()
        if cfg.cache_mode == "on" and not cfg.compute_on_miss:
            self._require_cached(cache)
        has_vlm = self.policy.has_vlm
        return FeatureSource(
            "on" if cfg.cache_mode == "build" else cfg.cache_mode,
            cache,
            self._extract if has_vlm else None,
            self.load_images,
            compute_on_miss=cfg.compute_on_miss,
        )

    def _require_cached(self, cache: FeatureCache) -> None:
        """Fail before the first step, in one line, when features are missing (or their shard is corrupt)."""
        cache.verify()  # a corrupt shard is dropped here and its entries count as missing
        missing = cache.missing(all_feature_refs(self.train_episodes + self.val_episodes))
        if missing:
            episodes = sorted({ref.episode for ref in missing})
            shown = ", ".join(episodes[:5]) + (f" and {len(episodes) - 5} more" if len(episodes) > 5 else "")
            raise CacheMissError(
                f"{len(missing)} VL features missing from the cache {cache.directory} (episodes {shown}); "
                "rebuild them with `insertion_vla_train build-cache --data ... --cache-dir ...`, or pass "
                "--compute-on-miss to compute them during training"
            )

    def _param_groups(self) -> list[dict[str, Any]]:
        groups = []
        for name, params in self.policy.parameter_groups().items():
            if params:
                groups.append({"params": params, "lr": getattr(self.cfg, LR_GROUPS[name]), "name": name})
        return groups

    def _autocast(self):
        if self.amp:
            return torch.autocast(self.info.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------------------------------ batches
    def prepare(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Add VL features (Stage 1) and move tensors to the device."""
        out = dict(batch)
        if self.cfg.stage == 1:
            features, out["vl_mask"] = self.features.features(batch["refs"])
            out["vl_features"] = features.float()  # caches may hold float16/bfloat16 (feature_dtype)
            out.pop("images", None)
        out.pop("refs", None)
        return {k: v.to(self.info.device) if isinstance(v, torch.Tensor) else v for k, v in out.items()}

    def loader(self) -> torch.utils.data.DataLoader:
        """This rank's micro-batches from the current data position on."""
        epoch, step = divmod(self.step, self.plan.steps_per_epoch)
        sampler = RankBatchSampler(self.plan, self.info.rank, self.info.world, self.accum, epoch, step)
        collate = collate_ticks if self.cfg.stage == 1 else collate_groups
        # A private generator: creating the loader must not draw from the global RNG (exact resume).
        return torch.utils.data.DataLoader(
            self.train_set,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=self.cfg.num_workers,
            generator=torch.Generator().manual_seed(self.cfg.seed),
        )

    def train_step(self, micro_batches: list[dict[str, Any]]) -> float:
        """One optimizer step over this rank's micro-batches; returns the global-batch loss."""
        valid = [float(mb["action_mask"].sum()) for mb in micro_batches]
        total_valid = float(all_reduce_sum(torch.tensor(sum(valid), dtype=torch.float64), self.info))
        loss_sum = torch.zeros((), dtype=torch.float64)
        for i, (mb, n_valid) in enumerate(zip(micro_batches, valid)):
            sync = i == len(micro_batches) - 1 or not self.info.distributed
            with contextlib.nullcontext() if sync else self.model.no_sync():
                with self._autocast():
                    output = self.model(self.prepare(mb))
                weight = n_valid / max(total_valid, 1.0)
                (output.loss * (weight * self.info.world)).backward()
            loss_sum += float(output.loss.detach()) * weight
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return float(all_reduce_sum(loss_sum, self.info))

    # ----------------------------------------------------------------------------------------- evaluate
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation loss and per-dimension MAE (physical units) on a fixed subset of validation items."""
        if self.val_set is None or len(self.val_set) == 0:
            return {}
        policy = self.policy
        names = policy.action_names
        n = len(self.val_set)
        chosen = np.linspace(0, n - 1, min(n, self.cfg.val_max_items)).round().astype(np.int64)
        ks = sample_k(
            np.random.default_rng([self.cfg.seed, 99]), self.val_set.max_k()[chosen], self.align.age_weights
        )
        items = list(zip(chosen.tolist(), ks.tolist()))
        collate = collate_ticks if self.cfg.stage == 1 else collate_groups
        loss_sum, weight_sum = 0.0, 0.0
        abs_sum = torch.zeros(len(names), dtype=torch.float64)
        was_training = policy.training
        policy.eval()
        with torch.random.fork_rng(devices=[self.info.device] if self.info.device.type == "cuda" else []):
            torch.manual_seed(self.cfg.seed)
            for start in range(0, len(items), self.cfg.micro_batch):
                raw = collate([self.val_set[item] for item in items[start : start + self.cfg.micro_batch]])
                batch = self.prepare(raw)
                with self._autocast():
                    output = policy(batch)
                mask = batch["action_mask"]
                valid = float(mask.sum())
                loss_sum += float(output.loss) * valid
                weight_sum += valid
                if self.cfg.stage == 1:
                    vl, vl_mask = batch["vl_features"], batch["vl_mask"]
                else:
                    vl, vl_mask = pad_features(self._extract(raw["images"], raw["instructions"]))
                    vl = vl.repeat_interleave(batch["group_size"], dim=0)
                    vl_mask = vl_mask.repeat_interleave(batch["group_size"], dim=0)
                with self._autocast():
                    pred = policy.predict_actions(
                        vl,
                        batch["sensor_window"],
                        batch["vl_age_s"],
                        vl_mask,
                        batch["robot_state"],
                        motion=batch["motion"],
                    )
                err = (pred.float() - batch["target_actions"]).abs() * mask[..., None]
                abs_sum += err.sum(dim=(0, 1)).double().cpu()
        policy.train(was_training)
        steps = max(weight_sum, 1.0)
        metrics = {"val/loss": loss_sum / steps}
        metrics.update({f"val/mae_{name}": float(abs_sum[i] / steps) for i, name in enumerate(names)})
        return metrics

    # -------------------------------------------------------------------------------------- checkpoints
    def save_resume(self) -> None:
        """Every rank writes its RNG state, rank 0 the rest; committed atomically."""
        self.ckpt_root.mkdir(parents=True, exist_ok=True)
        staging = resume_state.staging_dir(self.ckpt_root, self.step)
        if self.info.is_main:
            if staging.exists():
                import shutil

                shutil.rmtree(staging)
            staging.mkdir(parents=True)
        barrier(self.info)
        resume_state.save_rank_rng(staging, self.info.rank)
        barrier(self.info)
        if self.info.is_main:
            state = {"world": self.info.world, "history": self.log.history, "config": self.cfg.to_dict()}
            resume_state.save_resume_checkpoint(
                self.ckpt_root,
                self.step,
                self.policy,
                self.optimizer,
                self.scheduler,
                state,
                self.cfg.keep_checkpoints,
            )
        barrier(self.info)

    def save_final(self) -> Path:
        """Rank 0: the checkpoint the nodes load (``models.checkpoint`` format)."""
        extra = {
            "training": {
                "stage": self.cfg.stage,
                "steps": self.step,
                "world_size": self.info.world,
                "global_batch": self.cfg.global_batch,
                "train_episodes": [ep.name for ep in self.train_episodes],
                "val_episodes": [ep.name for ep in self.val_episodes],
                "final_metrics": {k: v[-1][1] for k, v in self.log.history.items()},
            }
        }
        return save_checkpoint(self.policy, self.out / "final", extra=extra)

    # ----------------------------------------------------------------------------------------------- run
    def run(self) -> TrainResult:
        """Train until ``cfg.steps`` (or ``cfg.stop_after`` steps of this call); checkpoint and log."""
        cfg = self.cfg
        start_step = self.step
        stop = cfg.steps if cfg.stop_after is None else min(cfg.steps, start_step + cfg.stop_after)
        bar = tqdm(
            total=cfg.steps,
            initial=start_step,
            desc=f"stage {cfg.stage}",
            unit="step",
            disable=not (cfg.progress and self.info.is_main),
        )
        if start_step == 0 and self.info.is_main:
            self.log.add(0, self.validate())  # the baseline every later validation is compared with
        iterator = iter(self.loader())
        tick = time.perf_counter()
        while self.step < stop:
            loss = self.train_step([next(iterator) for _ in range(self.accum)])
            bar.update(1)
            if self.info.is_main and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                rate = cfg.global_batch * cfg.log_every / max(time.perf_counter() - tick, 1e-9)
                tick = time.perf_counter()
                scalars = {"train/loss": loss, "train/items_per_s": rate}
                scalars.update({f"lr/{g['name']}": g["lr"] for g in self.optimizer.param_groups})
                self.log.add(self.step, scalars)
                bar.set_postfix(loss=f"{loss:.4f}")
            if self.step % cfg.val_every == 0 or self.step == cfg.steps:
                if self.info.is_main:
                    self.log.add(self.step, self.validate())
                    self.log.save({"config": cfg.to_dict()})
                barrier(self.info)
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save_resume()
        bar.close()
        final = None
        finished = self.step >= cfg.steps
        if self.info.is_main:
            self.log.save({"config": cfg.to_dict()})
            if finished:
                final = self.save_final()
                (self.out / "final_metrics.json").write_text(
                    json.dumps({k: v[-1][1] for k, v in self.log.history.items()}, indent=1)
                )
        barrier(self.info)
        history = self.log.history if self.log else {}
        return TrainResult(self.step, finished, final, history)

    def close(self) -> None:
        """Release the log writer and the process group."""
        if self.log is not None:
            self.log.close()
        if self.features is not None and self.features.cache is not None:
            self.features.cache.flush()
        shutdown(self.info)


def train(cfg: TrainConfig) -> TrainResult:
    """Run one training job (Stage 1 or 2) to completion or ``stop_after``."""
    trainer = Trainer(cfg)
    try:
        return trainer.run()
    finally:
        trainer.close()
