"""Control-loop timing with both nodes as separate processes, the tiny model, and a busy VLM.

Starts ``synthetic_inputs`` (5 cameras at 10 Hz, a 650 Hz sensor in 13-sample messages), ``vlm_node``
(period shorter than an inference, so the VLM computes back to back) and ``action_expert_node``, each in
its own process on an isolated DDS domain, waits for the first OK chunk, then observes for ``--duration``:

- tick period / jitter: arrival times of ActionChunks at this observer (end to end: tick + DDS delivery),
  jitter = |interval - action period|;
- publish jitter: the same from the middleware's source timestamp of each chunk (when the node published
  it), so the node's loop is measured without the delivery and this observer's own scheduling (rclpy
  with ``MessageInfo`` in subscription callbacks; NaN where that is missing, as in Humble's rclpy);
- missed ticks: skipped 100 ms slots in the chunk stamps (ticks are stamped on their slot);
- sensor samples lost: growth of the action expert's dropped-sample counter (gaps + out of order);
- VL age: ``vl_age_s`` of the OK chunks.

Each variant (``VARIANTS``: executor, core pinning, priority) runs in turn with the same inputs; the
headline keys are the default settings', every other variant adds ``<variant>_tick_jitter_p99_ms``, its
missed ticks and lost samples, and ``<variant>_jitter_p99_ratio`` against the default (ratios survive a
noisy machine better than absolute times).

``python bench/control_loop.py [--quick] [--variants ...] [--checkpoint DIR]`` prints one JSON object.
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


def start(module: str, ros_args: list[str], log: Path, cores: set[int] | None = None) -> subprocess.Popen:
    out = open(log, "w")  # noqa: SIM115 - the process owns it until the end of the bench
    return subprocess.Popen(
        [sys.executable, "-m", module, "--ros-args", *ros_args],
        stdout=out,
        stderr=subprocess.STDOUT,
        preexec_fn=None if cores is None else (lambda: os.sched_setaffinity(0, cores)),
    )


def _cores(text: str | None) -> set[int] | None:
    return None if text is None else {int(c) for c in text.strip("[]").split(",")}


def stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


VARIANTS = ("default", "events_executor", "pinned", "pinned_events", "priority")
"""``default``: the package YAML. ``events_executor``: the action expert on rclpy's EventsExecutor.
``pinned``: the action expert on the last core, the VLM and the inputs on the others. ``pinned_events``:
both. ``priority``: the action expert at SCHED_FIFO 50 (nice -10 where that is refused too)."""


def variant_params(name: str, cores: int) -> tuple[dict[str, str], dict[str, str]]:
    """(action expert, vlm) parameter overrides of a variant on a machine with ``cores`` cores."""
    expert: dict[str, str] = {}
    vlm: dict[str, str] = {}
    if name in ("events_executor", "pinned_events"):
        expert["executor"] = "events"
    if name in ("pinned", "pinned_events") and cores >= 2:
        expert["cpu_affinity"] = f"[{cores - 1}]"
        vlm["cpu_affinity"] = "[" + ",".join(str(c) for c in range(cores - 1)) + "]"
    if name == "priority":
        expert["realtime_priority"] = "50"
    return expert, vlm


def main() -> None:
    """Run every variant (``--variants``) one after another and emit one JSON with ratios to default."""
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
    parser.add_argument(
        "--variants", nargs="+", choices=VARIANTS, default=None, help="default: all (quick: default, pinned)"
    )
    args = parser.parse_args()
    duration = args.duration or (8.0 if args.quick else 60.0)
    variants = args.variants or (["default", "pinned"] if args.quick else list(VARIANTS))
    if "default" not in variants:
        variants = ["default", *variants]

    os.environ["ROS_DOMAIN_ID"] = str(120 + os.getpid() % 100)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    work = Path(tempfile.mkdtemp(prefix="control_loop_"))
    checkpoint = args.checkpoint
    if checkpoint is None:
        from insertion_vla_ros.testing.tiny_checkpoint import build_tiny_checkpoint

        checkpoint = build_tiny_checkpoint(work / "policy")
    import rclpy

    rclpy.init()
    results: dict[str, dict] = {}
    intervals: dict[str, np.ndarray] = {}
    try:
        for name in variants:
            expert, vlm = variant_params(name, os.cpu_count() or 1)
            results[name], intervals[name] = run_variant(args, checkpoint, work / name, duration, expert, vlm)
            print(f"{name}: jitter p99 {results[name]['tick_jitter_p99_ms']:.2f} ms", file=sys.stderr)
    finally:
        rclpy.try_shutdown()
    metrics = dict(results["default"])  # the headline keys stay the default settings'
    for name, values in results.items():
        if name == "default":
            continue
        for key in (
            "tick_jitter_p50_ms",
            "tick_jitter_p99_ms",
            "publish_jitter_p50_ms",
            "publish_jitter_p99_ms",
            "missed_ticks",
            "sensor_samples_lost",
        ):
            metrics[f"{name}_{key}"] = values[key]
        base = results["default"]["tick_jitter_p99_ms"]
        metrics[f"{name}_jitter_p99_ratio"] = values["tick_jitter_p99_ms"] / base if base else float("nan")
        metrics[f"{name}_process"] = values["process"]
    if args.out is not None:
        save_histogram(
            args.out / "control_loop_tick_interval.png",
            {name: values * 1e3 for name, values in intervals.items()},
            "interval between consecutive ActionChunks at the subscriber (ms)",
            "chunks",
        )
    config = {
        "quick": args.quick,
        "duration_s": duration,
        "variants": variants,
        "vlm_period_s": args.vlm_period,
        "inject_latency_s": args.inject_latency,
        "vlm_torch_threads": args.vlm_threads,
        "executor_threads": args.executor_threads,
        "cameras": 5,
        "camera_rate_hz": 10.0,
        "sensor_rate_hz": 650.0,
        "samples_per_message": 13,
        "action_period_s": 0.1,
        "checkpoint": str(checkpoint),
        "load_average_1min": os.getloadavg()[0],
    }
    emit("control_loop", config, metrics, args.out)


def _callbacks_take_message_info() -> bool:
    """Whether this rclpy passes ``MessageInfo`` to two-argument subscription callbacks (Iron and newer)."""
    from rclpy.subscription import Subscription

    return hasattr(Subscription, "CallbackType")


def _params(node: str, values: dict[str, str]) -> list[str]:
    return [item for name, value in values.items() for item in ("-p", f"{node}:{name}:={value}")]


def run_variant(
    args, checkpoint: Path, work: Path, duration: float, expert: dict[str, str], vlm: dict[str, str]
) -> tuple[dict, np.ndarray]:
    """Start the three processes with these overrides, observe ``duration`` s, stop them; the metrics."""
    import rclpy
    from insertion_vla_msgs.msg import ActionChunk, ControllerStatus, VLFeatures

    from contracts import topics
    from insertion_vla_ros.ros_io.qos import LATCHED_QOS, RELIABLE_QOS
    from insertion_vla_ros.ros_io.time_conversions import stamp_to_ns

    work.mkdir(parents=True, exist_ok=True)
    common = ["--params-file", str(CONFIG)]
    vlm_values = {
        "checkpoint": str(checkpoint),
        "autostart": "true",
        "vlm_period_s": str(args.vlm_period),
        "inject_latency_s": str(args.inject_latency),
        "torch_threads": str(args.vlm_threads),
        **vlm,
    }
    expert_values = {
        "checkpoint": str(checkpoint),
        "autostart": "true",
        "executor_threads": str(args.executor_threads),
        **expert,
    }
    processes = {
        "rig": start(
            "insertion_vla_ros.testing.synthetic_inputs",
            ["-p", "camera_rate_hz:=10.0"],
            work / "rig.log",
            cores=_cores(vlm.get("cpu_affinity")),  # the inputs share the VLM's cores when pinned
        ),
        "vlm_node": start(
            "insertion_vla_ros.nodes.vlm_node",
            [*common, *_params("vlm_node", vlm_values)],
            work / "vlm_node.log",
        ),
        "action_expert_node": start(
            "insertion_vla_ros.nodes.action_expert_node",
            [*common, *_params("action_expert_node", expert_values)],
            work / "action_expert_node.log",
        ),
    }
    node = rclpy.create_node("control_loop_bench")
    # (arrival s, stamp ns, status, vl_age_s, source ns, inference s)
    chunks: list[tuple[float, int, int, float, int, float]] = []

    def on_chunk(message, info) -> None:  # two parameters: rclpy then passes the MessageInfo
        source_ns = -1 if info is None else int(info["source_timestamp"])
        chunks.append(
            (
                time.monotonic(),
                stamp_to_ns(message.header.stamp),
                message.status,
                message.vl_age_s,
                source_ns,
                message.inference_time_s,
            )
        )

    statuses: list = []
    features: list = []
    node.create_subscription(
        ActionChunk,
        topics.CHUNK_TOPIC,
        on_chunk if _callbacks_take_message_info() else (lambda message: on_chunk(message, None)),
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
        codes = {name: stop(process) for name, process in processes.items()}
    arrivals = np.array([c[0] for c in window])
    stamps = np.array([c[1] for c in window], dtype=np.int64)
    period_s = 0.1
    intervals = np.diff(arrivals)
    sources = np.array([c[4] for c in window], dtype=np.int64)
    has_sources = bool(sources.size) and sources.min() > 0
    published = np.diff(sources) / NS if has_sources else np.array([np.nan])
    # slot -> publish (the stamp is the tick's slot on the node's clock, the source timestamp the same
    # system clock at publish): waking up late plus the tick's own compute (``inference_time_s``)
    publish_delay = (sources - stamps) / NS if has_sources else np.array([np.nan])
    slots = np.diff(stamps) // int(period_s * NS)
    ages = [c[3] for c in window if c[2] == 0]
    metrics = {
        **percentiles_ms(intervals, "tick_period"),
        **percentiles_ms(np.abs(intervals - period_s), "tick_jitter"),
        **percentiles_ms(np.abs(published - period_s), "publish_jitter"),
        **percentiles_ms(publish_delay, "slot_to_publish"),
        **percentiles_ms([c[5] for c in window], "tick_compute"),
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
        "process": _process_line(work / "action_expert_node.log"),
    }
    return metrics, intervals


def _process_line(log: Path) -> str:
    """What the action expert reported about its process settings (applied or refused)."""
    lines = [
        line for line in log.read_text(errors="replace").splitlines() if "process" in line and "]: " in line
    ]
    return " | ".join(line.split("]: ", 1)[1] for line in lines) or "default"


if __name__ == "__main__":
    main()
