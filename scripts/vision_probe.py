"""Can a policy find the target from these VL features? The grounding head on frozen features of new scenes.

For N seeded sim episodes (seeds never used by Stage 0 or the demonstrations) it takes the first frame and
frames along the scripted approach, pairs each with every colour's instruction, extracts the VL features
of a model config (the tokens vlm_node publishes) and reads the instructed target's lateral offset
(target - tip, mm) with the grounding head saved beside the VLM's weights (Stage 0). It prints one JSON
object: ``vl_probe_median_mm``, ``vl_probe_p90_mm``, per colour and per frame kind, beside the error of
always guessing the mean offset of the same samples.

``--baselines`` adds the older probes: a ridge regression from the flattened features, the pixel
centroids of the instructed colour in every view, and a cubic in the tool view's centroid and the tip
height (a bound on what the images allow at this resolution); ``--finetune-steps N`` also fine-tunes the
VLM with a position-aware head and trains a tool-view CNN under the same budget (slow).

    scripts/in-env python scripts/vision_probe.py [--config tiny_sim] [--episodes 200] [--seed 4242]
                                                  [--approach-frames 3] [--baselines] [--out probe.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from models.config import load_model_config
from models.fast_path import load_extractor
from sim.config import TARGET_COLOURS, RigConfig, instruction_for
from sim.demos import episode_seed
from sim.render import NEEDLE_RGB
from sim.rig import InsertionRig
from sim.scene import TARGET_RGB


def colour_centroids(
    views: list[np.ndarray],
    rgb: tuple[int, int, int],
    radius: float = 70.0,
    exclude_rgb: np.ndarray | None = None,
) -> np.ndarray:
    """Per view: (u, v, visible) of the pixels within ``radius`` of ``rgb``; (0, 0, 0) when none.

    With ``exclude_rgb``, pixels closer to that colour than to ``rgb`` are left out.
    """
    out = []
    for image in views:
        pixels = image.astype(np.float32)
        distance = np.linalg.norm(pixels - np.asarray(rgb, np.float32), axis=-1)
        mask = distance < radius
        if exclude_rgb is not None:
            mask &= distance < np.linalg.norm(pixels - np.asarray(exclude_rgb, np.float32), axis=-1)
        v, u = np.nonzero(mask)
        out.extend([u.mean(), v.mean(), 1.0] if u.size else [0.0, 0.0, 0.0])
    return np.asarray(out)


def cubic_terms(centroid: np.ndarray, height_mm: float) -> np.ndarray:
    """Monomials up to degree 3 of (u, v, tip height), times the visibility flag, plus the flag."""
    u, v, visible = centroid
    base = (u, v, height_mm)
    terms = [visible]
    for degree in (1, 2, 3):
        for combo in itertools.combinations_with_replacement(range(3), degree):
            terms.append(visible * float(np.prod([base[i] for i in combo])))
    return np.asarray(terms)


def ridge_error(x: np.ndarray, y: np.ndarray, train: int, lam: float) -> float:
    """Median held-out Euclidean error of a ridge fit on the first ``train`` rows (standardised inputs)."""
    x = (x - x[:train].mean(0)) / (x[:train].std(0) + 1e-6)
    x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    a = x[:train]
    # Dual form: cheaper when features outnumber episodes.
    w = a.T @ np.linalg.solve(a @ a.T + lam * np.eye(train), y[:train])
    return float(np.median(np.linalg.norm(x[train:] @ w - y[train:], axis=1)))


class TokenPoolHead(nn.Module):
    """Attention pooling of ``[B, T, H]`` tokens, with learned per-position embeddings, -> ``[B, 2]``."""

    def __init__(self, tokens: int, hidden: int, queries: int = 4) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.positions = nn.Parameter(torch.randn(tokens, hidden) * 0.02)
        self.queries = nn.Parameter(torch.randn(queries, hidden) * 0.1)
        self.attention = nn.MultiheadAttention(hidden, 4, batch_first=True)
        self.out = nn.Sequential(nn.Linear(queries * hidden, 128), nn.GELU(), nn.Linear(128, 2))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Offset prediction (standardised units)."""
        keys = self.norm(tokens) + self.positions
        pooled, _ = self.attention(self.queries.expand(len(tokens), -1, -1), keys, keys)
        return self.out(pooled.flatten(1))


def tool_view_cnn(image_size: int, in_channels: int) -> nn.Module:
    """Three stride-2 convolutions and an MLP: the small-CNN yardstick for the fine-tuned VLM."""
    side = -(-image_size // 8)
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 5, 2, 2),
        nn.GELU(),
        nn.Conv2d(16, 32, 3, 2, 1),
        nn.GELU(),
        nn.Conv2d(32, 32, 3, 2, 1),
        nn.GELU(),
        nn.Flatten(),
        nn.Linear(32 * side * side, 128),
        nn.GELU(),
        nn.Linear(128, 2),
    )


