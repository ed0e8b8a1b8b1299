"""Can a policy find the target from these VL features? Probes on the first frame of seeded sim episodes.

For N seeded episodes it renders the five views at the start pose, extracts the VL features of a model
config and fits, on 80 % of the episodes, (a) a ridge regression from the flattened features to the
lateral offset target - tip, and (b) the same from hand-made features: the pixel centroid of the
instructed colour in every view, and (c) a cubic in the tool view's centroid (pixels nearer the needle's
colour than the target's dropped, so the needle does not pass for the White target) and the tip height,
a bound on what the images allow at this resolution. It prints one JSON object with the median held-out
errors (mm) beside the error of always predicting the mean offset.

    scripts/in-env python scripts/vision_probe.py [--config tiny] [--episodes 600] [--image-size 112]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json

import numpy as np
import torch
from tqdm import tqdm

from models.config import load_model_config
from models.fast_path import load_extractor
from sim.config import TARGET_COLOURS, RigConfig
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


def main() -> int:
    """Collect first frames, fit both probes, print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    size = args.image_size
    vlm_cfg = load_model_config(args.config).vlm
    vlm_cfg = dataclasses.replace(vlm_cfg, image_width=size, image_height=size, max_pixels=size * size)
    extractor = load_extractor(vlm_cfg)
    rig = InsertionRig(RigConfig().with_image_size(size, size), seed=args.seed)
    features, centroids, tool_terms, offsets = [], [], [], []
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
    y = np.asarray(offsets)
    train = int(0.8 * len(y))
    baseline = float(np.median(np.linalg.norm(y[train:] - y[:train].mean(0), axis=1)))
    lams = (1.0, 10.0, 100.0, 1000.0)
    report = {
        "config": args.config,
        "episodes": args.episodes,
        "image_size": size,
        "tokens": int(len(features[0]) // vlm_cfg.hidden_size),
        "mean_offset_error_mm": baseline,
        "vl_features_ridge_error_mm": min(ridge_error(np.asarray(features), y, train, lam) for lam in lams),
        "colour_centroid_ridge_error_mm": min(
            ridge_error(np.asarray(centroids), y, train, lam) for lam in (1e-3, 1e-1, 1.0)
        ),
        "tool_view_centroid_cubic_error_mm": min(
            ridge_error(np.asarray(tool_terms), y, train, lam) for lam in (1e-4, 1e-3, 1e-2, 1e-1)
        ),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
