"""One controller everywhere: the in-process loop, evaluate and the node over DDS judge every tick alike.

A sim episode runs in the in-process loop (``tools.sim_loop``) and records what its controller got
(sensor, poses, frames, the features and when they became usable). ``evaluate`` replays the recording;
then the same inputs go over real DDS, in sim time, to an action_expert_node process. All three must
produce the same decisions (status and reason code) and the same chunks, tick by tick.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_node_support import (  # noqa: F401
    NodeProcess,
    change_lifecycle_state,
    make_test_node,
    node_args,
    spin_until,
    tiny_checkpoint,  # noqa: F401
)

S = 1_000_000_000
LATENCY_S, PERIOD_S, MAX_AGE_S = 0.3, 0.5, 0.6  # ages 0.3 .. 0.8 s: OK ticks, then stale HOLDs


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory, tiny_checkpoint):  # noqa: F811
    from contracts.episode import EpisodeWriter
    from insertion_vla_ros.tools.sim_loop import ClosedLoopRunner, LoopConfig
    from models.checkpoint import load_checkpoint
    from sim.config import RigConfig, instruction_for
    from sim.rig import InsertionRig

    policy = load_checkpoint(tiny_checkpoint, load_vlm=True).eval()
    rig = InsertionRig(RigConfig().with_image_size(112, 112), seed=9)
    config = LoopConfig(
        vlm_latency_s=LATENCY_S, vlm_period_s=PERIOD_S, max_age_s=MAX_AGE_S, max_episode_s=2.5
    )
    root = tmp_path_factory.mktemp("agreement")
    writer = EpisodeWriter(root / "episode", instruction_for("Red"), list(rig.camera_names))
    runner = ClosedLoopRunner(rig, policy, config)
    runner.run("Red", 31, recorders=[writer])
    writer.close()
    return policy, runner.last_trace, root / "episode", rig.start_ns


def _codes(decisions) -> list[tuple[int, str]]:
    return [(int(status), reason.split(":", 1)[0]) for status, reason in decisions]


def test_the_loop_trace_has_waiting_ok_and_hold_ticks(recorded_run):
    _, trace, _, _ = recorded_run
    codes = {code for _, code in _codes((t.decision.status, t.decision.reason) for t in trace.ticks)}
    assert {"", "no_vl_features", "vl_features_stale"} <= codes, codes


def test_evaluate_replays_the_loop_tick_by_tick(recorded_run):
    from insertion_vla_ros.tools.evaluate import evaluate_episode

    policy, trace, episode, start_ns = recorded_run
    used = {result.capture_ns: result.features for result in trace.features}
    run = evaluate_episode(
        episode,
        policy,
        LATENCY_S,
        PERIOD_S,
        max_age_s=MAX_AGE_S,
        first_tick_ns=start_ns,
        features_at=lambda start: (start, used[start]) if start in used else None,
    )
    replayed = {tick["tick_ns"]: tick for tick in run["ticks"]}
    compared = 0
    for tick in trace.ticks:
        if tick.tick_ns not in replayed:  # evaluate stops a horizon before the recording ends
            continue
        other = replayed[tick.tick_ns]
        assert (int(tick.decision.status), tick.decision.reason) == (other["status"], other["reason"])
        np.testing.assert_allclose(other["actions"], tick.actions, atol=1e-6)
        compared += 1
    assert compared >= 15


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_node_over_dds_takes_the_same_decisions(ros_context, recorded_run, tiny_checkpoint, tmp_path):  # noqa: F811
    from geometry_msgs.msg import PoseStamped
    from insertion_vla_msgs.msg import ActionChunk, SensorSamples, VLFeatures
    from lifecycle_msgs.msg import Transition
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock

    from contracts import topics
    from contracts.episode import Episode
    from insertion_vla_ros.ros_io.msg_conversions import sensor_samples_to_msg, vl_features_to_msg
    from insertion_vla_ros.ros_io.qos import LATCHED_QOS
    from insertion_vla_ros.ros_io.time_conversions import ns_to_stamp, stamp_to_ns
    from models.pose_math import rotvec_to_quaternion

    policy, trace, episode_dir, start_ns = recorded_run
    episode = Episode(episode_dir)
    sensor_stamps, sensor = np.asarray(episode.sensor_stamps_ns), np.asarray(episode.sensor)
    pose_stamps, poses = np.asarray(episode.pose_stamps_ns), np.asarray(episode.pose)
    node_proc = NodeProcess(
        "insertion_vla_ros.nodes.action_expert_node",
        node_args(tiny_checkpoint, "action_expert_node", use_sim_time=True, vl_max_age_s=MAX_AGE_S),
        tmp_path,
    )
    node = make_test_node(ros_context, "agreement_driver")
    reliable = QoSProfile(depth=500, reliability=ReliabilityPolicy.RELIABLE)
    clock_pub = node.create_publisher(Clock, topics.CLOCK_TOPIC, 10)
    sensor_pub = node.create_publisher(SensorSamples, topics.SENSOR_TOPIC, reliable)
    pose_pub = node.create_publisher(PoseStamped, topics.POSE_TOPIC, reliable)
    features_pub = node.create_publisher(VLFeatures, topics.FEATURES_TOPIC, LATCHED_QOS)
    chunks: dict[int, ActionChunk] = {}
    node.create_subscription(
        ActionChunk, topics.CHUNK_TOPIC, lambda m: chunks.setdefault(stamp_to_ns(m.header.stamp), m), reliable
    )

    def clock(t_ns: int) -> None:
        clock_pub.publish(Clock(clock=ns_to_stamp(t_ns)))
        spin_until(node, lambda: False, 0.05, [node_proc])

    try:
        grid0 = start_ns - 5 * S // 10  # the node's timer grid is anchored at its creation time: on ours
        assert spin_until(node, lambda: node.count_subscribers(topics.CLOCK_TOPIC) > 0, 120.0, [node_proc])
        clock(grid0)
        for transition in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
            clock(grid0)  # the clock stands still while the node configures
            assert change_lifecycle_state(node, "action_expert_node", transition, timeout=120.0)
        sent_sensor = sent_pose = 0
        previous = grid0
        for tick in trace.ticks:
            t = tick.tick_ns
            end = int(np.searchsorted(sensor_stamps, t, side="right"))
            for first in range(sent_sensor, end, 13):
                last = min(first + 13, end)
                sensor_pub.publish(
                    sensor_samples_to_msg(
                        sensor[first:last], first_stamp_ns=int(sensor_stamps[first]), sample_rate_hz=650.0
                    )
                )
            sent_sensor = max(sent_sensor, end)
            end = int(np.searchsorted(pose_stamps, t, side="right"))
            for i in range(sent_pose, end):
                msg = PoseStamped()
                msg.header.stamp = ns_to_stamp(int(pose_stamps[i]))
                p, q = poses[i, 0:3] / 1000.0, rotvec_to_quaternion(poses[i, 3:6])
                msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in p)
                o = msg.pose.orientation
                o.x, o.y, o.z, o.w = (float(v) for v in q)
                pose_pub.publish(msg)
            sent_pose = max(sent_pose, end)
            for result in trace.features:
                if previous < result.ready_ns <= t:
                    features_pub.publish(
                        vl_features_to_msg(
                            result.features,
                            stamp_ns=result.capture_ns,
                            sequence=result.sequence,
                            camera_names=list(episode.cameras),
                            image_stamps_ns=[result.capture_ns] * len(episode.cameras),
                            instruction=episode.instruction,
                            model_fingerprint=policy.fingerprint,
                            inference_time_s=LATENCY_S,
                        )
                    )
            spin_until(node, lambda: False, 0.3, [node_proc])  # the node stores (and encodes) them
            clock(t - S // 20)
            clock(t)
            assert spin_until(node, lambda t=t: t in chunks, 30.0, [node_proc]), f"no chunk for tick {t}"
            previous = t
    finally:
        code = node_proc.stop()
    assert code == 0, node_proc.output()[-3000:]
    for tick in trace.ticks:
        msg = chunks[tick.tick_ns]
        code = msg.status_reason.split(":", 1)[0]
        assert (int(msg.status), code) == (int(tick.decision.status), tick.decision.code), (
            tick.tick_ns,
            msg.status_reason,
        )
        np.testing.assert_allclose(
            np.asarray(msg.actions).reshape(tick.actions.shape), tick.actions, atol=1e-5
        )
