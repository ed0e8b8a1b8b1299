"""Stage 0: pretrain the embedded Qwen2.5-VL on labelled sim renders so its features locate the target.

Every weight of the VLM trains, through the project's own feature extractor (the very tokens vlm_node
publishes, :meth:`models.vlm.VLFeatureExtractor.forward_features_shared`), with the position-aware
:class:`models.grounding.GroundingHead` on those features. Each frame is paired with every colour's
instruction: the same images with five different answers are what make the text condition the features.
Data streams from :mod:`sim.grounding` (rendering costs a fraction of a step); step ``s`` always sees the
same frames, so resuming is exact. Same machinery as Stage 1/2: tqdm, exact resume, tensorboard,
``history.json`` + ``curves.png``, torchrun DDP (each rank takes its share of the step's frames).

Output ``<out>/model/``: a Qwen2.5-VL directory that loads through ``from_pretrained`` like a downloaded
one (config, safetensors, tokenizer, processor), plus ``grounding_head.*`` and ``MODEL_CARD.md`` /
``model_card.json`` (command, seeds, steps, wall time, held-out errors, sha256 of the weights).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from contracts.episode import JPEG_QUALITY
from models.config import VLMConfig, load_model_config
from models.grounding import (
    HEAD_WEIGHTS,
    GroundingHead,
    GroundingHeadConfig,
    GroundingTargets,
    cell_targets,
    grounding_loss,
    save_grounding_head,
)
from models.tiny_qwen import ARCHITECTURES, build_tiny_qwen2_5_vl
from models.vlm import VLFeatureExtractor
from sim.config import TARGET_COLOURS, RigConfig, instruction_for
from sim.grounding import GroundingSample, GroundingStream
from training import resume_state
from training.distributed import DistInfo, all_reduce_sum, barrier, init_distributed, shutdown
from training.run_log import RunLog
from training.trainer import lr_lambda

MODEL_DIR = "model"
CARD_JSON = "model_card.json"
CARD_MD = "MODEL_CARD.md"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class Stage0Config:
    """Settings of a Stage 0 run (saved in the model card and beside every resume checkpoint)."""

    out: str = "runs/stage0"
    architecture: str = "tiny-sim"
    """Key of ``models.tiny_qwen.ARCHITECTURES``: the Qwen2.5-VL built with random weights to start from."""
    model: str = "tiny_sim"
    """Model config whose ``vlm`` section is the feature layout trained (and later served): image size,
    pixel bounds, token selection, dtypes, prompt. Its ``model_name_or_path`` is replaced by the model
    being trained."""
    seed: int = 0
    """Seed of the training scenes (``sim.grounding.scene_seed``)."""
    eval_seed: int = 1
    """Seed of the held-out scenes the run reports on (never a training seed)."""
    eval_scenes: int = 48
    eval_frames_per_scene: int = 4
    steps: int = 20000
    frames_per_step: int = 4
    """Frames per optimizer step over all ranks; each is paired with all five instructions."""
    frames_per_scene: int = 8
    scenes_per_block: int = 16
    """Frames of this many scenes are shuffled together, so a step mixes scenes."""
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 300
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    offset_weight: float = 1.0
    jpeg_fraction: float = 0.5
    """Share of frames JPEG-compressed as the episode format stores them (features must not care)."""
    tilt_fraction: float = 0.3
    eval_every: int = 500
    log_every: int = 20
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    resume: bool = True
    stop_after: int | None = None
    """Stop (as if interrupted) after this many steps of this call."""
    device: str = "auto"
    progress: bool = True

    def validate(self) -> Stage0Config:
        """Raise ``ValueError`` for inconsistent settings; return ``self``."""
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; known: {sorted(ARCHITECTURES)}")
        for name in ("steps", "frames_per_step", "frames_per_scene", "scenes_per_block", "eval_scenes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.seed == self.eval_seed:
            raise ValueError("eval_seed must differ from seed: held-out scenes are never training scenes")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stage0Config:
        """Build from a dict, rejecting unknown keys."""
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown Stage 0 config keys {unknown}")
        return cls(**data)


def vlm_config(model: str, model_path: str) -> VLMConfig:
    """The ``vlm`` section of model config ``model`` (the one home of the layout), loading ``model_path``."""
    return dataclasses.replace(load_model_config(model).vlm, model_name_or_path=model_path)


class Stage0Model(nn.Module):
    """The VLM (through its feature extractor) + the grounding head; ``forward`` returns the loss."""

    def __init__(self, extractor: VLFeatureExtractor, head: GroundingHead, offset_weight: float) -> None:
        super().__init__()
        self.extractor = extractor
        self.vlm = extractor.hf_model
        self.head = head
        self.offset_weight = offset_weight

    def features(self, samples: list[GroundingSample]) -> torch.Tensor:
        """``[len(samples) * colours, T, H]`` features, every frame paired with every instruction."""
        groups = [list(sample.images) for sample in samples]
        instructions = [[instruction_for(c) for c in TARGET_COLOURS] for _ in samples]
        return torch.stack(self.extractor.forward_features_shared(groups, instructions))

    def forward(self, samples: list[GroundingSample], targets: GroundingTargets):
        """Loss and metrics of a batch of frames (x every colour)."""
        output = self.head(self.features(samples))
        return grounding_loss(output, targets, self.offset_weight)


def batch_targets(samples: list[GroundingSample], image_hw: tuple[int, int], grid_hw: tuple[int, int]):
    """Ground truth for ``samples`` x every colour, in the order :meth:`Stage0Model.features` uses."""
    pixels = torch.as_tensor(np.stack([s.pixels for s in samples])).flatten(0, 1)  # [N*C, V, 2]
    visible = torch.as_tensor(np.stack([s.visible for s in samples])).flatten(0, 1)
    offsets = torch.as_tensor(np.stack([s.offsets_mm for s in samples]), dtype=torch.float32).flatten(0, 1)
    cell, within, visible = cell_targets(pixels, visible, image_hw, grid_hw)
    colour = torch.arange(len(TARGET_COLOURS)).repeat(len(samples))
    return GroundingTargets(cell, within, visible, offsets, colour)


class FrameSchedule:
    """Which frames step ``s`` trains on: a pure function of (seed, s), so resume is exact.

    Frames come in blocks of ``scenes_per_block`` consecutive scenes x ``frames_per_scene``, shuffled
    within the block under a seed of its own; the global frame stream is cut into steps of
    ``frames_per_step``, and rank ``r`` of ``world`` takes its contiguous share of each step.
    """

    def __init__(self, cfg: Stage0Config, rig: RigConfig, rank: int = 0, world: int = 1) -> None:
        if cfg.frames_per_step % world:
            raise ValueError(f"frames_per_step {cfg.frames_per_step} does not split into {world} ranks")
        self.cfg, self.rank, self.world = cfg, rank, world
        self.stream = GroundingStream(rig, cfg.seed, cfg.frames_per_scene, cfg.tilt_fraction)
        self.block_size = cfg.scenes_per_block * cfg.frames_per_scene
        self._block: tuple[int, list[GroundingSample]] | None = None

    def _frames(self, block: int) -> list[GroundingSample]:
        if self._block is None or self._block[0] != block:
            first = block * self.cfg.scenes_per_block
            frames = [
                f for i in range(first, first + self.cfg.scenes_per_block) for f in self.stream.scene(i)
            ]
            order = np.random.default_rng([self.cfg.seed, 7, block]).permutation(len(frames))
            self._block = (block, [frames[i] for i in order])
        return self._block[1]

    def step(self, step: int) -> list[GroundingSample]:
        """This rank's frames of optimizer step ``step`` (0-based), JPEG-augmented as configured."""
        per_rank = self.cfg.frames_per_step // self.world
        first = step * self.cfg.frames_per_step + self.rank * per_rank
        out = []
        for index in range(first, first + per_rank):
            block, position = divmod(index, self.block_size)
            sample = self._frames(block)[position]
            # decided per frame, not per rank: any split of a step over ranks sees the same images
            if np.random.default_rng([self.cfg.seed, 11, index]).random() < self.cfg.jpeg_fraction:
                sample = dataclasses.replace(sample, images=tuple(jpeg_roundtrip(i) for i in sample.images))
            out.append(sample)
        return out


