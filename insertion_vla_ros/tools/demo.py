"""``make demo``: sim demonstrations -> tiny Qwen2.5-VL -> Stage 1 policy -> closed loop through real nodes.

Every step before the closed loop is cached under ``--work`` (default ``demo_output/``) and reused by later
runs with the same settings. The closed loop runs sim_node, vlm_node and action_expert_node as separate
processes on sim time (``/clock`` from the sim node), prints live status, and ends with a results table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from insertion_vla_ros.tools.demo_pipeline import DataSettings, TrainSettings

MODEL_NOTE = (
    "note: the demo's tiny Qwen2.5-VL has random weights (nothing is downloaded), so its features cannot\n"
    "locate the instructed target and the lateral error stays near the start offset, while depth is\n"
    "controlled from the 650 Hz force/OCT window. The scripted expert solves the task (its\n"
    "demonstrations in step 1); the README's closed-loop and vision-probe rows measure the split.\n"
    "Train on your robot's data with a pretrained VLM (config/models/qwen2_5_vl_3b.yaml) for the\n"
    "learned target finding."
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (all with defaults sized for a 2-core CPU machine)."""
    p = argparse.ArgumentParser(prog="demo", description=__doc__.splitlines()[0])
    p.add_argument(
        "--work", type=Path, default=Path("demo_output"), help="cache/work folder (default demo_output)"
    )
    p.add_argument("--episodes", type=int, default=3, help="closed-loop episodes (default 3)")
    p.add_argument("--demos", type=int, default=12, help="expert demonstrations to train on (default 12)")
    p.add_argument("--steps", type=int, default=250, help="Stage 1 training steps (default 250)")
    p.add_argument("--batch", type=int, default=32, help="Stage 1 global batch (default 32)")
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
    p.add_argument("--vlm-period", type=float, default=1.7, help="vlm_node period, s (default 1.7)")
    p.add_argument("--max-episode-s", type=float, default=15.0, help="episode time limit, sim s (default 15)")
    p.add_argument(
        "--timeout", type=float, default=900.0, help="closed-loop wall time limit, s (default 900)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the whole demo; exit 0 when the closed loop completed every episode."""
    args = parse_args(argv)
    from insertion_vla_ros.tools.demo_closed_loop import LoopSettings, results_table, run_closed_loop
    from insertion_vla_ros.tools.demo_pipeline import ensure_demonstrations, ensure_policy, ensure_tiny_vlm

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

    started = time.perf_counter()
    print("[2/4] tiny Qwen2.5-VL (built once, cached) ...", flush=True)
    print(f"      {ensure_tiny_vlm()}", flush=True)
    timings["tiny_vlm_s"] = time.perf_counter() - started

    started = time.perf_counter()
    train = TrainSettings(steps=args.steps, global_batch=args.batch, seed=args.seed)
    print(
        f"[3/4] Stage 1 training, {args.steps} steps (VL feature cache on; reused when cached) ...",
        flush=True,
    )
    checkpoint = ensure_policy(work, data_dir, data, train, progress=progress)
    metrics = checkpoint.parent / "final_metrics.json"
    if metrics.is_file():
        values = json.loads(metrics.read_text())
        shown = {
            k: round(v, 4)
            for k, v in values.items()
            if k in ("train/loss", "val/loss", "val/mae_dz", "val/mae_dx")
        }
        print(f"      {checkpoint} {shown}", flush=True)
    timings["training_s"] = time.perf_counter() - started

    started = time.perf_counter()
    print(
        f"[4/4] closed loop: sim_node + vlm_node + action_expert_node "
        f"({args.episodes} episodes, sim time x{args.rate})",
        flush=True,
    )
    settings = LoopSettings(
        checkpoint=checkpoint,
        episodes=args.episodes,
        seed=args.eval_seed,
        rate=args.rate,
        lockstep_timeout_s=args.lockstep_timeout,
        vlm_period_s=args.vlm_period,
        max_episode_s=args.max_episode_s,
        timeout_s=args.timeout,
        results_file=work / "closed_loop_results.json",
        log_dir=work / "logs",
    )
    results = run_closed_loop(settings)
    timings["closed_loop_s"] = time.perf_counter() - started

    print()
    print(results_table(results))
    print(MODEL_NOTE)
    print("timings: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    print(f"results: {settings.results_file}; node logs: {settings.log_dir}")
    return 0 if len(results) == args.episodes else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
