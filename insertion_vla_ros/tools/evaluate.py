"""``evaluate``: run the policy over a recording deterministically and compare with what the robot did.

A recording is an episode folder (the training format) or a rosbag2 bag (sqlite3 or MCAP, raw or
compressed images in any supported encoding), which is first converted exactly as ``convert-bag`` converts
it (:mod:`training.convert_bag`, one bag reading path). No DDS: the streams are replayed in time order
into the node's :class:`~insertion_vla_ros.runtime.controller.TickController` (so ticks are judged as on
the robot: holds, force guard, safety layer); the VLM runs on the vlm_node's schedule
(:class:`~insertion_vla_ros.runtime.vlm_schedule.SimulatedVlm`, a modelled ``--vlm-latency``) on the
newest frames. Each OK chunk is compared with the robot's recorded motion over the same 8 x 100 ms, the
target training uses (:func:`training.alignment.target_chunk`, interpolated poses). Writes
``metrics.json`` and PNG plots (per-dimension predicted vs recorded, VL age over time, latency histogram)
to ``--out``::

    evaluate RECORDING --checkpoint DIR --out DIR [--vlm-latency 0.3] [--vlm-period 1.7]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from contracts.constants import ACTION_PERIOD_S, NS_PER_S
from insertion_vla_ros.runtime.force_guard import DEFAULT_FORCE_GUARD_N


def recorded_episodes(path: Path, work: Path) -> list[Path]:
    """Episode folders of ``path``: itself, the episodes under it, or its bags converted into ``work``."""
    from contracts.episode import list_episodes
    from training.convert_bag import convert_bags, find_bags

    path = Path(path)
    if (path / "meta.json").is_file():
        return [path]
    if not find_bags(path):
        episodes = list_episodes(path) if path.is_dir() else []
        if episodes:
            return episodes
        raise ValueError(f"{path}: neither an episode folder, a folder of episodes nor a rosbag2 bag")
    report = convert_bags(path, work, progress=False)
    if not report.converted:
        raise ValueError(f"{path}: no bag could be converted:\n{report.summary()}")
    return [Path(work) / entry.name for entry in report.converted]


def evaluate_episode(
    episode_dir: Path,
    policy: Any,
    vlm_latency_s: float,
    vlm_period_s: float,
    period_s: float = ACTION_PERIOD_S,
    instruction: str | None = None,
    force_guard_n: float = DEFAULT_FORCE_GUARD_N,
    *,
    max_age_s: float = 0.0,
    first_tick_ns: int | None = None,
    features_at: Callable[[int], tuple[int, Any] | None] | None = None,
) -> dict[str, Any]:
    """Replay one episode into the controller; return per-tick records and what the metrics need.

    Ticks start at ``first_tick_ns`` (default: the first time every stream has data). ``features_at``
    replaces running the VLM on the recorded frames: for an inference started at ``start_ns`` it returns
    ``(capture_ns, features)`` (e.g. the features a live run used), or ``None``. ``max_age_s`` 0 keeps the
    checkpoint's maximum feature age.
    """
    from insertion_vla_ros.runtime.controller import ControllerSettings, TickController
    from insertion_vla_ros.runtime.hold_policy import FeatureInfo
    from insertion_vla_ros.runtime.vlm_schedule import SimulatedVlm
    from training.alignment import target_chunk
    from training.dataset import AlignmentConfig, EpisodeData

    cfg = policy.config
    horizon, dt_ns = cfg.action_expert.horizon, int(round(period_s * NS_PER_S))
    episode = EpisodeData(
        episode_dir, AlignmentConfig(window=cfg.sensor.window, horizon=horizon, dt_s=period_s)
    )
    if len(episode.cameras) != cfg.vlm.num_views:
        raise ValueError(
            f"{episode.name}: {len(episode.cameras)} cameras, the policy takes {cfg.vlm.num_views}"
        )
    text = instruction or episode.instruction
    if not text:
        raise ValueError(f"{episode.name} has no instruction; pass --instruction")
    controller = TickController(
        policy,
        ControllerSettings.from_policy(
            policy, force_guard_n=force_guard_n, period_s=period_s, vl_max_age_s=max_age_s
        ),
    )

    def extract(start_ns: int) -> tuple[int, Any] | None:
        try:
            ref = episode.feature_ref(start_ns)
        except ValueError:  # a camera has no frame yet
            return None
        return ref.newest_stamp_ns, policy.extract_vl_features(episode.load_images(ref), text)

    vlm = SimulatedVlm(
        features_at or extract, int(round(vlm_period_s * NS_PER_S)), int(round(vlm_latency_s * NS_PER_S))
    )
    sensor_stamps, pose_stamps = episode.sensor_stamps_ns, episode.pose_stamps_ns
    rate = float(episode.episode.meta.get("sensor_rate_hz", cfg.sensor.sample_rate_hz))
    fed_sensor = fed_pose = 0
    first = episode.timeline.first_tick_ns if first_tick_ns is None else int(first_tick_ns)
    last = int(pose_stamps[-1]) - horizon * dt_ns
    ticks = []
    for t in range(first, last + 1, dt_ns):
        end = int(np.searchsorted(sensor_stamps, t, side="right"))  # what had arrived by the tick
        if end > fed_sensor:
            controller.add_sensor(sensor_stamps[fed_sensor:end], episode.sensor[fed_sensor:end], rate)
            fed_sensor = end
        end = int(np.searchsorted(pose_stamps, t, side="right"))
        for i in range(fed_pose, end):
            controller.add_pose(int(pose_stamps[i]), episode.pose[i])
        fed_pose = max(fed_pose, end)
        for result in vlm.advance(t):
            controller.add_features(
                FeatureInfo(result.sequence, result.capture_ns, policy.fingerprint), result.features
            )
        tick = controller.step(t)
        record: dict[str, Any] = {
            "tick_ns": t,
            "actions": tick.actions,
            "t_s": (t - first) / NS_PER_S,
            "status": int(tick.decision.status),
            "reason": tick.decision.reason,
            "vl_age_s": tick.decision.vl_age_s,
        }
        if tick.ok:
            target, mask = target_chunk(pose_stamps, episode.pose, t, horizon, dt_ns)
            record.update(latency_s=tick.latency_s, predicted=tick.actions, recorded=target, mask=mask)
        ticks.append(record)
    return {
        "ticks": ticks,
        "vlm_wall_s": vlm.wall_s,
        "names": list(policy.action_names),
        "instruction": text,
        "duration_s": (last - first) / NS_PER_S,
        "episode": episode.name,
    }


def metrics_of(run: dict[str, Any]) -> dict[str, Any]:
    """Per-dimension errors (first step and whole chunk), VL age, latency and hold statistics."""
    names, ticks = run["names"], run["ticks"]
    ok = [t for t in ticks if "predicted" in t]
    out: dict[str, Any] = {
        "ticks": len(ticks),
        "ok_ticks": len(ok),
        "hold_or_waiting_ticks": len(ticks) - len(ok),
    }
    if ok:
        pred = np.stack([t["predicted"] for t in ok])
        rec = np.stack([t["recorded"] for t in ok])
        mask = np.stack([t["mask"] for t in ok])  # steps past the end of the recording do not count
        err = pred - rec
        chunk = err[mask]
        for i, name in enumerate(names):
            out[f"mae_first_step_{name}"] = float(np.mean(np.abs(err[:, 0, i])))
            out[f"mae_chunk_{name}"] = float(np.mean(np.abs(chunk[:, i])))
            out[f"rmse_chunk_{name}"] = float(np.sqrt(np.mean(chunk[:, i] ** 2)))
        out["translation_error_first_step_mm_mean"] = float(np.mean(np.linalg.norm(err[:, 0, :3], axis=1)))
        ages = np.array([t["vl_age_s"] for t in ok])
        out.update(
            vl_age_mean_s=float(ages.mean()), vl_age_min_s=float(ages.min()), vl_age_max_s=float(ages.max())
        )
        lat = np.array([t["latency_s"] for t in ok]) * 1e3
        out.update(
            action_latency_p50_ms=float(np.percentile(lat, 50)),
            action_latency_p95_ms=float(np.percentile(lat, 95)),
        )
    if run["vlm_wall_s"]:
        out["vlm_wall_p50_ms"] = float(np.median(run["vlm_wall_s"]) * 1e3)
    reasons: dict[str, int] = {}
    for t in ticks:
        if t["reason"]:
            code = t["reason"].split(":", 1)[0]
            reasons[code] = reasons.get(code, 0) + 1
    out["hold_reasons"] = reasons
    return out


def write_plots(run: dict[str, Any], out: Path) -> list[Path]:
    """predicted_vs_recorded.png, vl_age.png, latency_hist.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, ticks = run["names"], run["ticks"]
    ok = [t for t in ticks if "predicted" in t]
    paths = []
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 1.6 * len(names)), sharex=True)
    times = [t["t_s"] for t in ok]
    for i, (ax, name) in enumerate(zip(np.atleast_1d(axes), names)):
        ax.plot(times, [t["recorded"][0, i] for t in ok], label="recorded", lw=1.5)
        ax.plot(times, [t["predicted"][0, i] for t in ok], label="predicted (step 1)", lw=1.0)
        ax.set_ylabel(name)
    np.atleast_1d(axes)[0].legend(loc="upper right", fontsize=8)
    np.atleast_1d(axes)[-1].set_xlabel("time (s)")
    fig.suptitle("first step of each chunk: predicted vs recorded robot motion")
    fig.tight_layout()
    paths.append(out / "predicted_vs_recorded.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.plot([t["t_s"] for t in ticks], [t["vl_age_s"] for t in ticks], ".", ms=3)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("VL feature age (s)")
    fig.tight_layout()
    paths.append(out / "vl_age.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist([t["latency_s"] * 1e3 for t in ok], bins=30)
    ax.set_xlabel("action expert latency (ms)")
    ax.set_ylabel("ticks")
    fig.tight_layout()
    paths.append(out / "latency_hist.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> int:
    """Console script ``evaluate``."""
    p = argparse.ArgumentParser(prog="evaluate", description=__doc__.splitlines()[0])
    p.add_argument("recording", type=Path, help="rosbag2 bag, episode folder, or a folder of either")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--vlm-latency", type=float, default=0.3, help="simulated VLM latency, s (default 0.3)")
    p.add_argument("--vlm-period", type=float, default=1.7, help="VLM period, s (default 1.7)")
    p.add_argument(
        "--period",
        type=float,
        default=ACTION_PERIOD_S,
        help=f"action expert tick period, s (default {ACTION_PERIOD_S})",
    )
    p.add_argument("--instruction", default=None, help="instead of the bag's instruction topic")
    p.add_argument(
        "--force-guard",
        type=float,
        default=DEFAULT_FORCE_GUARD_N,
        help=f"HOLD at or above this needle force, N, as the node (default {DEFAULT_FORCE_GUARD_N}, 0: off)",
    )
    args = p.parse_args(argv)
    import torch

    from models.checkpoint import load_checkpoint

    torch.manual_seed(0)
    policy = load_checkpoint(args.checkpoint, load_vlm=True).eval()
    with tempfile.TemporaryDirectory(prefix="evaluate-") as work:
        episodes = recorded_episodes(args.recording, Path(work))
        runs = [
            evaluate_episode(
                path,
                policy,
                args.vlm_latency,
                args.vlm_period,
                args.period,
                args.instruction,
                args.force_guard,
            )
            for path in episodes
        ]
    run = {
        "ticks": [tick for r in runs for tick in r["ticks"]],
        "vlm_wall_s": [s for r in runs for s in r["vlm_wall_s"]],
        "names": runs[0]["names"],
        "instruction": runs[0]["instruction"],
    }
    metrics = metrics_of(run)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "recording": str(args.recording),
        "episodes": [r["episode"] for r in runs],
        "checkpoint": str(args.checkpoint),
        "instruction": run["instruction"],
        "vlm_latency_s": args.vlm_latency,
        "vlm_period_s": args.vlm_period,
        "metrics": metrics,
    }
    (args.out / "metrics.json").write_text(json.dumps(report, indent=1))
    plots = write_plots(run, args.out)
    print(json.dumps(report["metrics"], indent=1))
    print(f"evaluate: wrote {args.out / 'metrics.json'} and {', '.join(p.name for p in plots)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