def jpeg_roundtrip(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """The image as the episode format stores it (JPEG at the episode writer's quality)."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def held_out_samples(cfg: Stage0Config, rig: RigConfig) -> list[GroundingSample]:
    """The run's held-out frames: ``eval_scenes`` scenes of ``eval_seed``."""
    stream = GroundingStream(rig, cfg.eval_seed, cfg.eval_frames_per_scene, cfg.tilt_fraction)
    return [f for i in range(cfg.eval_scenes) for f in stream.scene(i)]


@torch.no_grad()
def offset_errors(model: Stage0Model, samples: list[GroundingSample], batch: int = 4) -> np.ndarray:
    """Offset error (mm) of every (frame, colour) pair, ``[len(samples), colours]``."""
    was_training = model.training
    model.eval()
    errors = []
    for start in range(0, len(samples), batch):
        chunk = samples[start : start + batch]
        predicted = model.head(model.features(chunk)).offset_mm
        truth = torch.as_tensor(np.stack([s.offsets_mm for s in chunk]), dtype=torch.float32).flatten(0, 1)
        errors.append((predicted - truth).norm(dim=-1).reshape(len(chunk), -1).numpy())
    model.train(was_training)
    return np.concatenate(errors)


def error_summary(errors: np.ndarray, samples: list[GroundingSample]) -> dict[str, float]:
    """Median / p90 overall, per phase and per colour (mm)."""
    out = {"median_mm": float(np.median(errors)), "p90_mm": float(np.percentile(errors, 90))}
    phases = np.array([s.phase for s in samples])
    for phase in sorted(set(phases)):
        out[f"median_mm_{phase}"] = float(np.median(errors[phases == phase]))
    for k, colour in enumerate(TARGET_COLOURS):
        out[f"median_mm_{colour.lower()}"] = float(np.median(errors[:, k]))
    return out


class Stage0Trainer:
    """Set up once (model, head, data, optimizer, resume), then :meth:`run`."""

    def __init__(self, cfg: Stage0Config, info: DistInfo | None = None, command: str | None = None) -> None:
        self.cfg = cfg.validate()
        self.info = info or init_distributed(cfg.device)
        self.command = command or " ".join(sys.argv)
        self.out = Path(cfg.out)
        self.ckpt_root = self.out / "checkpoints"
        self.vlm = vlm_config(cfg.model, "")
        self.image_hw = (self.vlm.image_height, self.vlm.image_width)
        self.rig = RigConfig().with_image_size(self.vlm.image_width, self.vlm.image_height)
        torch.manual_seed(cfg.seed)  # identical initial head on every rank
        init_dir = self._initial_model()
        extractor = VLFeatureExtractor.from_pretrained(
            dataclasses.replace(self.vlm, model_name_or_path=str(init_dir)), device=self.info.device
        )
        extractor.hf_model.requires_grad_(True)
        probe = extractor.prepare_inputs(
            [[np.zeros((*self.image_hw, 3), np.uint8)] * self.vlm.num_views], ["x"]
        )
        _, patches_h, patches_w = probe["image_grid_thw"][0].tolist()
        self.grid_hw = (patches_h // extractor.merge_size, patches_w // extractor.merge_size)
        head_cfg = GroundingHeadConfig(
            extractor.config.hidden_size, extractor.config.num_views, *self.grid_hw
        )
        self.model = Stage0Model(extractor, GroundingHead(head_cfg).to(self.info.device), cfg.offset_weight)
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.step = 0
        history: dict[str, list[list[float]]] = {}
        self.wall_s = 0.0
        latest = resume_state.latest_checkpoint(self.ckpt_root) if cfg.resume else None
        if latest is not None:
            state = resume_state.load_resume_checkpoint(
                latest, self.model, self.optimizer, self.scheduler, self.info.rank, self.info.world
            )
            self.step, history = int(state["step"]), state.get("history", {})
            self.wall_s = float(state.get("wall_s", 0.0))
        else:
            torch.manual_seed(cfg.seed + 1000 + self.info.rank)
        self.resumed_from = latest
        self.schedule = FrameSchedule(cfg, self.rig, self.info.rank, self.info.world)
        self.held_out = held_out_samples(cfg, self.rig) if self.info.is_main else []
        self.ddp = self.model
        if self.info.distributed:
            device_ids = [self.info.local_rank] if self.info.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=device_ids)
        self.log = RunLog(self.out, history) if self.info.is_main else None

    def _initial_model(self) -> Path:
        """The random-weight starting model (same on every rank: built from the config seed)."""
        init_dir = self.out / "init_model"
        if self.info.is_main and not (init_dir / "config.json").is_file():
            staging = self.out / ".init_model.partial"
            shutil.rmtree(staging, ignore_errors=True)
            build_tiny_qwen2_5_vl(
                staging,
                seed=self.cfg.seed,
                architecture=ARCHITECTURES[self.cfg.architecture],
                min_pixels=self.vlm.min_pixels,
                max_pixels=self.vlm.max_pixels,
            )
            shutil.rmtree(init_dir, ignore_errors=True)
            staging.rename(init_dir)
        barrier(self.info)
        return init_dir

    # ------------------------------------------------------------------------------------------- steps
    def train_step(self) -> dict[str, float]:
        """One optimizer step on this step's frames; returns the global-batch metrics."""
        samples = self.schedule.step(self.step)
        targets = batch_targets(samples, self.image_hw, self.grid_hw)
        loss, metrics = self.ddp(samples, targets)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        values = torch.tensor([float(loss.detach())] + list(metrics.values()), dtype=torch.float64)
        values = all_reduce_sum(values, self.info) / self.info.world
        return dict(zip(["loss", *metrics], values.tolist()))

    def evaluate(self) -> dict[str, float]:
        """Held-out offset errors (rank 0)."""
        errors = offset_errors(self.model, self.held_out)
        return {f"val/{k}": v for k, v in error_summary(errors, self.held_out).items()}

    def save_resume(self) -> None:
        """Exact-resume checkpoint (weights, optimizer, scheduler, RNG, history, wall time)."""
        self.ckpt_root.mkdir(parents=True, exist_ok=True)
        staging = resume_state.staging_dir(self.ckpt_root, self.step)
        if self.info.is_main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        barrier(self.info)
        resume_state.save_rank_rng(staging, self.info.rank)
        barrier(self.info)
        if self.info.is_main:
            state = {
                "world": self.info.world,
                "history": self.log.history,
                "config": self.cfg.to_dict(),
                "wall_s": self.wall_s,
            }
            resume_state.save_resume_checkpoint(
                self.ckpt_root,
                self.step,
                self.model,
                self.optimizer,
                self.scheduler,
                state,
                self.cfg.keep_checkpoints,
            )
        barrier(self.info)

    def save_model(self) -> Path:
        """Rank 0: the model directory (loads with ``from_pretrained``) + head + model card."""
        target = self.out / MODEL_DIR
        staging = self.out / f".{MODEL_DIR}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        extractor = self.model.extractor
        extractor.hf_model.save_pretrained(staging)
        if extractor.processor is not None:
            extractor.processor.save_pretrained(staging)
        else:
            extractor.tokenizer.save_pretrained(staging)
            extractor.image_processor.save_pretrained(staging)
        save_grounding_head(self.model.head, staging)
        final = self.evaluate()
        card = {
            "name": f"{self.cfg.architecture} (Stage 0, sim grounding)",
            "command": self.command,
            "config": self.cfg.to_dict(),
            "steps": self.step,
            "frames_seen": self.step * self.cfg.frames_per_step,
            "pairs_seen": self.step * self.cfg.frames_per_step * len(TARGET_COLOURS),
            "world_size": self.info.world,
            "device": str(self.info.device),
            "wall_s": round(self.wall_s, 1),
            "held_out": {k.removeprefix("val/"): round(v, 4) for k, v in final.items()},
            "held_out_pairs": len(self.held_out) * len(TARGET_COLOURS),
            "parameters": sum(p.numel() for p in extractor.hf_model.parameters()),
            "sha256": {name: file_sha256(staging / name) for name in (WEIGHTS_NAME, HEAD_WEIGHTS)},
            "versions": {"torch": torch.__version__, "transformers": _version("transformers")},
        }
        (staging / CARD_JSON).write_text(json.dumps(card, indent=1) + "\n")
        (staging / CARD_MD).write_text(model_card_markdown(card))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        return target

    def run(self) -> Path | None:
        """Train to ``steps`` (or ``stop_after``); returns the model directory when finished."""
        cfg = self.cfg
        stop = cfg.steps if cfg.stop_after is None else min(cfg.steps, self.step + cfg.stop_after)
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc="stage 0",
            unit="step",
            disable=not (cfg.progress and self.info.is_main),
        )
        if self.step == 0 and self.info.is_main:
            self.log.add(0, self.evaluate())
        started = time.perf_counter()
        base_wall = self.wall_s
        tick = time.perf_counter()
        while self.step < stop:
            metrics = self.train_step()
            self.wall_s = base_wall + time.perf_counter() - started
            bar.update(1)
            if self.info.is_main and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                rate = cfg.frames_per_step * cfg.log_every / max(time.perf_counter() - tick, 1e-9)
                tick = time.perf_counter()
                scalars = {f"train/{k}": v for k, v in metrics.items()}
                scalars["train/frames_per_s"] = rate
                scalars["lr"] = self.optimizer.param_groups[0]["lr"]
                self.log.add(self.step, scalars)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", err=f"{metrics['offset_error_mm']:.2f}mm")
            if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                if self.info.is_main:
                    self.log.add(self.step, self.evaluate())
                    self.log.save({"config": cfg.to_dict()})
                barrier(self.info)
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save_resume()
        bar.close()
        model_dir = None
        if self.info.is_main:
            self.log.save({"config": cfg.to_dict()})
            if self.step >= cfg.steps:
                model_dir = self.save_model()
        barrier(self.info)
        return model_dir

    def close(self) -> None:
        """Release the log writer and the process group."""
        if self.log is not None:
            self.log.close()
        shutdown(self.info)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version(name: str) -> str | None:
    try:
        return __import__(name).__version__
    except ImportError:
        return None


