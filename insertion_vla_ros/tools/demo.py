"""``make demo``: sim demonstrations -> Stage 1 policy on the embedded VLM -> closed loop through real nodes.

The embedded default is ``builtin:tiny-sim``: a small Qwen2.5-VL pretrained on labelled sim renders
(Stage 0, shipped in ``models/builtin/tiny-sim``), whose features locate the instructed target. The demo
runs it as the users' system runs theirs: the VLM takes ``--vlm-latency`` (1.5 s, the users' 1484 ms for
five views) and starts every ``--vlm-period`` (1.7 s), so the action expert acts on features 1.5-3.2 s
old, trained on exactly those ages with the robot's motion since the images (``matched`` recipe).

Every step before the closed loop is cached under ``--work`` (default ``demo_output/``) and reused by later
runs with the same settings. The closed loop runs sim_node, vlm_node and action_expert_node as separate
processes on sim time (``/clock`` from the sim node), prints live status, and ends with a results table and
a picture of the episodes (``closed_loop_episodes.png``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from insertion_vla_ros.runtime.chunk_executor import DEFAULT_MAX_EPISODE_S
from insertion_vla_ros.tools.demo_pipeline import DataSettings, Stage2Settings, TrainSettings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (all with defaults sized for a 2-core CPU machine)."""
    p = argparse.ArgumentParser(prog="demo", description=__doc__.splitlines()[0])
    p.add_argument(
        "--work", type=Path, default=Path("demo_output"), help="cache/work folder (default demo_output)"
    )
    p.add_argument("--episodes", type=int, default=3, help="closed-loop episodes (default 3)")
    p.add_argument(
        "--demos", type=int, default=DataSettings.episodes, help="expert demonstrations to train on"
    )
    p.add_argument("--steps", type=int, default=TrainSettings.steps, help="Stage 1 training steps")
    p.add_argument("--batch", type=int, default=TrainSettings.global_batch, help="Stage 1 global batch")
    p.add_argument("--recipe", default=TrainSettings.recipe, choices=["fresh", "reuse", "matched"])
    p.add_argument("--seed", type=int, default=0, help="demonstration/training seed (default 0)")
    p.add_argument(
        "--eval-seed", type=int, default=1000, help="seed of the closed-loop episodes (default 1000)"
    )
    p.add_argument("--rate", type=float, default=1.0, help="sim time per wall time (default 1.0)")
    p.add_argument(
        "--lockstep-timeout",
        type=float,
        default=2.0,
        help="sim waits up to this long (wall s) for each due chunk; 0 = free-running (default 2.0)",
    )
    p.add_argument("--vlm-period", type=float, default=TrainSettings.vlm_period_s, help="vlm_node period, s")
    p.add_argument(
        "--vlm-latency",
        type=float,
        default=TrainSettings.vlm_latency_s,
        help="VLM latency to reproduce, s (the tiny VLM's own ~30 ms plus injected time; default 1.5)",
    )
    p.add_argument(
        "--stage2-steps", type=int, default=0, help="also fine-tune LoRA on the VLM (Stage 2) for N steps"
    )
    p.add_argument(
        "--max-episode-s",
        type=float,
        default=DEFAULT_MAX_EPISODE_S,
        help=f"episode time limit, sim s (default {DEFAULT_MAX_EPISODE_S:g})",
    )
    p.add_argument(
        "--timeout", type=float, default=900.0, help="closed-loop wall time limit, s (default 900)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the whole demo; exit 0 when the closed loop completed every episode."""
    args = parse_args(argv)
    from insertion_vla_ros.runtime.force_guard import DEFAULT_FORCE_GUARD_N
    from insertion_vla_ros.tools.demo_closed_loop import LoopSettings, results_table, run_closed_loop
    from insertion_vla_ros.tools.demo_pipeline import (
        DEMO_MODEL,
        ensure_demonstrations,
        ensure_policy,
        ensure_stage2_policy,
    )
    from insertion_vla_ros.tools.episode_plots import plot_episodes
    from models.config import load_model_config
    from models.vlm import resolve_model_path
    from sim.config import TaskConfig

    progress = not args.no_progress
    work = args.work.resolve()
    timings: dict[str, float] = {}
    print(f"insertion_vla_ros demo (work folder {work})", flush=True)

    started = time.perf_counter()
    data = DataSettings(episodes=args.demos, seed=args.seed)
    print(f"[1/4] {args.demos} expert demonstrations in the simulated rig ...", flush=True)
    data_dir, summaries = ensure_demonstrations(work, data, progress=progress)
    ok = sum(bool(s["success"]) for s in summaries)
    print(f"      {data_dir} ({ok}/{len(summaries)} expert successes)", flush=True)
    timings["demonstrations_s"] = time.perf_counter() - started

    vlm_dir = Path(resolve_model_path(load_model_config(DEMO_MODEL).vlm.model_name_or_path))
    card = json.loads((vlm_dir / "model_card.json").read_text())
    held = card["held_out"]
    print(
        f"[2/4] embedded VLM {vlm_dir.name}: Stage 0 on sim renders, held-out target offset error median "
        f"{held['median_mm']:.2f} mm, p90 {held['p90_mm']:.2f} mm ({vlm_dir / 'MODEL_CARD.md'})",
        flush=True,
    )

    started = time.perf_counter()
    train = TrainSettings(
        steps=args.steps,
        global_batch=args.batch,
        recipe=args.recipe,
        vlm_latency_s=args.vlm_latency,
        vlm_period_s=args.vlm_period,
        seed=args.seed,
    )
    print(
        f"[3/4] Stage 1 training, {args.steps} steps, {args.recipe} feature ages "
        f"(VLM latency {args.vlm_latency:g} s, period {args.vlm_period:g} s; VL feature cache on) ...",
        flush=True,
    )
    checkpoint = ensure_policy(work, data_dir, data, train, progress=progress)
    _print_metrics(checkpoint)
    if args.stage2_steps > 0:
        print(
            f"      Stage 2: LoRA on the VLM, {args.stage2_steps} steps, one VLM forward per group",
            flush=True,
        )
        stage2 = Stage2Settings(steps=args.stage2_steps, seed=args.seed)
        checkpoint = ensure_stage2_policy(work, data_dir, checkpoint, train, stage2, progress=progress)
        _print_metrics(checkpoint)
    timings["training_s"] = time.perf_counter() - started

    started = time.perf_counter()
    print(
        f"[4/4] closed loop: sim_node + vlm_node + action_expert_node "
        f"({args.episodes} episodes, seed {args.eval_seed}, sim time x{args.rate})",
        flush=True,
    )
    settings = LoopSettings(
        checkpoint=checkpoint,
        episodes=args.episodes,
        seed=args.eval_seed,
        rate=args.rate,
        lockstep_timeout_s=args.lockstep_timeout,
        vlm_period_s=args.vlm_period,
        vlm_latency_s=args.vlm_latency,
        max_episode_s=args.max_episode_s,
        timeout_s=args.timeout,
        results_file=work / "closed_loop_results.json",
        log_dir=work / "logs",
    )
    results = run_closed_loop(settings)
    timings["closed_loop_s"] = time.perf_counter() - started

    print()
    print(results_table(results))
    picture = plot_episodes(
        results, work / "closed_loop_episodes.png", TaskConfig().force_limit_n, DEFAULT_FORCE_GUARD_N
    )
    print("timings: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    print(f"results: {settings.results_file}; episodes: {picture}; node logs: {settings.log_dir}")
    return 0 if len(results) == args.episodes else 1


def _print_metrics(checkpoint: Path) -> None:
    metrics = checkpoint.parent / "final_metrics.json"
    if metrics.is_file():
        values = json.loads(metrics.read_text())
        keys = ("train/loss", "val/loss", "val/mae_dx", "val/mae_dz")
        shown = {k: round(v, 4) for k, v in values.items() if k in keys}
        print(f"      {checkpoint} {shown}", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
