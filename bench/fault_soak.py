"""Fault soak: both nodes as processes on real DDS, random input faults injected and cleared, on sim time.

``synthetic_inputs`` (5 cameras, the 650 Hz sensor, the pose), ``vlm_node`` and ``action_expert_node`` run
as processes on an isolated DDS domain, all on ``/clock`` published here in real time. For
``--duration`` s faults are injected one at a time for 1-3 s, with 1-2 s of clean inputs between them:
a NaN sensor, a stopped sensor, the needle force above the guard, a stopped pose, a stopped camera,
undecodable images, a sensor claiming another rate, and the clock jumping back (a sim reset) or forward.

``ok_chunks_while_faulted`` counts OK chunks whose inputs were invalid by the fault's own definition,
after a grace of one tick: a window holding a NaN sample or a force at or above the guard, a sensor
window or pose older than its maximum age, features older than ``vl_max_age_s``, features captured before
a backward jump, a stream at the wrong rate. ``recovery_s_p95`` is the time from clearing a fault to the
next OK chunk; ``crashes`` counts node processes that died. Target: 0 and 0 over >= 50 faults.

``python bench/fault_soak.py [--quick] [--duration 300] [--out DIR]`` prints one JSON object.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import base_parser, emit  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config" / "insertion_vla.yaml"
NS = 1_000_000_000
TICK_S = 0.1
VL_MAX_AGE_S = 1.0
CLOCK_STEP_S = 0.005
# fault -> (synthetic_inputs parameters while it lasts, how long after injection inputs are invalid, s)
PARAMETER_FAULTS = {
    "sensor_nan": ({"sensor_nan": True}, 0.0),
    "sensor_stop": ({"sensor_enabled": False}, 0.1),  # sensor_max_age_s
    "force_over_guard": ({"force_n": 3.0}, 0.0),
    "pose_stop": ({"pose_enabled": False}, 0.1),  # pose_max_age_s
    "wrong_rate": ({"declared_rate_hz": 1000.0}, 0.0),
    "camera_stop": ({"stopped_cameras": "view3"}, None),  # invalid once the features are too old
    "corrupt_images": ({"corrupt_images": True}, None),
}
CLEAR = {
    "sensor_nan": False,
    "sensor_enabled": True,
    "force_n": 0.0,
    "pose_enabled": True,
    "declared_rate_hz": 0.0,
    "stopped_cameras": "",
    "corrupt_images": False,
}
JUMP_FAULTS = {"clock_back": -1.5, "clock_forward": 5.0}


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


class Soak:
    """The bench's node: /clock, parameter changes, and every ActionChunk with its arrival."""

    def __init__(self) -> None:
        import rclpy
        from insertion_vla_msgs.msg import ActionChunk
        from rcl_interfaces.srv import SetParameters
        from rosgraph_msgs.msg import Clock

        from contracts import topics
        from insertion_vla_ros.ros_io.qos import RELIABLE_QOS

        rclpy.init()
        self.node = rclpy.create_node("fault_soak")
        self.clock_pub = self.node.create_publisher(Clock, topics.CLOCK_TOPIC, 10)
        self.chunks: list = []
        self.node.create_subscription(ActionChunk, topics.CHUNK_TOPIC, self.chunks.append, RELIABLE_QOS)
        self.params = self.node.create_client(SetParameters, "/synthetic_inputs/set_parameters")
        self.now_ns = 10 * NS
        self._wall = time.monotonic()

    def spin(self, seconds: float) -> None:
        """Advance sim time with wall time, publishing /clock every CLOCK_STEP_S."""
        import rclpy
        from rosgraph_msgs.msg import Clock

        from insertion_vla_ros.ros_io.time_conversions import ns_to_stamp

        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.now_ns += int(CLOCK_STEP_S * NS)
            self.clock_pub.publish(Clock(clock=ns_to_stamp(self.now_ns)))
            rclpy.spin_once(self.node, timeout_sec=0.0)
            delay = CLOCK_STEP_S - (time.monotonic() - self._wall)
            if delay > 0:
                time.sleep(delay)
            self._wall = time.monotonic()

    def jump(self, seconds: float) -> None:
        """Move the clock by ``seconds`` at once (negative: back)."""
        self.now_ns += int(seconds * NS)
        self.spin(0.0)

    def set(self, values: dict) -> None:
        """Set parameters of synthetic_inputs (the faults)."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        request = SetParameters.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
        )
        future = self.params.call_async(request)
        import rclpy

        rclpy.spin_until_future_complete(self.node, future, timeout_sec=5.0)


def violations(chunks: list, faults: list[dict]) -> tuple[int, list[float]]:
    """OK chunks whose inputs were invalid (after one tick of grace), and each fault's recovery time."""
    from insertion_vla_ros.ros_io.time_conversions import stamp_to_ns

    ok = [(stamp_to_ns(c.header.stamp), c) for c in chunks if c.status == 0]
    # never, fault or not: features older than the maximum age
    bad = sum(chunk.vl_age_s > VL_MAX_AGE_S + 1e-6 for _, chunk in ok)
    recoveries = []
    for fault in faults:
        start, end, after = fault["start_ns"], fault["end_ns"], fault["invalid_after_s"]
        for stamp, chunk in ok:
            captured = stamp - int(round(chunk.vl_age_s * NS))
            if fault["name"] == "clock_back":
                bad += stamp >= start and captured < start  # features from before the jump back
            elif after is not None and fault["name"] not in JUMP_FAULTS:
                bad += start + int((after + TICK_S) * NS) <= stamp <= end
        later = [stamp for stamp, _ in ok if stamp > end]
        if later:
            recoveries.append((later[0] - end) / NS)
    return int(bad), recoveries


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds of faults (default 300, quick 50)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    duration = args.duration or (50.0 if args.quick else 300.0)
    rng = random.Random(args.seed)
    os.environ["ROS_DOMAIN_ID"] = str(140 + os.getpid() % 90)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    work = Path(tempfile.mkdtemp(prefix="fault_soak_"))
    from insertion_vla_ros.testing.tiny_checkpoint import build_tiny_checkpoint

    checkpoint = build_tiny_checkpoint(work / "policy")
    common = ["--params-file", str(CONFIG), "-p", "use_sim_time:=true"]
    processes = {
        "synthetic_inputs": start(
            "insertion_vla_ros.testing.synthetic_inputs", ["-p", "use_sim_time:=true"], work / "rig.log"
        ),
        "vlm_node": start(
            "insertion_vla_ros.nodes.vlm_node",
            [*common, "-p", f"vlm_node:checkpoint:={checkpoint}", "-p", "vlm_node:autostart:=true",
             "-p", "vlm_node:vlm_period_s:=0.3", "-p", "vlm_node:torch_threads:=1"],
            work / "vlm_node.log",
        ),
        "action_expert_node": start(
            "insertion_vla_ros.nodes.action_expert_node",
            [*common, "-p", f"action_expert_node:checkpoint:={checkpoint}",
             "-p", "action_expert_node:autostart:=true",
             "-p", f"action_expert_node:vl_max_age_s:={VL_MAX_AGE_S}"],
            work / "action_expert_node.log",
        ),
    }  # fmt: skip
    soak = Soak()
    faults: list[dict] = []
    crashes = 0
    try:
        deadline = time.monotonic() + 600
        while not any(c.status == 0 for c in soak.chunks):  # model loading: real seconds
            soak.spin(0.2)
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes.values()):
                raise RuntimeError(f"the nodes never produced an OK chunk; logs in {work}")
        soak.spin(2.0)
        started = time.monotonic()
        names = list(PARAMETER_FAULTS) + list(JUMP_FAULTS)
        while time.monotonic() - started < duration:
            name = rng.choice(names)
            fault = {"name": name, "start_ns": soak.now_ns, "first_chunk": len(soak.chunks)}
            if name in JUMP_FAULTS:
                soak.jump(JUMP_FAULTS[name])
                fault.update(start_ns=soak.now_ns, invalid_after_s=0.0)
                soak.spin(rng.uniform(1.0, 3.0))
            else:
                values, fault["invalid_after_s"] = PARAMETER_FAULTS[name]
                soak.set(values)
                soak.spin(rng.uniform(1.0, 3.0))
                soak.set({k: CLEAR[k] for k in values})
            fault["end_ns"], fault["last_chunk"] = soak.now_ns, len(soak.chunks)
            faults.append(fault)
            soak.spin(rng.uniform(1.0, 2.0))
        soak.spin(3.0)
    finally:
        for process in processes.values():
            crashes += process.poll() is not None
            stop(process)
    bad, recoveries = violations(soak.chunks, faults)
    metrics = {
        "ok_chunks_while_faulted": bad,
        "faults_injected": len(faults),
        "recovery_s_p50": float(np.percentile(recoveries, 50)) if recoveries else float("nan"),
        "recovery_s_p95": float(np.percentile(recoveries, 95)) if recoveries else float("nan"),
        "faults_recovered": len(recoveries),
        "crashes": crashes,
        "chunks": len(soak.chunks),
        "ok_chunks": sum(c.status == 0 for c in soak.chunks),
    }
    for name in PARAMETER_FAULTS | JUMP_FAULTS:
        metrics[f"faults_{name}"] = sum(f["name"] == name for f in faults)
    config = {"duration_s": duration, "seed": args.seed, "vl_max_age_s": VL_MAX_AGE_S, "logs": str(work)}
    if args.out is not None:
        _plot(soak.chunks, faults, args.out)
    emit("fault_soak", config, metrics, args.out)


def _plot(chunks: list, faults: list[dict], out: Path) -> None:
    """Chunk status over the run (in arrival order) with the fault spans shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, axis = plt.subplots(figsize=(12, 3))
    axis.plot(np.arange(len(chunks)), [c.status for c in chunks], ".", ms=2)
    for fault in faults:  # by arrival: after a jump back, stamps repeat
        axis.axvspan(fault["first_chunk"], fault["last_chunk"], alpha=0.2, color="tab:red")
    axis.set_yticks([0, 1, 2], ["OK", "WAITING", "HOLD"])
    axis.set_xlabel("chunk (one per 100 ms tick)")
    axis.set_title("action chunk status; shaded: a fault is injected")
    fig.tight_layout()
    fig.savefig(out / "fault_soak.png", dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
