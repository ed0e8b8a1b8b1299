"""sim_node on real DDS: topics, types and rates (by stamps, sim time), receding-horizon chunk following."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from contracts.constants import CAMERA_NAMES

pytest.importorskip("insertion_vla_msgs.msg")

from insertion_vla_ros.runtime.chunk_executor import Chunk, ChunkExecutor, EndRule  # noqa: E402

NS = 1_000_000_000


def test_executor_follows_newest_ok_chunk_step_by_step():
    executor = ChunkExecutor(max_chunk_age_s=0.3)
    executor.reset(episode_start_ns=10 * NS)
    actions = np.arange(8 * 7, dtype=float).reshape(8, 7)
    assert executor.offer(Chunk(11 * NS, actions, 0, 0.1))
    np.testing.assert_array_equal(executor.step_at(11 * NS + 5 * NS // 100)[0], actions[0])
    np.testing.assert_array_equal(executor.step_at(11 * NS + 15 * NS // 100)[0], actions[1])
    assert executor.step_at(11 * NS + 35 * NS // 100) == (None, "chunk_stale")
    assert not executor.offer(Chunk(11 * NS, actions + 1, 0, 0.1)), "an older/equal stamp must not replace"
    assert executor.offer(Chunk(11 * NS + NS // 10, actions, 2, 0.1))  # HOLD
    assert executor.step_at(11 * NS + NS // 10)[0] is None
    stale_features = Chunk(12 * NS, actions, 0, 0.1, vl_age_s=2.5)  # captured before the episode
    assert executor.offer(stale_features)
    assert executor.step_at(12 * NS)[1] == "features_before_episode"
    bad = actions.copy()
    bad[0, 0] = np.nan
    assert executor.offer(Chunk(13 * NS, bad, 0, 0.1))
    assert executor.step_at(13 * NS)[1] == "chunk_nonfinite"
    assert executor.stats.moving_ticks == 2


def test_end_rule_settles_only_after_a_still_window_inside_tissue():
    rule = EndRule(max_episode_s=5.0, settle_window_s=1.0)
    tip = np.zeros(3)
    assert all(rule.update(i / 100, tip, 0.0, 0.1, 3.0) == "" for i in range(150)), "not inserted yet"
    inserted = np.array([0.0, 0.0, -2.0])  # depth = -z
    reasons = [rule.update(1.5 + i / 100, inserted, 2.0, 0.1, 3.0) for i in range(1, 120)]
    assert reasons.index("settled") == 100  # still for a full 1 s window (1.51 s .. 2.51 s)
    assert EndRule().update(0.0, tip, 0.0, 5.0, 3.0) == "force_abort"


class _Probe:
    """Subscribes to everything the sim node publishes and plays a 10 Hz controller on /clock."""

    def __init__(self, node, interfaces, step: np.ndarray) -> None:
        from geometry_msgs.msg import PoseStamped
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from contracts import topics
        from insertion_vla_ros.ros_io.msg_conversions import action_chunk_to_msg, sensor_samples_from_msg
        from insertion_vla_ros.ros_io.time_conversions import stamp_to_ns

        self.lock = threading.Lock()
        self.images: dict[str, list[int]] = {n: [] for n in CAMERA_NAMES}
        self.sensor_stamps: list[np.ndarray] = []
        self.sensor_batches: list[int] = []
        self.poses: list[tuple[int, np.ndarray]] = []
        self.instructions: list[str] = []
        self.status: list[dict] = []
        self.chunk_log: list[tuple[int, int]] = []  # (stamp, status)
        self.step = step
        self.ok_chunks = 10  # then HOLD chunks
        self.next_tick_ns: int | None = None
        self.sequence = 0
        latched = QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
        )
        for name in CAMERA_NAMES:
            node.create_subscription(
                Image,
                topics.camera_topic(name),
                lambda m, n=name: self._add(self.images[n], stamp_to_ns(m.header.stamp)),
                50,
            )

        def on_sensor(msg):
            stamps, samples = sensor_samples_from_msg(msg)
            assert samples.shape[1] == 1026
            with self.lock:
                self.sensor_stamps.append(stamps)
                self.sensor_batches.append(int(msg.num_samples))

        def on_pose(msg):
            p = msg.pose.position
            with self.lock:
                self.poses.append((stamp_to_ns(msg.header.stamp), np.array([p.x, p.y, p.z]) * 1000.0))

        node.create_subscription(interfaces.SensorSamples, topics.SENSOR_TOPIC, on_sensor, 500)
        node.create_subscription(PoseStamped, topics.POSE_TOPIC, on_pose, 500)
        node.create_subscription(
            String, topics.INSTRUCTION_TOPIC, lambda m: self._add(self.instructions, m.data), latched
        )
        node.create_subscription(
            String, "/sim/status", lambda m: self._add(self.status, json.loads(m.data)), 10
        )
        self.features_pub = node.create_publisher(interfaces.VLFeatures, "/vla/vl_features", latched)
        chunk_pub = node.create_publisher(interfaces.ActionChunk, "/vla/action_chunk", 10)

        def on_clock(msg):
            now = stamp_to_ns(msg.clock)
            if self.next_tick_ns is None:
                self.next_tick_ns = now
            if now < self.next_tick_ns:
                return
            self.next_tick_ns += NS // 10
            hold = self.sequence >= self.ok_chunks
            actions = np.zeros((8, 7), np.float32)
            if not hold:
                actions[0] = self.step
                actions[1:, 0] = 9.0  # later steps must never run: a new chunk replaces this one first
            chunk_pub.publish(
                action_chunk_to_msg(
                    actions,
                    stamp_ns=now,
                    sequence=self.sequence,
                    vl_sequence=1,
                    vl_age_s=0.0,
                    inference_time_s=0.0,
                    step_dt_s=0.1,
                    action_names=["dx", "dy", "dz", "drx", "dry", "drz", "g"],
                    status=2 if hold else 0,
                )
            )
            self.sequence += 1
            self._add(self.chunk_log, (now, 2 if hold else 0))

        node.create_subscription(Clock, "/clock", on_clock, 10)

    def _add(self, target: list, value) -> None:
        with self.lock:
            target.append(value)


@pytest.mark.timeout(180)
def test_sim_node_publishes_rig_topics_and_follows_chunks(ros_context, tmp_path):
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    from insertion_vla_ros.nodes import sim_node
    from insertion_vla_ros.nodes.sim_node import SimNode

    step = np.array([0.5, -0.3, 0.0, 0.0, 0.0, 0.0, 1.0], np.float32)
    results_file = tmp_path / "results.json"
    sim = SimNode(
        context=ros_context,
        parameter_overrides=[
            Parameter("seed", value=3),
            Parameter("num_episodes", value=1),
            Parameter("max_episode_s", value=1.5),
            Parameter("lockstep_timeout_s", value=20.0),
            Parameter("rate", value=0.0),
            Parameter("results_file", value=str(results_file)),
        ],
    )
    probe_node = rclpy.create_node("sim_probe", context=ros_context)
    probe = _Probe(probe_node, sim_node.interfaces, step)
    executor = MultiThreadedExecutor(num_threads=3, context=ros_context)
    executor.add_node(sim)
    executor.add_node(probe_node)
    try:
        deadline = time.monotonic() + 150
        while not sim.done.is_set() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        for _ in range(10):
            executor.spin_once(timeout_sec=0.05)
    finally:
        sim.stop()
        executor.shutdown()
        sim.destroy_node()
        probe_node.destroy_node()
    assert sim.done.is_set(), "the episode did not finish"
    result = json.loads(results_file.read_text())[0]
    assert result["end_reason"] == "timeout" and result["episode"] == 0

    episode_start = sim.rig.start_ns
    with probe.lock:
        images = {name: np.array(stamps) for name, stamps in probe.images.items()}
        sensor = np.concatenate(probe.sensor_stamps)
        poses = list(probe.poses)
    # Rates by stamps over the episode (sim time): 10 Hz cameras (5 views, same stamps), 650 Hz sensor
    # in batches of 13, 100 Hz pose.
    span = (episode_start, episode_start + NS)
    cams = [s[(s >= span[0]) & (s < span[1])] for s in images.values()]
    assert all(len(c) == 10 for c in cams) and all(np.array_equal(c, cams[0]) for c in cams)
    in_span = sensor[(sensor >= span[0]) & (sensor < span[1])]
    assert len(in_span) == 650 and np.all(np.diff(sensor) > 0)
    assert np.median(probe.sensor_batches) == 13
    pose_stamps = np.array([s for s, _ in poses])
    assert np.sum((pose_stamps >= span[0]) & (pose_stamps < span[1])) == 100
    assert probe.instructions and probe.instructions[-1] == result["instruction"]
    assert probe.status and probe.status[-1]["episode"] == 0

    # Chunk following: each 100 ms chunk moves the tip by exactly its first step; HOLD keeps it still.
    by_stamp = dict(poses)
    log = probe.chunk_log
    # Intervals [t, t + 100 ms) of a chunk on a regular 100 ms grid (its neighbours 100 ms either side).
    ok_ticks = [
        t
        for (p, _), (t, status), (n, _) in zip(log, log[1:], log[2:])
        if status == 0 and t - p == n - t == NS // 10 and t >= episode_start and t + NS // 10 in by_stamp
    ]
    assert len(ok_ticks) >= 3, log
    for t in ok_ticks:
        moved = by_stamp[t + NS // 10] - by_stamp[t]
        np.testing.assert_allclose(moved, step[0:3], atol=1e-6, err_msg=f"{result['hold_reasons']} {log}")
    held = [t for t, status in probe.chunk_log if status == 2 and t + NS // 10 in by_stamp]
    assert len(held) >= 3
    for t in held[1:]:
        np.testing.assert_allclose(by_stamp[t + NS // 10], by_stamp[t], atol=1e-9)
    assert result["moving_ticks"] >= 40 and result["hold_ticks"] >= 30
