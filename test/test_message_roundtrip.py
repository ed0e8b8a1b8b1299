"""Every custom message crosses real DDS between two processes and arrives bit-exact."""

import numpy as np
import pytest

from insertion_vla_ros.testing.message_roundtrip import KINDS, round_trip


@pytest.mark.slow
def test_every_custom_message_round_trips_between_processes_bit_exact():
    count = 3
    results, encode_s = round_trip(list(KINDS), count, (1500, 2048), period_s=0.02, timeout_s=60.0)
    for kind in KINDS:
        result = results[kind]
        assert result.received == count, f"{kind}: {result.received}/{count} received"
        assert result.bit_exact == count, f"{kind}: {result.errors}"
        assert len(encode_s[kind]) == count
        assert all(latency > 0 for latency in result.latencies_s)


def test_vl_features_round_trip_in_process_two_nodes(ros_context):
    """Two nodes in one process, real DDS, the 1500 x 2048 float16 and float32 payloads bit-exact."""
    import rclpy
    from insertion_vla_msgs.msg import VLFeatures
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy

    from insertion_vla_ros.ros_io.msg_conversions import vl_features_from_msg, vl_features_to_msg

    qos = QoSProfile(
        depth=2, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL
    )
    talker = rclpy.create_node("talker", context=ros_context)
    listener = rclpy.create_node("listener", context=ros_context)
    received = []
    publisher = talker.create_publisher(VLFeatures, "features", qos)
    listener.create_subscription(VLFeatures, "features", received.append, qos)
    rng = np.random.default_rng(7)
    sent = [
        rng.standard_normal((1500, 2048), dtype=np.float32),
        rng.standard_normal((1500, 2048)).astype(np.float16),
    ]
    for sequence, features in enumerate(sent):
        publisher.publish(
            vl_features_to_msg(
                features,
                stamp_ns=1_000_000_123 + sequence,
                sequence=sequence,
                camera_names=["a", "b"],
                image_stamps_ns=[5, 1_000_000_123],
                instruction="Perform Red_point insertion task",
                model_fingerprint="fp",
                inference_time_s=0.25,
            )
        )
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(listener)
    executor.add_node(talker)
    for _ in range(200):
        if len(received) == 2:
            break
        executor.spin_once(timeout_sec=0.05)
    assert len(received) == 2
    for sequence, (msg, features) in enumerate(zip(received, sent)):
        decoded = vl_features_from_msg(msg)
        assert decoded.dtype == features.dtype and decoded.shape == features.shape
        assert decoded.tobytes() == features.tobytes()
        assert msg.sequence == sequence
        assert msg.header.stamp.sec == 1 and msg.header.stamp.nanosec == 123 + sequence
        assert list(msg.camera_names) == ["a", "b"] and msg.image_stamps[0].nanosec == 5
        assert msg.model_fingerprint == "fp" and msg.inference_time_s == 0.25
    executor.shutdown()
    talker.destroy_node()
    listener.destroy_node()