def trained_probe_error(
    predict, parameters: list[nn.Parameter], y: np.ndarray, train: int, steps: int, desc: str
) -> float:
    """Train ``predict(indices) -> [B, 2]`` on the first ``train`` rows; median held-out error in mm.

    ``predict`` maps row indices to standardised offset predictions; ``parameters`` are what it trains.
    """
    target = torch.as_tensor(y, dtype=torch.float32)
    mean, std = target[:train].mean(0), target[:train].std(0)
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    for _ in tqdm(range(steps), desc=desc, mininterval=5):
        rows = torch.randint(0, train, (16,), generator=generator)
        loss = F.smooth_l1_loss(predict(rows), (target[rows] - mean) / std)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    errors = []
    with torch.no_grad():
        for start in range(train, len(target), 32):
            rows = torch.arange(start, min(len(target), start + 32))
            errors.append((predict(rows) * std + mean - target[rows]).norm(dim=1))
    return float(torch.cat(errors).median())


def finetuned_errors(
    extractor,
    views: list[list[np.ndarray]],
    instructions: list[str],
    y: np.ndarray,
    train: int,
    steps: int,
    tool_view: int,
) -> dict[str, float]:
    """Errors of the fine-tuned VLM + token-pool head and of the tool-view CNN after ``steps`` steps.

    ``tool_view`` is the index of the tool camera within each sample's views.
    """
    torch.manual_seed(0)
    model = extractor.hf_model
    model.train()
    with torch.no_grad():
        first = extractor.forward_features(extractor.prepare_inputs(views[:1], instructions[:1]))[0]
    head = TokenPoolHead(first.shape[0], first.shape[1])

    def vlm_predict(rows: torch.Tensor) -> torch.Tensor:
        inputs = extractor.prepare_inputs([views[i] for i in rows], [instructions[i] for i in rows])
        return head(torch.stack(extractor.forward_features(inputs)).float())

    vlm_error = trained_probe_error(
        vlm_predict, [*model.parameters(), *head.parameters()], y, train, steps, "fine-tune VLM"
    )
    model.eval()
    tool = (
        torch.as_tensor(np.stack([group[tool_view] for group in views])).permute(0, 3, 1, 2).float() / 255.0
    )
    colour = torch.tensor([[c in text for c in TARGET_COLOURS] for text in instructions], dtype=torch.float32)
    tool = torch.cat([tool, colour[:, :, None, None].expand(-1, -1, *tool.shape[-2:])], dim=1)
    cnn = tool_view_cnn(tool.shape[-1], tool.shape[1])
    cnn_error = trained_probe_error(
        lambda rows: cnn(tool[rows]), list(cnn.parameters()), y, train, steps, "tool-view CNN"
    )
    return {"finetuned_vlm_token_pool_error_mm": vlm_error, "tool_view_cnn_error_mm": cnn_error}


def probe_samples(rig: InsertionRig, episodes: int, seed: int, approach_frames: int):
    """Per episode: the first frame and ``approach_frames`` frames along the scripted approach.

    Yields ``(views, tip_pose, scene, kind)``; the approach frames are taken while the expert moves the tip
    towards its target (every 3 steps), before it reaches the alignment tolerance.
    """
    from sim.expert import ScriptedExpert

    for index in range(episodes):
        target = TARGET_COLOURS[index % len(TARGET_COLOURS)]
        obs = rig.reset(target, seed=episode_seed(seed, index))
        yield [obs.images[name] for name in rig.camera_names], obs.pose, rig.scene, "first"
        expert = ScriptedExpert(rig.scene, seed=index)
        taken = 0
        for step in range(60):
            rig.apply_action(expert.act(rig.pose()))
            if taken < approach_frames and step % 3 == 2:
                frames = rig.render_cameras()
                yield [frames[name] for name in rig.camera_names], rig.pose(), rig.scene, "approach"
                taken += 1
            if taken >= approach_frames:
                break


