"""The demo's closed loop through the real nodes (sim_node + bringup processes on sim time) and its monitor.

sim_node, vlm_node and action_expert_node run as processes; a small monitor node prints live status and
collects the results.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contracts import topics
from insertion_vla_ros.runtime.chunk_executor import DEFAULT_MAX_EPISODE_S


@dataclass
class LoopSettings:
    """How the closed loop runs."""

    checkpoint: Path
    episodes: int = 3
    seed: int = 1000
    rate: float = 1.0
    lockstep_timeout_s: float = 2.0
    vlm_period_s: float = 1.7
    vlm_latency_s: float = 0.0
    """Extra seconds every VLM inference takes (vlm_node ``inject_latency_s``): the users' VLM latency."""
    max_episode_s: float = DEFAULT_MAX_EPISODE_S
    timeout_s: float = 600.0
    results_file: Path = Path("demo_output/closed_loop_results.json")
    log_dir: Path = Path("demo_output/logs")
    params_file: Path | None = None
    extra_sim_args: list[str] = field(default_factory=list)


def sim_command(s: LoopSettings) -> list[str]:
    """Command line of the sim node process."""
    return [
        sys.executable,
        "-m",
        "insertion_vla_ros.nodes.sim_node",
        "--ros-args",
        "-p",
        f"seed:={s.seed}",
        "-p",
        f"num_episodes:={s.episodes}",
        "-p",
        f"rate:={float(s.rate)}",
        "-p",
        f"lockstep_timeout_s:={float(s.lockstep_timeout_s)}",
        "-p",
        f"max_episode_s:={float(s.max_episode_s)}",
        "-p",
        f"results_file:={s.results_file}",
        "-p",
        "exit_when_done:=true",
        *s.extra_sim_args,
    ]


def bringup_command(s: LoopSettings) -> list[str]:
    """Command line of ``bringup`` (both policy nodes, sim time, auto-activated)."""
    command = [
        sys.executable,
        "-m",
        "insertion_vla_ros.tools.bringup",
        "--checkpoint",
        str(s.checkpoint),
        "--use-sim-time",
        "--autostart",
        "--vlm-param",
        f"vlm_period_s:={float(s.vlm_period_s)}",
        "--vlm-param",
        f"inject_latency_s:={float(s.vlm_latency_s)}",
    ]
    if s.params_file is not None:
        command += ["--params-file", str(s.params_file)]
    return command


class Monitor:
    """Subscribes to the status topics; ``line()`` renders one live status line."""

    def __init__(self, node: Any) -> None:
        from std_msgs.msg import String

        from insertion_vla_ros.ros_io.qos import LATCHED_RESULTS_QOS
        from insertion_vla_ros.ros_io.ros_imports import import_interfaces

        interfaces = import_interfaces()
        self.lock = threading.Lock()
        self.sim: dict[str, Any] = {}
        self.expert: Any = None
        self.vlm: Any = None
        self.results: list[dict[str, Any]] = []
        self.chunk_times: list[float] = []
        self.chunk_ok = 0
        self.chunk_total = 0
        node.create_subscription(String, topics.SIM_STATUS_TOPIC, self._on_sim, 10)
        node.create_subscription(String, topics.SIM_RESULT_TOPIC, self._on_result, LATCHED_RESULTS_QOS)
        node.create_subscription(
            interfaces.ControllerStatus, "/action_expert_node/status", self._on_expert, 10
        )
        node.create_subscription(interfaces.ControllerStatus, "/vlm_node/status", self._on_vlm, 10)
        node.create_subscription(interfaces.ActionChunk, topics.CHUNK_TOPIC, self._on_chunk, 50)

    def _on_sim(self, msg: Any) -> None:
        with self.lock:
            self.sim = json.loads(msg.data)

    def _on_result(self, msg: Any) -> None:
        with self.lock:
            self.results.append(json.loads(msg.data))

    def _on_expert(self, msg: Any) -> None:
        self.expert = msg

    def _on_vlm(self, msg: Any) -> None:
        self.vlm = msg

    def _on_chunk(self, msg: Any) -> None:
        with self.lock:
            self.chunk_times.append(msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9)
            self.chunk_total += 1
            self.chunk_ok += int(msg.status == 0)

    def line(self, episodes: int) -> str:
        """One status line: episode, robot, controller rates, VL age, holds."""
        with self.lock:
            sim = dict(self.sim)
            stamps = self.chunk_times[-21:]
            ok_fraction = self.chunk_ok / max(self.chunk_total, 1)
        if not sim:
            return "waiting for sim_node ..."
        if sim.get("state") == "warmup":
            return f"warming up: loading models, {sim.get('chunks_received', 0)} chunks so far"
        rate = (
            (len(stamps) - 1) / (stamps[-1] - stamps[0])
            if len(stamps) > 2 and stamps[-1] > stamps[0]
            else 0.0
        )
        e, v = self.expert, self.vlm
        age = f"{e.vl_feature_age_s:4.2f}s" if e is not None and np.isfinite(e.vl_feature_age_s) else "  -  "
        vlm_ms = (
            f"{v.vlm_latency_s * 1e3:4.0f}ms" if v is not None and np.isfinite(v.vlm_latency_s) else "  -  "
        )
        holds = int(e.hold_count) if e is not None else 0
        return (
            f"ep {sim['episode'] + 1}/{episodes} t={sim['episode_time_s']:5.1f}s {sim['target']:<6} "
            f"depth {sim['depth_mm']:+5.2f}mm (err {sim['depth_error_mm']:+5.2f}) "
            f"lat {sim['lateral_error_mm']:5.2f}mm F {sim['max_force_n']:4.2f}N | "
            f"chunks {rate:4.1f}/s sim, OK {ok_fraction:4.0%} | VL age {age} "
            f"VLM {vlm_ms} | holds {holds} | robot {sim['hold_reason'] or 'moving'} | "
            f"RTF {sim['real_time_factor']:.2f}"
        )


