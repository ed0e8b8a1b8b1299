"""Control-loop timing with both nodes as separate processes, the tiny model, and a busy VLM.

Starts ``synthetic_inputs`` (5 cameras at 10 Hz, a 650 Hz sensor in 13-sample messages), ``vlm_node``
(period shorter than an inference, so the VLM computes back to back) and ``action_expert_node``, each in
its own process on an isolated DDS domain, waits for the first OK chunk, then observes for ``--duration``:

- tick period / jitter: arrival times of ActionChunks at this observer (end to end: tick + DDS delivery),
  jitter = |interval - action period|;
- missed ticks: skipped 100 ms slots in the chunk stamps (ticks are stamped on their slot);
- sensor samples lost: growth of the action expert's dropped-sample counter (gaps + out of order);
- VL age: ``vl_age_s`` of the OK chunks.

``python bench/control_loop.py [--quick] [--checkpoint DIR]`` prints one JSON object (bench/_common).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import base_parser, emit, percentiles_ms, save_histogram  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config" / "insertion_vla.yaml"
NS = 1_000_000_000


def start(module: str, ros_args: list[str], log: Path) -> subprocess.Popen:
    out = open(log, "w")  # noqa: SIM115 - the process owns it until the end of the bench
    return subprocess.Popen(
        [sys.executable, "-m", module, "--ros-args", *ros_args], stdout=out, stderr=subprocess.STDOUT
    )


def stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=None, help="observed seconds (default 60, quick 8)")
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="policy checkpoint (default: tiny, built)"
    )
    parser.add_argument(
        "--vlm-period", type=float, default=0.2, help="VLM period, s (short = VLM always busy)"
    )
    parser.add_argument("--executor-threads", type=int, default=1, help="action expert executor threads")
    parser.add_argument("--vlm-threads", type=int, default=1, help="torch threads of the VLM (0: all cores)")
    parser.add_argument(
        "--inject-latency", type=float, default=0.0, help="extra VLM latency per inference, s"
    )
    args = parser.parse_args()
    duration = args.duration or (8.0 if args.quick else 60.0)

    os.environ["ROS_DOMAIN_ID"] = str(120 + os.getpid() % 100)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    work = Path(tempfile.mkdtemp(prefix="control_loop_"))
    checkpoint = args.checkpoint
    if checkpoint is None:
        from insertion_vla_ros.testing.tiny_checkpoint import build_tiny_checkpoint

        checkpoint = build_tiny_checkpoint(work / "policy")
    common = ["--params-file", str(CONFIG)]
    processes = {
        "rig": start(
            "insertion_vla_ros.testing.synthetic_inputs", ["-p", "camera_rate_hz:=10.0"], work / "rig.log"
        ),
        "vlm_node": start(
            "insertion_vla_ros.nodes.vlm_node",
            [
                *common,
                *[
                    "-p",
                    f"vlm_node:checkpoint:={checkpoint}",
                    "-p",
                    "vlm_node:autostart:=true",
                    "-p",
                    f"vlm_node:vlm_period_s:={args.vlm_period}",
                    "-p",
                    f"vlm_node:inject_latency_s:={args.inject_latency}",
                    "-p",
                    f"vlm_node:torch_threads:={args.vlm_threads}",
                ],
            ],
            work / "vlm_node.log",
        ),
        "action_expert_node": start(
            "insertion_vla_ros.nodes.action_expert_node",
            [
                *common,
                *[
                    "-p",
                    f"action_expert_node:checkpoint:={checkpoint}",
                    "-p",
                    "action_expert_node:autostart:=true",
                    "-p",
                    f"action_expert_node:executor_threads:={args.executor_threads}",
                ],
            ],
            work / "action_expert_node.log",
        ),
    }
    import rclpy
    from insertion_vla_msgs.msg import ActionChunk, ControllerStatus, VLFeatures

    from contracts import topics
    from insertion_vla_ros.ros_io.qos import LATCHED_QOS, RELIABLE_QOS
    from insertion_vla_ros.ros_io.time_conversions import stamp_to_ns

    rclpy.init()
    node = rclpy.create_node("control_loop_bench")
    chunks: list[tuple[float, int, int, float]] = []  # (arrival s, stamp ns, status, vl_age_s)
    statuses: list = []
    features: list = []
    node.create_subscription(
        ActionChunk,
        topics.CHUNK_TOPIC,
        lambda m: chunks.append((time.monotonic(), stamp_to_ns(m.header.stamp), m.status, m.vl_age_s)),
        RELIABLE_QOS,
    )
    node.create_subscription(ControllerStatus, "/action_expert_node/status", statuses.append, 10)
    node.create_subscription(
        VLFeatures, topics.FEATURES_TOPIC, lambda m: features.append(m.inference_time_s), LATCHED_QOS
    )
    try:
        deadline = time.monotonic() + 600
        while not any(c[2] == 0 for c in chunks):
            rclpy.spin_once(node, timeout_sec=0.05)
            for name, process in processes.items():
                if process.poll() is not None:
                    raise SystemExit(f"{name} exited early; see {work / (name + '.log')}")
            if time.monotonic() > deadline:
                raise SystemExit(f"no OK chunk within 600 s; logs in {work}")
        while not statuses:
            rclpy.spin_once(node, timeout_sec=0.05)
        start_index, start_status, start_time = len(chunks), statuses[-1], time.monotonic()
        while time.monotonic() - start_time < duration:
            rclpy.spin_once(node, timeout_sec=0.05)
        window, end_status = chunks[start_index:], statuses[-1]
        measured = time.monotonic() - start_time
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        codes = {name: stop(process) for name, process in processes.items()}
    arrivals = np.array([c[0] for c in window])
    stamps = np.array([c[1] for c in window], dtype=np.int64)
    period_s = 0.1
    intervals = np.diff(arrivals)
    slots = np.diff(stamps) // int(period_s * NS)
    ages = [c[3] for c in window if c[2] == 0]
    metrics = {
        **percentiles_ms(intervals, "tick_period"),
        **percentiles_ms(np.abs(intervals - period_s), "tick_jitter"),
        "missed_ticks": int(np.clip(slots - 1, 0, None).sum()),
        "node_missed_ticks": int(end_status.missed_ticks - start_status.missed_ticks),
        "sensor_samples_lost": int(end_status.dropped_samples - start_status.dropped_samples),
        **percentiles_ms(ages, "vl_age"),
        "vl_age_max_ms": float(max(ages) * 1e3) if ages else float("nan"),
        "ok_chunks": len(ages),
        "chunks": len(window),
        "vlm_inference_p50_ms": float(np.median(features) * 1e3) if features else float("nan"),
        "duration_s": float(measured),
        "clean_exit": all(code == 0 for code in codes.values()),
    }
    if args.out is not None:
        save_histogram(
            args.out / "control_loop_tick_interval.png",
            {"tick interval": intervals * 1e3},
            "interval between consecutive ActionChunks at the subscriber (ms)",
            "chunks",
        )
    config = {
        "quick": args.quick,
        "duration_s": duration,
        "vlm_period_s": args.vlm_period,
        "inject_latency_s": args.inject_latency,
        "vlm_torch_threads": args.vlm_threads,
        "executor_threads": args.executor_threads,
        "cameras": 5,
        "camera_rate_hz": 10.0,
        "sensor_rate_hz": 650.0,
        "samples_per_message": 13,
        "action_period_s": period_s,
        "checkpoint": str(checkpoint),
        "load_average_1min": os.getloadavg()[0],
    }
    emit("control_loop", config, metrics, args.out)


if __name__ == "__main__":
    main()
