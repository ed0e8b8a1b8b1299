"""Closed-loop success against VLM latency, one curve per staleness recipe, end to end (no oracle).

For each VLM latency (default 0, 0.3, 0.9, 1.5, 3.0 s; the VLM period follows ``profile_vlm``'s rule for
it) and each recipe, the demo's Stage 1 policy on the embedded default VLM drives seeded sim episodes in
the in-process loop (``insertion_vla_ros.tools.sim_loop``: the node's controller, VLM latency modelled):

* ``sync``: VLM then action, no reuse: the robot waits for each feature, the policy is ``fresh``'s;
* ``fresh``: asynchronous, trained on fresh features only (age of the newest frame);
* ``reuse``: asynchronous, ages k in [0, R) from fresh (one period of reuse);
* ``matched``: asynchronous, the deployed ages, latency + U[0, period);
* ``matched_motion``: ``matched`` plus the motion since capture input (the embedded default's config).

Every asynchronous recipe gets the same feature-age limit (the oldest age the latency and period produce,
plus slack), so the curves compare policies, not gates. Keys: ``success_<recipe>_lat_<x>`` (x = ``0``,
``0p3``, ``0p9``, ``1p5``, ``3p0``), ``lateral_error_mm_...`` (mean) and ``max_force_n_...`` per cell;
``--drift-mm A`` repeats every cell with the phantom swaying by up to 2A mm at 0.2 Hz
(``drift_success_...``), where stale features cannot be corrected by the robot's own motion. A PNG shows
success against latency (``staleness_success.png``). ``--quick``: latencies 0 and 1.5, recipes ``sync``
and ``matched_motion``, 4 episodes, no drift. Policies are cached under ``--work`` (shared with the demo).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import base_parser, emit  # noqa: E402

RECIPES = ("sync", "fresh", "reuse", "matched", "matched_motion")
LATENCIES_S = (0.0, 0.3, 0.9, 1.5, 3.0)


def latency_key(latency_s: float) -> str:
    """``0``, ``0p3``, ``1p5``, ``3p0`` ...: the latency as it appears in the JSON keys."""
    if latency_s == 0:
        return "0"
    text = f"{latency_s:.2f}".rstrip("0")
    return (text + "0" if text.endswith(".") else text).replace(".", "p")


def main() -> None:
    """Train (or reuse) every recipe's policies, run every cell, emit the JSON and the PNG."""
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("demo_output"))
    parser.add_argument("--episodes", type=int, default=None, help="episodes per cell (default 20)")
    parser.add_argument("--latencies", type=float, nargs="+", default=None, help="VLM latencies, s")
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=None)
    parser.add_argument("--drift-mm", type=float, default=None, help="tissue sway amplitude (0: none)")
    parser.add_argument("--seed", type=int, default=1000, help="evaluation seed (never a training seed)")
    args = parser.parse_args()
    episodes = args.episodes or (4 if args.quick else 20)
    latencies = tuple(args.latencies or ((0.0, 1.5) if args.quick else LATENCIES_S))
    recipes = tuple(args.recipes or (("sync", "matched_motion") if args.quick else RECIPES))
    drift_mm = args.drift_mm if args.drift_mm is not None else (0.0 if args.quick else 2.0)

    from insertion_vla_ros.tools.demo_pipeline import DataSettings, ensure_demonstrations
    from models.checkpoint import load_checkpoint
    from models.profile_vlm import recommend
    from sim.config import RigConfig

    data = DataSettings()
    data_dir, _ = ensure_demonstrations(args.work, data, progress=False)
    periods = {latency: recommend(latency * 1e3).vlm_period_s for latency in latencies}
    checkpoints = {
        (recipe, latency): _policy(args.work, data_dir, data, recipe, latency, periods[latency])
        for recipe in recipes
        for latency in latencies
    }
    loaded: dict[Path, Any] = {}
    rigs = {"": RigConfig().with_image_size(*data.image_size)}
    if drift_mm > 0:
        drifting = RigConfig().with_image_size(*data.image_size)
        drifting.scene.drift_amplitude_mm = drift_mm
        rigs["drift_"] = drifting
    metrics: dict[str, Any] = {}
    started = time.perf_counter()
    for prefix, rig_config in rigs.items():
        for recipe in recipes:
            for latency in latencies:
                path = checkpoints[recipe, latency]
                if path not in loaded:
                    loaded[path] = load_checkpoint(path, load_vlm=True).eval()
                runs = _run_cell(
                    loaded[path], rig_config, recipe, latency, periods[latency], episodes, args.seed
                )
                cell = f"{recipe}_lat_{latency_key(latency)}"
                metrics[f"{prefix}success_{cell}"] = float(np.mean([r["success"] for r in runs]))
                metrics[f"{prefix}lateral_error_mm_{cell}"] = float(
                    np.mean([r["lateral_error_mm"] for r in runs])
                )
                metrics[f"{prefix}max_force_n_{cell}"] = float(max(r["max_force_n"] for r in runs))
                print(
                    f"{prefix}{cell}: success {metrics[f'{prefix}success_{cell}']:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
    metrics["wall_s"] = time.perf_counter() - started
    metrics |= _summary(metrics, recipes, latencies)
    config = {
        "episodes": episodes,
        "seed": args.seed,
        "latencies_s": list(latencies),
        "periods_s": {latency_key(k): v for k, v in periods.items()},
        "recipes": list(recipes),
        "drift_amplitude_mm": drift_mm,
        "demos": data.episodes,
        "checkpoints": {f"{r}_lat_{latency_key(lat)}": str(p) for (r, lat), p in checkpoints.items()},
    }
    if args.out is not None:
        _plot(metrics, recipes, latencies, list(rigs), args.out)
    emit("staleness", config, metrics, args.out)


def _policy(work: Path, data_dir: Path, data: Any, recipe: str, latency_s: float, period_s: float) -> Path:
    """The cached Stage 1 checkpoint of ``recipe`` at this latency (sync shares fresh's policy)."""
    from insertion_vla_ros.tools.demo_pipeline import TrainSettings, ensure_policy

    settings = TrainSettings()
    age_recipe = {"sync": "fresh", "matched_motion": "matched"}.get(recipe, recipe)
    model = settings.model if recipe == "matched_motion" else _without_motion(work, settings.model)
    if age_recipe == "fresh":  # one fresh policy serves every latency
        latency_s, period_s = 0.0, settings.vlm_period_s
    train = dataclasses.replace(
        settings, recipe=age_recipe, vlm_latency_s=latency_s, vlm_period_s=period_s, model=model
    )
    return ensure_policy(work, data_dir, data, train, progress=False)


def _without_motion(work: Path, model: str) -> str:
    """A YAML beside the cache: ``model`` with the motion-since-capture input switched off."""
    import yaml

    from models.config import load_model_config

    config = load_model_config(model)
    config.action_expert = dataclasses.replace(config.action_expert, motion_input=False)
    path = Path(work) / "models" / f"{config.name}_no_motion.yaml"
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(path)


def _run_cell(
    policy: Any, rig_config: Any, recipe: str, latency_s: float, period_s: float, episodes: int, seed: int
) -> list[dict[str, Any]]:
    from insertion_vla_ros.tools.sim_loop import ClosedLoopRunner, LoopConfig
    from sim.config import TARGET_COLOURS
    from sim.demos import episode_seed
    from sim.rig import InsertionRig

    if recipe == "sync":
        loop = LoopConfig(mode="sync", vlm_latency_s=latency_s, vlm_period_s=max(latency_s, 0.1))
    else:
        oldest = latency_s + period_s
        loop = LoopConfig(
            vlm_latency_s=latency_s, vlm_period_s=period_s, max_age_s=oldest + 0.25 * period_s + 0.1
        )
    runner = ClosedLoopRunner(InsertionRig(rig_config, seed=seed), policy, loop)
    return [runner.run(TARGET_COLOURS[i % 5], episode_seed(seed, i)) for i in range(episodes)]


def _summary(
    metrics: dict[str, Any], recipes: tuple[str, ...], latencies: tuple[float, ...]
) -> dict[str, Any]:
    """The best recipe (highest mean success up to 1.5 s) and how far its curve drops from zero latency."""
    upto = [lat for lat in latencies if lat <= 1.5]
    mean = {
        r: float(np.mean([metrics[f"success_{r}_lat_{latency_key(lat)}"] for lat in upto])) for r in recipes
    }
    best = max(recipes, key=lambda r: mean[r])
    zero = metrics.get(f"success_{best}_lat_0")
    drop = (
        None
        if zero is None
        else max(zero - metrics[f"success_{best}_lat_{latency_key(lat)}"] for lat in upto)
    )
    return {"best_recipe": best, "best_recipe_max_drop_to_1p5": drop}


def _plot(
    metrics: dict[str, Any],
    recipes: tuple[str, ...],
    latencies: tuple[float, ...],
    prefixes: list[str],
    out: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(7.5, 4.5))
    for index, recipe in enumerate(recipes):
        colour = f"C{index}"
        for prefix in prefixes:
            values = [metrics[f"{prefix}success_{recipe}_lat_{latency_key(lat)}"] for lat in latencies]
            style = "--" if prefix else "-"
            label = recipe + (" (tissue motion)" if prefix else "")
            axis.plot(latencies, values, style, marker="o", color=colour, label=label)
    axis.set_xlabel("VLM latency (s); period from profile_vlm's rule")
    axis.set_ylabel("closed-loop success")
    axis.set_ylim(-0.02, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "staleness_success.png", dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    main()