def _start(command: list[str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log, "w")  # noqa: SIM115 - closed when the process is reaped (GC of Popen)
    return subprocess.Popen(
        command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True, env=os.environ.copy()
    )


def _stop(process: subprocess.Popen, timeout_s: float = 25.0) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def run_closed_loop(
    settings: LoopSettings, print_every_s: float = 1.0, out: Any = sys.stdout
) -> list[dict[str, Any]]:
    """Run the episodes through the real nodes; print live status; return the per-episode results."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    settings.results_file.parent.mkdir(parents=True, exist_ok=True)
    settings.results_file.unlink(missing_ok=True)
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("demo_monitor", context=context)
    monitor = Monitor(node)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    nodes = _start(bringup_command(settings), settings.log_dir / "nodes.log")
    sim = _start(sim_command(settings), settings.log_dir / "sim_node.log")
    deadline = time.monotonic() + settings.timeout_s
    next_print = 0.0
    try:
        while time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
            if time.monotonic() >= next_print:
                next_print = time.monotonic() + print_every_s
                print(monitor.line(settings.episodes), file=out, flush=True)
            if sim.poll() is not None:
                break
            if nodes.poll() is not None:
                print(
                    f"the nodes exited early (code {nodes.returncode}); see {settings.log_dir}/nodes.log",
                    file=out,
                )
                break
        else:
            print(f"closed loop timed out after {settings.timeout_s:.0f} s", file=out)
    finally:
        _stop(sim)
        _stop(nodes)
        executor.shutdown()
        node.destroy_node()
        context.try_shutdown()
    if settings.results_file.is_file():
        return json.loads(settings.results_file.read_text())
    return monitor.results


def results_table(results: list[dict[str, Any]]) -> str:
    """The final table: one row per episode plus the success rate."""
    header = (
        f"{'episode':>7} {'target':<7} {'success':<8} {'depth err mm':>12} {'lateral mm':>10} "
        f"{'max force N':>11} {'time s':>6}  end"
    )
    rows = [header, "-" * len(header)]
    for r in results:
        rows.append(
            f"{r['episode'] + 1:>7} {r['target']:<7} {'yes' if r['success'] else 'no':<8} "
            f"{r['depth_error_mm']:>+12.2f} {r['lateral_error_mm']:>10.2f} {r['max_force_n']:>11.2f} "
            f"{r['time_s']:>6.1f}  {r['end_reason']}"
        )
    if results:
        rate = sum(bool(r["success"]) for r in results) / len(results)
        rows.append("-" * len(header))
        rows.append(
            f"success {rate:.0%} ({sum(bool(r['success']) for r in results)}/{len(results)}), "
            "mean |depth err| "
            f"{np.mean([abs(r['depth_error_mm']) for r in results]):.2f} mm, mean lateral "
            f"{np.mean([r['lateral_error_mm'] for r in results]):.2f} mm, max force "
            f"{max(r['max_force_n'] for r in results):.2f} N"
        )
    return "\n".join(rows)
