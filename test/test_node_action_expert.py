"""action_expert_node under sim time: the test owns /clock, the sensor stream and the VL features.

Everything is exact in sim time: ticks every 100 ms of /clock, VL ages = tick - feature stamp. Each hold
cause is provoked in turn and must give HOLD with its reason code, then recover to OK by itself.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_node_support import (  # noqa: F401
    NodeProcess,
    change_lifecycle_state,
    make_test_node,
    node_args,
    tiny_checkpoint,
)

S = 1_000_000_000
RATE = 650.0
STEP_NS = 20_000_000  # /clock step; one 13-sample sensor message per step, like the real driver


class SimDriver:
    """Publishes /clock, sensor samples and VLFeatures in sim time and collects the node's outputs."""

    def __init__(self, node, checkpoint_info: dict) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import TwistStamped
        from insertion_vla_msgs.msg import ActionChunk, ControllerStatus, SensorSamples, VLFeatures
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock
        from trajectory_msgs.msg import MultiDOFJointTrajectory

        from insertion_vla_ros.ros_io.qos import LATCHED_QOS

        self.node = node
        self.info = checkpoint_info
        self.now_ns = 1 * S
        self.sample_index = 0
        self.sensor_on = True
        self.sensor_nan = False
        self.force_n: float | None = None  # None: channel 0 is noise like the rest
        self.feature_sequence = 0
        self.clock_pub = node.create_publisher(Clock, "/clock", 10)
        reliable = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
        self.sensor_pub = node.create_publisher(SensorSamples, "/needle_sensor/samples", reliable)
        self.features_pub = node.create_publisher(VLFeatures, "/vla/vl_features", LATCHED_QOS)
        from geometry_msgs.msg import PoseStamped

        self.pose_pub = node.create_publisher(PoseStamped, "/robot/pose", 50)
        self.pose_on = True
        self.chunks, self.twists, self.trajectories, self.diagnostics = [], [], [], []
        node.create_subscription(ActionChunk, "/vla/action_chunk", self.chunks.append, reliable)
        node.create_subscription(TwistStamped, "/vla/servo_twist", self.twists.append, reliable)
        node.create_subscription(
            MultiDOFJointTrajectory, "/vla/trajectory", self.trajectories.append, reliable
        )
        node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        self.statuses = []
        node.create_subscription(ControllerStatus, "/action_expert_node/status", self.statuses.append, 10)
        self.rng = np.random.default_rng(0)
        self.features = self.rng.standard_normal((80, int(checkpoint_info["vl_hidden_size"]))).astype(
            np.float32
        )

    def publish_features(self, fingerprint: str | None = None) -> int:
        from insertion_vla_ros.ros_io.msg_conversions import vl_features_to_msg

        sequence = self.feature_sequence
        self.feature_sequence += 1
        self.features_pub.publish(
            vl_features_to_msg(
                self.features,
                stamp_ns=self.now_ns,
                sequence=sequence,
                camera_names=["view1"],
                image_stamps_ns=[self.now_ns],
                instruction="test",
                model_fingerprint=fingerprint or self.info["fingerprint"],
                inference_time_s=0.01,
            )
        )
        return sequence

    def advance(self, seconds: float, processes=()) -> None:
        """Advance sim time in 20 ms steps: sensor samples due by the new time first, then /clock."""
        from rosgraph_msgs.msg import Clock

        from insertion_vla_ros.ros_io.msg_conversions import sensor_samples_to_msg
        from insertion_vla_ros.ros_io.time_conversions import ns_to_stamp

        for _ in range(int(round(seconds * S / STEP_NS))):
            self.now_ns += STEP_NS
            due = int((self.now_ns - 1 * S) * RATE // S) + 1
            if due > self.sample_index:
                first, count = self.sample_index, due - self.sample_index
                self.sample_index = due
                if self.sensor_on:  # a stopped sensor loses these samples
                    data = self.rng.standard_normal((count, int(self.info["sensor_channels"]))).astype(
                        np.float32
                    )
                    if self.sensor_nan:
                        data[:, 5] = np.nan
                    if self.force_n is not None:
                        data[:, 0] = self.force_n
                    stamp = 1 * S + round(first * S / RATE)
                    self.sensor_pub.publish(
                        sensor_samples_to_msg(data, first_stamp_ns=stamp, sample_rate_hz=RATE)
                    )
            if self.pose_on:  # the tiny checkpoint takes the measured tip position as an input
                from geometry_msgs.msg import PoseStamped

                pose = PoseStamped()
                pose.header.stamp = ns_to_stamp(self.now_ns)
                pose.pose.position.z, pose.pose.orientation.w = 0.004, 1.0
                self.pose_pub.publish(pose)
            self.clock_pub.publish(Clock(clock=ns_to_stamp(self.now_ns)))
            self.node.test_executor.spin_once(timeout_sec=0.03)  # sim slower than real time: node slack
        for proc in processes:
            assert proc.process.poll() is None, proc.output()[-3000:]

    def chunks_since(self, stamp_ns: int):
        from insertion_vla_ros.ros_io.time_conversions import stamp_to_ns

        return [c for c in self.chunks if stamp_to_ns(c.header.stamp) > stamp_ns]


def reason_codes(chunks) -> list[str]:
    return [c.status_reason.split(":", 1)[0] if c.status else "ok" for c in chunks]


def run_until(driver, predicate, seconds: float, proc) -> bool:
    for _ in range(int(seconds / 0.1)):
        driver.advance(0.1, [proc])
        if predicate():
            return True
    return False


@pytest.mark.slow
def test_chunks_ages_holds_and_recovery_under_sim_time(ros_context, tiny_checkpoint, tmp_path):  # noqa: F811
    from insertion_vla_msgs.msg import ActionChunk
    from lifecycle_msgs.msg import Transition

    from insertion_vla_ros.nodes.policy_loading import checkpoint_info
    from insertion_vla_ros.ros_io.msg_conversions import action_chunk_from_msg
    from insertion_vla_ros.ros_io.time_conversions import stamp_to_ns

    info = checkpoint_info(str(tiny_checkpoint))
    proc = NodeProcess(
        "insertion_vla_ros.nodes.action_expert_node",
        node_args(
            tiny_checkpoint,
            "action_expert_node",
            use_sim_time=True,
            autostart=True,
            vl_max_age_s=1.0,
            sensor_max_age_s=0.1,
            output_twist=True,
            sensor_qos="reliable",
            output_trajectory=True,
            diagnostics_period_s=0.5,
        ),
        tmp_path,
    )
    node = make_test_node(ros_context, "sim_driver")
    driver = SimDriver(node, info)
    try:
        # start-up: keep the clock moving until the node ticks (model loading takes real seconds)
        assert run_until(driver, lambda: len(driver.chunks) >= 3, 600.0, proc), proc.output()[-3000:]

        # 1. no features yet -> WAITING, zero motion; wait until the sensor stream flows at the node
        def sensor_flowing():
            return bool(driver.statuses) and driver.statuses[-1].sensor_rate_hz > 0.9 * RATE

        assert run_until(driver, sensor_flowing, 30.0, proc)
        driver.advance(0.3, [proc])
        assert set(reason_codes(driver.chunks)) == {"no_vl_features"}
        assert all(c.status == ActionChunk.STATUS_WAITING and c.vl_sequence == 0 for c in driver.chunks)

        steady = len(driver.chunks)  # start-up is over: from here every 100 ms slot must get its tick

        # 2. features -> OK chunks with exact ages and the feature's sequence
        t_features = driver.now_ns
        seq = driver.publish_features()
        assert run_until(driver, lambda: any(c.status == 0 for c in driver.chunks), 5.0, proc), (
            [c.status_reason for c in driver.chunks[-60:]],
            [(round(st.sensor_rate_hz), st.dropped_samples) for st in driver.statuses[-10:]],
            proc.output()[-2000:],
        )
        driver.advance(0.5, [proc])
        ok = [c for c in driver.chunks_since(t_features) if c.status == ActionChunk.STATUS_OK]
        assert len(ok) >= 4, [c.status_reason for c in driver.chunks[-12:]]
        limits = np.array([2.0, 2.0, 2.0, 0.05, 0.05, 0.05, 1.0], np.float32)
        for chunk in ok:
            actions = action_chunk_from_msg(chunk)
            assert actions.shape == (8, 7) and chunk.horizon == 8
            assert list(chunk.action_names) == list(info["action_names"])
            assert np.isfinite(actions).all() and (np.abs(actions) <= limits + 1e-6).all()
            assert chunk.vl_sequence == seq
            assert chunk.vl_age_s == pytest.approx(
                (stamp_to_ns(chunk.header.stamp) - t_features) / S, abs=1e-6
            )
            assert chunk.inference_time_s > 0.0 and chunk.step_dt_s == pytest.approx(0.1)

        # 3. features age past vl_max_age_s -> HOLD stale; new features -> OK
        assert run_until(driver, lambda: reason_codes(driver.chunks)[-1] == "vl_features_stale", 3.0, proc)
        stale = [c for c in driver.chunks if c.status_reason.startswith("vl_features_stale")]
        assert all(c.vl_age_s > 1.0 for c in stale)
        seq = driver.publish_features()
        assert run_until(
            driver, lambda: driver.chunks[-1].status == 0 and driver.chunks[-1].vl_sequence == seq, 3.0, proc
        )

        # 4. features from another model -> HOLD fingerprint_mismatch; the right model again -> OK
        driver.publish_features(fingerprint="some-other-model")
        assert run_until(driver, lambda: reason_codes(driver.chunks)[-1] == "fingerprint_mismatch", 3.0, proc)
        driver.publish_features()
        assert run_until(driver, lambda: driver.chunks[-1].status == 0, 3.0, proc)

        # 5. NaN in the sensor stream -> HOLD sensor_window_nonfinite; clean samples -> OK
        driver.sensor_nan = True
        assert run_until(
            driver, lambda: reason_codes(driver.chunks)[-1] == "sensor_window_nonfinite", 3.0, proc
        )
        driver.sensor_nan = False
        driver.publish_features()
        assert run_until(driver, lambda: driver.chunks[-1].status == 0, 3.0, proc)

        # 6. sensor stops -> HOLD (stale window); sensor back -> OK (after the gap leaves the window)
        driver.sensor_on = False
        assert run_until(driver, lambda: reason_codes(driver.chunks)[-1] == "sensor_stale", 3.0, proc)
        driver.sensor_on = True
        driver.publish_features()
        assert run_until(driver, lambda: driver.chunks[-1].status == 0, 3.0, proc)

        # 7. robot pose stops -> HOLD robot_state_stale; pose back -> OK
        assert info["model_config"]["action_expert"]["state_dim"] == 3
        driver.pose_on = False
        assert run_until(driver, lambda: reason_codes(driver.chunks)[-1] == "robot_state_stale", 3.0, proc)
        driver.pose_on = True
        driver.publish_features()
        assert run_until(driver, lambda: driver.chunks[-1].status == 0, 3.0, proc)

        # 8. needle force at the force guard (default 2.4 N) -> HOLD force_over_limit; force drops -> OK
        driver.force_n = 2.6
        driver.publish_features()  # fresh features: the force, not their age, must be the reason
        assert run_until(driver, lambda: reason_codes(driver.chunks)[-1] == "force_over_limit", 3.0, proc)
        assert "2.60 N >= guard 2.40 N" in driver.chunks[-1].status_reason

        def force_holds_counted() -> bool:
            loops = [s for a in driver.diagnostics for s in a.status if s.name.endswith("control loop")]
            return bool(loops) and "holds: force_over_limit" in {kv.key for kv in loops[-1].values}

        assert run_until(driver, force_holds_counted, 3.0, proc)
        driver.force_n = 1.0
        driver.publish_features()
        assert run_until(driver, lambda: driver.chunks[-1].status == 0, 3.0, proc)

        # every HOLD/WAITING chunk commands zero motion; OK chunks are finite
        for chunk in driver.chunks:
            actions = action_chunk_from_msg(chunk)
            if chunk.status != ActionChunk.STATUS_OK:
                assert not actions.any() and chunk.status_reason
            else:
                assert chunk.status_reason == ""

        # ticks: one per 100 ms of /clock, sequences contiguous, stamps increasing
        sequences = [c.sequence for c in driver.chunks]
        assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))
        stamps = np.array([stamp_to_ns(c.header.stamp) for c in driver.chunks[steady:]])
        intervals = np.diff(stamps) / S
        # chunks are stamped with their slot on the 100 ms grid, so sim-time intervals are exact
        assert (intervals == 100_000_000 / S).all(), intervals

        # optional standard outputs: one twist and one trajectory per chunk, zero for holds
        assert len(driver.twists) >= len(driver.chunks) - 2
        assert len(driver.trajectories) >= len(driver.chunks) - 2
        assert len(driver.trajectories[-1].points) == 8
        by_stamp = {stamp_to_ns(t.header.stamp): t for t in driver.twists}
        for chunk in driver.chunks:
            twist = by_stamp.get(stamp_to_ns(chunk.header.stamp))
            if twist is not None and chunk.status != 0:
                assert twist.twist.linear.x == 0.0 and twist.twist.angular.z == 0.0
            if twist is not None and chunk.status == 0:
                assert twist.twist.linear.x == pytest.approx(
                    action_chunk_from_msg(chunk)[0, 0] / 1000 / 0.1, rel=1e-5
                )

        # diagnostics follow diagnostic_updater conventions
        statuses = {s.name: s for array in driver.diagnostics for s in array.status}
        loop = statuses["action_expert_node: control loop"]
        assert loop.hardware_id == "insertion_vla_action_expert"
        keys = {kv.key for kv in loop.values}
        assert {"Actual frequency (Hz)", "Target frequency (Hz)", "missed ticks"} <= keys
        assert "action_expert_node: sensor" in statuses and "action_expert_node: safety" in statuses
        sensor_values = {kv.key: kv.value for kv in statuses["action_expert_node: sensor"].values}
        assert sensor_values["robot poses rejected"] == "0"  # the state-input checkpoint reports its poses
        safety_values = {kv.key: kv.value for kv in statuses["action_expert_node: safety"].values}
        assert float(safety_values["force guard (N)"]) == pytest.approx(2.4)

        # 9. deactivate -> exactly one HOLD chunk, then silence while the clock keeps running
        count = len(driver.chunks)
        assert change_lifecycle_state(node, "action_expert_node", Transition.TRANSITION_DEACTIVATE)
        driver.advance(0.5, [proc])
        after = driver.chunks[count:]
        deactivated = [c for c in after if c.status_reason.startswith("deactivated")]
        assert len(deactivated) == 1 and deactivated[0].status == ActionChunk.STATUS_HOLD
        assert after[-1] is deactivated[0]  # nothing after it (a tick already in flight may precede it)
        assert len(after) <= 2
        assert change_lifecycle_state(node, "action_expert_node", Transition.TRANSITION_ACTIVATE)
        assert run_until(driver, lambda: len(driver.chunks) > count + 3, 3.0, proc)
        # the outage shows up in the sensor diagnostics as lost (gap) samples
        sensor = [
            s for array in driver.diagnostics for s in array.status if s.name == "action_expert_node: sensor"
        ]
        assert int({kv.key: kv.value for kv in sensor[-1].values}["gap samples"]) > 0
    finally:
        node.destroy_node()
        code = proc.stop()
    output = proc.output()
    assert code == 0, output[-3000:]
    assert "Traceback" not in output
