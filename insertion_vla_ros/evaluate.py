"""``evaluate``: run the policy over a recorded bag deterministically and compare with what the robot did.

No DDS: the bag is read in time order; the VLM runs every ``--vlm-period`` on the newest camera set and its
features become usable ``--vlm-latency`` after the start (:class:`SimulatedVlm`, as the vlm_node
schedules it); the action expert ticks every 100 ms with a causal 65-sample window and the newest usable
features, through the node's hold policy. Each OK chunk is compared with the robot's recorded motion over
the same 8 x 100 ms (``models.pose_math.pose_delta`` between recorded poses). Writes ``metrics.json`` and
PNG plots (per-dimension predicted vs recorded, VL age over time, latency histogram) to ``--out``::

    evaluate BAG --checkpoint DIR --out DIR [--vlm-latency 0.3] [--vlm-period 1.7]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from insertion_vla_ros.force_guard import DEFAULT_FORCE_GUARD_N, force_problem

NS_PER_S = 1_000_000_000


@dataclass
class BagStreams:
    """Everything the policy needs from a bag, in memory and in stamp order."""

    camera_stamps: dict[str, np.ndarray]
    camera_frames: dict[str, list[np.ndarray]]
    sensor_stamps: np.ndarray
    sensor: np.ndarray
    pose_stamps: np.ndarray
    poses: np.ndarray
    instruction: str


def read_bag(path: Path, cameras: list[str]) -> BagStreams:
    """Load cameras (rgb8), sensor samples, poses (-> mm + rotation vector) and the instruction."""
    from rosbags.highlevel import AnyReader

    from insertion_vla_ros.msg_conversions import sample_stamps_ns
    from models.pose_math import quaternion_to_rotvec
    from sim import topics
    from sim.bag import build_typestore

    frames: dict[str, list[tuple[int, np.ndarray]]] = {name: [] for name in cameras}
    sensor_stamps, sensor, poses, instruction = [], [], [], ""
    by_topic = {topics.camera_topic(name): name for name in cameras}
    with AnyReader([Path(path)], default_typestore=build_typestore()) as reader:
        for connection, _, raw in reader.messages():
            topic = connection.topic
            if topic not in by_topic and topic not in (
                topics.SENSOR_TOPIC,
                topics.POSE_TOPIC,
                topics.INSTRUCTION_TOPIC,
            ):
                continue
            msg = reader.deserialize(raw, connection.msgtype)
            if topic in by_topic:
                stamp = msg.header.stamp.sec * NS_PER_S + msg.header.stamp.nanosec
                rgb = np.asarray(msg.data, np.uint8).reshape(msg.height, msg.width, -1)[:, :, :3]
                frames[by_topic[topic]].append((stamp, rgb if msg.encoding == "rgb8" else rgb[:, :, ::-1]))
            elif topic == topics.SENSOR_TOPIC:
                first = msg.header.stamp.sec * NS_PER_S + msg.header.stamp.nanosec
                sensor_stamps.append(sample_stamps_ns(first, int(msg.num_samples), msg.sample_rate_hz))
                sensor.append(np.asarray(msg.data, np.float32).reshape(msg.num_samples, msg.num_channels))
            elif topic == topics.POSE_TOPIC:
                stamp = msg.header.stamp.sec * NS_PER_S + msg.header.stamp.nanosec
                p, o = msg.pose.position, msg.pose.orientation
                rotvec = quaternion_to_rotvec(np.array([o.x, o.y, o.z, o.w]))
                poses.append((stamp, np.concatenate([[p.x * 1e3, p.y * 1e3, p.z * 1e3], rotvec, [1.0]])))
            else:
                instruction = msg.data
    for name, items in frames.items():
        if not items:
            raise ValueError(f"{path}: no frames on {topics.camera_topic(name)}")
        items.sort(key=lambda item: item[0])
    if not sensor or not poses:
        raise ValueError(f"{path}: needs {topics.SENSOR_TOPIC} and {topics.POSE_TOPIC}")
    poses.sort(key=lambda item: item[0])
    return BagStreams(
        {n: np.array([s for s, _ in f]) for n, f in frames.items()},
        {n: [x for _, x in f] for n, f in frames.items()},
        np.concatenate(sensor_stamps),
        np.concatenate(sensor),
        np.array([s for s, _ in poses]),
        np.stack([p for _, p in poses]),
        instruction,
    )


def pose_at(streams: BagStreams, t_ns: int) -> np.ndarray | None:
    """The newest recorded pose at or before ``t_ns`` (None before the first)."""
    i = int(np.searchsorted(streams.pose_stamps, t_ns, side="right")) - 1
    return None if i < 0 else streams.poses[i]


def evaluate_bag(
    bag: Path,
    policy: Any,
    vlm_latency_s: float,
    vlm_period_s: float,
    period_s: float = 0.1,
    instruction: str | None = None,
    force_guard_n: float = DEFAULT_FORCE_GUARD_N,
) -> dict[str, Any]:
    """Run the policy over ``bag``; return per-tick records and the metrics.

    Ticks are judged as the node judges them, force guard included (``force_guard_n``, 0 disables).
    """
    from insertion_vla_ros.closed_loop_sim import SimulatedVlm
    from insertion_vla_ros.hold_policy import FeatureInfo, check_inputs, check_output
    from insertion_vla_ros.sensor_buffer import SensorRingBuffer
    from models.pose_math import pose_delta
    from sim.topics import CAMERA_NAMES

    cfg = policy.config
    window, horizon = cfg.sensor.window, cfg.action_expert.horizon
    streams = read_bag(bag, list(CAMERA_NAMES)[: cfg.vlm.num_views])
    text = instruction or streams.instruction
    if not text:
        raise ValueError("the bag has no instruction; pass --instruction")
    dt = int(round(period_s * NS_PER_S))

    def extract(start_ns: int) -> tuple[int, Any] | None:
        images, stamps = [], []
        for name, stamp_list in streams.camera_stamps.items():
            i = int(np.searchsorted(stamp_list, start_ns, side="right")) - 1
            if i < 0:
                return None
            images.append(streams.camera_frames[name][i])
            stamps.append(int(stamp_list[i]))
        return max(stamps), policy.encode_vl_features(policy.extract_vl_features(images, text))

    vlm = SimulatedVlm(extract, int(round(vlm_period_s * NS_PER_S)), int(round(vlm_latency_s * NS_PER_S)))
    buffer = SensorRingBuffer(len(streams.sensor_stamps), streams.sensor.shape[1], cfg.sensor.sample_rate_hz)
    buffer.add(streams.sensor_stamps, streams.sensor)  # windows are causal by stamp: the future is never read
    max_age_ns = int(cfg.action_expert.max_age_s * NS_PER_S)
    first = int(streams.sensor_stamps[min(window, len(streams.sensor_stamps) - 1)])
    last = int(streams.pose_stamps[-1]) - horizon * dt
    ticks = []
    for t in range(first, last + 1, dt):
        vlm.advance(t)
        newest = vlm.newest()
        info = None if newest is None else FeatureInfo(newest.sequence, newest.capture_ns, policy.fingerprint)
        win = buffer.window(t, window, max_age_ns=NS_PER_S // 10)
        decision = check_inputs(
            t,
            info,
            expected_fingerprint=policy.fingerprint,
            max_age_ns=max_age_ns,
            window_problem=win.problem,
            force_problem=force_problem(win.samples, force_guard_n, cfg.sensor.force_channels),
        )
        record: dict[str, Any] = {
            "t_s": (t - first) / NS_PER_S,
            "status": int(decision.status),
            "reason": decision.reason,
            "vl_age_s": decision.vl_age_s,
        }
        recorded = [pose_at(streams, t + j * dt) for j in range(horizon + 1)]
        if decision.ok and all(p is not None for p in recorded):
            started = time.perf_counter()
            pred = (
                policy.predict_actions(
                    newest.features, win.samples, decision.vl_age_s, robot_state=recorded[0]
                )
                .cpu()
                .numpy()
            )
            record["latency_s"] = time.perf_counter() - started
            decision = check_output(pred, decision)
            record["status"] = int(decision.status)
            if decision.ok:
                record["predicted"] = pred
                record["recorded"] = np.stack(
                    [pose_delta(recorded[j], recorded[j + 1]) for j in range(horizon)]
                )
        ticks.append(record)
    return {
        "ticks": ticks,
        "vlm_wall_s": vlm.wall_s,
        "names": list(policy.action_names),
        "instruction": text,
        "duration_s": (last - first) / NS_PER_S,
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
        err = pred - rec
        for i, name in enumerate(names):
            out[f"mae_first_step_{name}"] = float(np.mean(np.abs(err[:, 0, i])))
            out[f"mae_chunk_{name}"] = float(np.mean(np.abs(err[:, :, i])))
            out[f"rmse_chunk_{name}"] = float(np.sqrt(np.mean(err[:, :, i] ** 2)))
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
    p.add_argument("bag", type=Path)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--vlm-latency", type=float, default=0.3, help="simulated VLM latency, s (default 0.3)")
    p.add_argument("--vlm-period", type=float, default=1.7, help="VLM period, s (default 1.7)")
    p.add_argument("--period", type=float, default=0.1, help="action expert tick period, s (default 0.1)")
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
    run = evaluate_bag(
        args.bag, policy, args.vlm_latency, args.vlm_period, args.period, args.instruction, args.force_guard
    )
    metrics = metrics_of(run)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "bag": str(args.bag),
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
