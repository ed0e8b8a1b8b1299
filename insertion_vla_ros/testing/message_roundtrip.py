"""Send each custom message between two processes over real DDS and check it arrives bit-exact.

``message_roundtrip`` (console script) is the smallest end-to-end check of a ROS 2 install: it starts a
subscriber process, publishes VLFeatures (1500 x 2048, float32 and float16), ActionChunk, SensorSamples
and ControllerStatus from this process, and prints per-message latency (publish -> callback, wall clock)
and conversion costs. ``bench/message_transport.py`` uses the same functions.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from contracts.constants import CAMERA_NAMES, SENSOR_RATE_HZ
from insertion_vla_ros.ros_io.ros_imports import import_interfaces

KINDS = ("vl_features_f32", "vl_features_f16", "action_chunk", "sensor_samples", "controller_status")
TOPIC_PREFIX = "/insertion_vla_roundtrip/"


@dataclass
class RoundTripResult:
    """What the subscriber saw for one message kind."""

    kind: str
    received: int = 0
    bit_exact: int = 0
    latencies_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def expected_payload(kind: str, sequence: int, vl_shape: tuple[int, int]) -> np.ndarray:
    """Deterministic payload for ``kind`` and ``sequence`` (the subscriber recomputes it to compare).

    A fixed random base per kind with the sequence number written into its first element, so both sides
    can rebuild it cheaply and every message still differs from the one before.
    """
    payload = _base_payload(kind, vl_shape).copy()
    payload.flat[0] = sequence
    return payload


@functools.lru_cache(maxsize=8)
def _base_payload(kind: str, vl_shape: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(KINDS.index(kind) if kind in KINDS else 0)
    if kind == "vl_features_f32":
        return rng.standard_normal(vl_shape, dtype=np.float32)
    if kind == "vl_features_f16":
        return rng.standard_normal(vl_shape, dtype=np.float32).astype(np.float16)
    if kind == "action_chunk":
        return rng.standard_normal((8, 7), dtype=np.float32)
    if kind == "sensor_samples":
        return rng.standard_normal((13, 1026), dtype=np.float32)
    if kind == "controller_status":
        return np.zeros(1, dtype=np.float64)
    raise ValueError(f"unknown message kind {kind!r}; choose from {KINDS}")


def message_type(kind: str) -> type:
    """ROS message class carrying ``kind``."""
    from insertion_vla_msgs.msg import ActionChunk, ControllerStatus, SensorSamples, VLFeatures

    return {
        "vl_features_f32": VLFeatures,
        "vl_features_f16": VLFeatures,
        "action_chunk": ActionChunk,
        "sensor_samples": SensorSamples,
        "controller_status": ControllerStatus,
    }[kind]


def build_message(kind: str, sequence: int, payload: np.ndarray, stamp_ns: int):
    """Encode ``payload`` for ``kind``/``sequence`` into its message, stamped ``stamp_ns``."""
    from insertion_vla_ros.ros_io import msg_conversions as conv

    if kind.startswith("vl_features"):
        return conv.vl_features_to_msg(
            payload,
            stamp_ns=stamp_ns,
            sequence=sequence,
            camera_names=list(CAMERA_NAMES[:2]),
            image_stamps_ns=[stamp_ns - 1000, stamp_ns],
            instruction="Perform Red_point insertion task",
            model_fingerprint="roundtrip",
            inference_time_s=0.0,
        )
    if kind == "action_chunk":
        return conv.action_chunk_to_msg(
            payload,
            stamp_ns=stamp_ns,
            sequence=sequence,
            vl_sequence=sequence,
            vl_age_s=0.1,
            inference_time_s=0.0,
            step_dt_s=0.1,
            action_names=["dx", "dy", "dz", "drx", "dry", "drz", "gripper"],
            status=0,
        )
    if kind == "sensor_samples":
        msg = conv.sensor_samples_to_msg(payload, first_stamp_ns=stamp_ns, sample_rate_hz=SENSOR_RATE_HZ)
        msg.header.frame_id = str(sequence)
        return msg
    return conv.controller_status_to_msg(
        stamp_ns, "roundtrip", vl_feature_age_s=float(payload[0]), missed_ticks=sequence
    )


def decode_message(kind: str, msg) -> tuple[int, np.ndarray]:
    """Sequence number and payload carried by a received message."""
    from insertion_vla_ros.ros_io import msg_conversions as conv

    if kind.startswith("vl_features"):
        return int(msg.sequence), conv.vl_features_from_msg(msg)
    if kind == "action_chunk":
        return int(msg.sequence), conv.action_chunk_from_msg(msg)
    if kind == "sensor_samples":
        return int(msg.header.frame_id), conv.sensor_samples_from_msg(msg)[1]
    return int(msg.missed_ticks), np.array([msg.vl_feature_age_s], dtype=np.float64)


def _qos(depth: int):
    from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy

    return QoSProfile(
        depth=depth, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.VOLATILE
    )


def run_subscriber(
    kinds: list[str], count: int, vl_shape: tuple[int, int], timeout_s: float
) -> dict[str, RoundTripResult]:
    """Receive ``count`` messages of each kind (or until ``timeout_s``); check each against its payload."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("roundtrip_subscriber", context=context)
    results = {kind: RoundTripResult(kind) for kind in kinds}

    def make_callback(kind: str):
        def callback(msg) -> None:
            arrived = time.time_ns()
            result = results[kind]
            start = time.perf_counter()
            sequence, payload = decode_message(kind, msg)
            result.decode_s.append(time.perf_counter() - start)
            result.received += 1
            result.latencies_s.append(
                (arrived - (msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)) / 1e9
            )
            expected = expected_payload(kind, sequence, vl_shape)
            if (
                payload.shape == expected.shape
                and payload.dtype == expected.dtype
                and np.array_equal(payload.reshape(-1).view(np.uint8), expected.reshape(-1).view(np.uint8))
            ):
                result.bit_exact += 1
            else:
                result.errors.append(
                    f"sequence {sequence}: payload differs ({payload.dtype} {payload.shape})"
                )

        return callback

    subscriptions = [
        node.create_subscription(
            message_type(kind), TOPIC_PREFIX + kind, make_callback(kind), _qos(count + 1)
        )
        for kind in kinds
    ]
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    print("READY", flush=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(r.received < count for r in results.values()):
        executor.spin_once(timeout_sec=0.05)
    del subscriptions
    node.destroy_node()
    context.try_shutdown()
    return results


def run_publisher(
    kinds: list[str], count: int, vl_shape: tuple[int, int], period_s: float, timeout_s: float
) -> dict[str, list[float]]:
    """Publish ``count`` messages of each kind once a subscriber matched; returns encode times per kind."""
    import rclpy
    from rclpy.duration import Duration

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("roundtrip_publisher", context=context)
    publishers = {
        kind: node.create_publisher(message_type(kind), TOPIC_PREFIX + kind, _qos(count + 1))
        for kind in kinds
    }
    deadline = time.monotonic() + timeout_s
    while any(pub.get_subscription_count() == 0 for pub in publishers.values()):
        if time.monotonic() > deadline:
            raise TimeoutError("no subscriber matched the roundtrip topics (is DDS discovery blocked?)")
        time.sleep(0.02)
    time.sleep(0.3)  # let both sides finish matching before the first sample
    encode_s: dict[str, list[float]] = {kind: [] for kind in kinds}
    for sequence in range(count):
        for kind in kinds:
            payload = expected_payload(kind, sequence, vl_shape)
            start = time.perf_counter()
            msg = build_message(kind, sequence, payload, time.time_ns())
            encode_s[kind].append(time.perf_counter() - start)
            stamp = time.time_ns()
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
            publishers[kind].publish(msg)
            time.sleep(period_s)
    for publisher in publishers.values():  # reliable: wait until the subscriber has every sample
        publisher.wait_for_all_acked(Duration(seconds=timeout_s))
    node.destroy_node()
    context.try_shutdown()
    return encode_s


def round_trip(
    kinds: list[str],
    count: int,
    vl_shape: tuple[int, int] = (1500, 2048),
    period_s: float = 0.05,
    timeout_s: float = 60.0,
) -> tuple[dict[str, RoundTripResult], dict[str, list[float]]]:
    """Run a subscriber subprocess, publish from here; returns (subscriber results, encode times)."""
    import_interfaces()  # fail here, with the build hint, rather than in the subscriber process
    command = [
        sys.executable,
        "-m",
        "insertion_vla_ros.testing.message_roundtrip",
        "--role",
        "subscriber",
        "--count",
        str(count),
        "--kinds",
        *kinds,
        "--vl-shape",
        str(vl_shape[0]),
        str(vl_shape[1]),
        "--timeout",
        str(timeout_s),
    ]
    subscriber = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert subscriber.stdout is not None
        if subscriber.stdout.readline().strip() != "READY":
            raise RuntimeError("roundtrip subscriber failed to start")
        encode_s = run_publisher(kinds, count, vl_shape, period_s, timeout_s)
        output, _ = subscriber.communicate(timeout=timeout_s)
    finally:
        if subscriber.poll() is None:
            subscriber.kill()
    raw = json.loads(output.strip().splitlines()[-1])
    return {kind: RoundTripResult(**value) for kind, value in raw.items()}, encode_s


def main(argv: list[str] | None = None) -> int:
    """Console entry point: round-trip every custom message between two processes and report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["main", "subscriber"], default="main")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--vl-shape", nargs=2, type=int, default=[1500, 2048])
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    vl_shape = (args.vl_shape[0], args.vl_shape[1])
    if args.role == "subscriber":
        results = run_subscriber(args.kinds, args.count, vl_shape, args.timeout)
        print(json.dumps({kind: vars(result) for kind, result in results.items()}), flush=True)
        return 0
    results, _ = round_trip(args.kinds, args.count, vl_shape, timeout_s=args.timeout)
    ok = True
    for kind, result in results.items():
        latency = np.median(result.latencies_s) * 1e3 if result.latencies_s else float("nan")
        good = result.received == args.count and result.bit_exact == args.count
        ok &= good
        print(
            f"{kind:20s} received {result.received}/{args.count}  bit-exact {result.bit_exact}  "
            f"median latency {latency:7.2f} ms  {'OK' if good else 'FAILED ' + '; '.join(result.errors[:2])}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
