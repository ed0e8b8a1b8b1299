"""``record``: the ``ros2 bag record`` command for this system's topics, or a pure-rclpy MCAP recorder.

    record                      print the ros2 bag record command (topics: contracts/topics.py + outputs)
    record --run -o BAG         run it (needs ros2cli + rosbag2); without ros2 it falls back to:
    record --rclpy -o BAG       record with rclpy subscriptions + the rosbags Writer (MCAP), Ctrl-C to stop

Latched topics (instruction, VL features) are recorded with their transient-local offered QoS, so a replay
re-publishes them latched.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from contracts import topics
from contracts.constants import CAMERA_NAMES

OUTPUT_TOPICS: tuple[tuple[str, str], ...] = (
    (topics.FEATURES_TOPIC, "insertion_vla_msgs/msg/VLFeatures"),
    (topics.CHUNK_TOPIC, "insertion_vla_msgs/msg/ActionChunk"),
    ("/action_expert_node/status", "insertion_vla_msgs/msg/ControllerStatus"),
    ("/vlm_node/status", "insertion_vla_msgs/msg/ControllerStatus"),
    (topics.DIAGNOSTICS_TOPIC, "diagnostic_msgs/msg/DiagnosticArray"),
)
LATCHED_TOPICS = (topics.INSTRUCTION_TOPIC, topics.FEATURES_TOPIC)


def input_topics() -> list[tuple[str, str]]:
    """The rig's topics (cameras, sensor, pose, instruction) and their types, from :mod:`contracts.topics`."""
    rows = [(topics.camera_topic(name), topics.IMAGE_TYPE) for name in CAMERA_NAMES]
    rows += [
        (topics.SENSOR_TOPIC, topics.SENSOR_TYPE),
        (topics.POSE_TOPIC, topics.POSE_TYPE),
        (topics.INSTRUCTION_TOPIC, topics.INSTRUCTION_TYPE),
    ]
    return rows


def topic_list(outputs: bool = True) -> list[tuple[str, str]]:
    """Inputs (what training needs) plus, with ``outputs``, what the nodes publish."""
    return input_topics() + (list(OUTPUT_TOPICS) if outputs else [])


def ros2_command(output: str | None, outputs: bool = True, storage: str = "mcap") -> list[str]:
    """``ros2 bag record`` with the topic list (``--use-sim-time`` is not needed on a robot)."""
    command = ["ros2", "bag", "record", "-s", storage]
    if output:
        command += ["-o", output]
    return command + [topic for topic, _ in topic_list(outputs)]


def record_rclpy(output: Path, outputs: bool = True, duration_s: float = 0.0) -> dict[str, int]:
    """Record with rclpy subscriptions (raw CDR) into an MCAP rosbag2 via rosbags; return counts per topic."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rosbags.rosbag2 import StoragePlugin, Writer

    from contracts.bag_types import build_typestore
    from sim.bag import LATCHED_QOS, STREAM_QOS

    typestore = build_typestore()
    if output.exists():
        raise FileExistsError(f"{output} exists; choose another -o")
    writer = Writer(output, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    lock = threading.Lock()
    counts: dict[str, int] = {}
    rclpy.init()
    node = rclpy.create_node("bag_record")
    try:
        for topic, msgtype in topic_list(outputs):
            latched = topic in LATCHED_TOPICS
            connection = writer.add_connection(
                topic,
                msgtype,
                typestore=typestore,
                offered_qos_profiles=[LATCHED_QOS if latched else STREAM_QOS],
            )
            package, _, name = msgtype.split("/")
            cls = getattr(importlib.import_module(f"{package}.msg"), name)
            qos = QoSProfile(
                depth=1000, reliability=ReliabilityPolicy.BEST_EFFORT
            )  # receives from any publisher
            if latched:
                qos = QoSProfile(
                    depth=1,
                    reliability=ReliabilityPolicy.RELIABLE,
                    durability=DurabilityPolicy.TRANSIENT_LOCAL,
                )

            def write(raw: bytes, connection=connection, topic=topic) -> None:
                stamp = node.get_clock().now().nanoseconds
                with lock:
                    writer.write(connection, stamp, bytes(raw))
                    counts[topic] = counts.get(topic, 0) + 1

            node.create_subscription(cls, topic, write, qos, raw=True)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        end = time.monotonic() + duration_s if duration_s > 0 else float("inf")
        while rclpy.ok() and time.monotonic() < end:
            executor.spin_once(timeout_sec=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        with lock:
            writer.close()
        node.destroy_node()
        rclpy.try_shutdown()
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``record``."""
    p = argparse.ArgumentParser(prog="record", description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", default=None, help="bag folder to write")
    p.add_argument("--inputs-only", action="store_true", help="only the rig's topics (what training needs)")
    p.add_argument(
        "--run", action="store_true", help="run ros2 bag record (falls back to --rclpy without ros2)"
    )
    p.add_argument("--rclpy", action="store_true", help="record with the pure-rclpy MCAP recorder")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: Ctrl-C)")
    args = p.parse_args(argv)
    outputs = not args.inputs_only
    command = ros2_command(args.output, outputs)
    if not args.run and not args.rclpy:
        print(shlex.join(command))
        return 0
    if args.run and shutil.which("ros2"):
        process = subprocess.Popen(command)
        try:
            if args.duration > 0:
                time.sleep(args.duration)
                process.send_signal(signal.SIGINT)
            return process.wait()
        except KeyboardInterrupt:
            process.send_signal(signal.SIGINT)
            return process.wait()
    if args.run:
        print("record: ros2 not found; recording with rclpy + rosbags (MCAP)", file=sys.stderr)
    output = Path(args.output or time.strftime("insertion_vla_%Y%m%d_%H%M%S"))
    counts = record_rclpy(output, outputs, args.duration)
    print(f"record: wrote {output}: " + ", ".join(f"{t} {n}" for t, n in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