def head_probe(args: argparse.Namespace) -> dict:
    """The shipped grounding head on frozen features of the probe's samples; errors in mm."""
    from models.grounding import load_grounding_head
    from models.vlm import resolve_model_path

    vlm_cfg = load_model_config(args.config).vlm
    extractor = load_extractor(vlm_cfg)
    head = load_grounding_head(resolve_model_path(vlm_cfg.model_name_or_path))
    rig = InsertionRig(RigConfig().with_image_size(vlm_cfg.image_width, vlm_cfg.image_height), seed=args.seed)
    instructions = [instruction_for(colour) for colour in TARGET_COLOURS]
    errors, offsets, kinds = [], [], []
    samples = probe_samples(rig, args.episodes, args.seed, args.approach_frames)
    for views, pose, scene, kind in tqdm(samples, desc="probe frames", mininterval=5):
        with torch.no_grad():
            features = torch.stack(extractor.forward_features_shared([views], [instructions]))
            predicted = head(features).offset_mm.numpy()
        truth = np.stack([scene.targets_xy_mm[colour] - pose[0:2] for colour in TARGET_COLOURS])
        errors.append(np.linalg.norm(predicted - truth, axis=1))
        offsets.append(truth)
        kinds.append(kind)
    errors, offsets, kinds = np.stack(errors), np.stack(offsets), np.array(kinds)
    guess = np.linalg.norm(offsets - offsets.reshape(-1, 2).mean(0), axis=-1)
    report = {
        "config": args.config,
        "model": vlm_cfg.model_name_or_path,
        "episodes": args.episodes,
        "seed": args.seed,
        "frames": int(len(errors)),
        "pairs": int(errors.size),
        "vl_probe_median_mm": float(np.median(errors)),
        "vl_probe_p90_mm": float(np.percentile(errors, 90)),
        "vl_probe_mean_mm": float(np.mean(errors)),
        "mean_guess_median_mm": float(np.median(guess)),
        "mean_guess_p90_mm": float(np.percentile(guess, 90)),
    }
    for k, colour in enumerate(TARGET_COLOURS):
        report[f"vl_probe_median_mm_{colour.lower()}"] = float(np.median(errors[:, k]))
        report[f"vl_probe_p90_mm_{colour.lower()}"] = float(np.percentile(errors[:, k], 90))
    for kind in ("first", "approach"):
        if (kinds == kind).any():
            report[f"vl_probe_median_mm_{kind}"] = float(np.median(errors[kinds == kind]))
            report[f"vl_probe_p90_mm_{kind}"] = float(np.percentile(errors[kinds == kind], 90))
    return report


def baseline_probes(args: argparse.Namespace) -> dict:
    """The older probes on first frames: ridge on flattened features, colour centroids, tool-view cubic."""
    size = args.image_size
    vlm_cfg = load_model_config(args.config).vlm
    vlm_cfg = dataclasses.replace(vlm_cfg, image_width=size, image_height=size, max_pixels=size * size)
    extractor = load_extractor(vlm_cfg)
    rig = InsertionRig(RigConfig().with_image_size(size, size), seed=args.seed)
    features, centroids, tool_terms, offsets = [], [], [], []
    kept_views, instructions = [], []
    tool_view = rig.camera_names.index("view5")
    for index in tqdm(range(args.episodes), desc="first frames", mininterval=5):
        target = TARGET_COLOURS[index % len(TARGET_COLOURS)]
        obs = rig.reset(target, seed=episode_seed(args.seed, index))
        views = [obs.images[name] for name in rig.camera_names]
        with torch.no_grad():
            vl, _ = extractor.extract(views, obs.instruction)
        features.append(vl.float().numpy().reshape(-1))
        centroids.append(colour_centroids(views, TARGET_RGB[target]))
        tool = colour_centroids([views[tool_view]], TARGET_RGB[target], exclude_rgb=NEEDLE_RGB)
        tool_terms.append(cubic_terms(tool, float(obs.pose[2])))
        offsets.append(rig.scene.target_xy_mm - obs.pose[0:2])
        if args.finetune_steps > 0:
            kept_views.append(views)
            instructions.append(obs.instruction)
    y = np.asarray(offsets)
    train = int(0.8 * len(y))
    report = {
        "baseline_image_size": size,
        "baseline_mean_offset_error_mm": float(
            np.median(np.linalg.norm(y[train:] - y[:train].mean(0), axis=1))
        ),
        "vl_features_ridge_error_mm": min(
            ridge_error(np.asarray(features), y, train, lam) for lam in (1.0, 10.0, 100.0, 1000.0)
        ),
        "colour_centroid_ridge_error_mm": min(
            ridge_error(np.asarray(centroids), y, train, lam) for lam in (1e-3, 1e-1, 1.0)
        ),
        "tool_view_centroid_cubic_error_mm": min(
            ridge_error(np.asarray(tool_terms), y, train, lam) for lam in (1e-4, 1e-3, 1e-2, 1e-1)
        ),
    }
    if args.finetune_steps > 0:
        report["finetune_steps"] = args.finetune_steps
        report.update(
            finetuned_errors(extractor, kept_views, instructions, y, train, args.finetune_steps, tool_view)
        )
    return report


def main() -> int:
    """Run the probe (and the baselines when asked), print (and optionally write) the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny_sim")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument(
        "--approach-frames", type=int, default=3, help="frames along the approach per episode"
    )
    parser.add_argument("--baselines", action="store_true", help="also the ridge/centroid/cubic probes")
    parser.add_argument("--image-size", type=int, default=112, help="image size of the baseline probes")
    parser.add_argument("--finetune-steps", type=int, default=0, help="baselines: 0 skips the trained probes")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    report = head_probe(args)
    if args.baselines or args.finetune_steps > 0:
        report.update(baseline_probes(args))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