def model_card_markdown(card: dict[str, Any]) -> str:
    """The human-readable model card."""
    held = card["held_out"]
    lines = [
        f"# {card['name']}",
        "",
        "A small Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`) trained from random weights on labelled",
        "renders of the simulated insertion rig (Stage 0), so that its features locate the instructed",
        "target.",
        "It is the embedded default for the demo and the CPU benchmarks; real deployments start from a",
        "pretrained Qwen2.5-VL instead.",
        "",
        f"- command: `{card['command']}`",
        f"- training scenes: seed {card['config']['seed']}, held-out scenes: seed "
        f"{card['config']['eval_seed']} (`sim.grounding.scene_seed`)",
        f"- steps: {card['steps']} ({card['frames_seen']} frames, "
        f"{card['pairs_seen']} frame-instruction pairs)",
        f"- wall time: {card['wall_s'] / 60:.1f} min on {card['device']} x {card['world_size']}",
        f"- parameters: {card['parameters']:,}",
        f"- held-out offset error (target - tip, {card['held_out_pairs']} pairs): median "
        f"{held['median_mm']:.2f} mm, p90 {held['p90_mm']:.2f} mm",
        *(f"- sha256 of {name}: `{digest}`" for name, digest in card["sha256"].items()),
        "",
        "Per phase / colour (median, mm): "
        + ", ".join(f"{k.removeprefix('median_mm_')} {v:.2f}" for k, v in held.items() if k.count("_") == 2),
        "",
    ]
    return "\n".join(lines)


def train_stage0(cfg: Stage0Config, command: str | None = None) -> Path | None:
    """Run Stage 0 to completion (or ``stop_after``); returns the model directory when finished."""
    trainer = Stage0Trainer(cfg, command=command)
    try:
        return trainer.run()
    finally:
        trainer.close()
