"""Faults where the controller used to command the robot from bad data, reproduced over real DDS.

Each case was observed on a1b0509 (issue 16) and is checked here against the nodes as processes: clock
jumps back and forward, a sensor at the wrong rate, every way the action expert can stop, a dead
vlm_node under bringup, a misspelt parameter, a checkpoint that cannot be loaded, and a vlm_node
deactivated while an inference is pending.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest
from test_node_support import (  # noqa: F401
    CONFIG,
    NodeProcess,
    change_lifecycle_state,
    make_test_node,
    node_args,
    set_remote_parameters,
    spin_until,
    tiny_checkpoint,
)

S = 1_000_000_000
RATE = 650.0
STEP_NS = 20_000_000


class FaultDriver:
    """Owns /clock, the sensor stream, the pose and the VL features; collects the node's outputs."""

    def __init__(self, node, info: dict) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped, TwistStamped
        from insertion_vla_msgs.msg import ActionChunk, SensorSamples, VLFeatures
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock

        from contracts import topics
        from insertion_vla_ros.ros_io.qos import LATCHED_QOS

        self.node, self.info = node, info
        self.now_ns = 100 * S  # room for a 10 s jump back
        self.origin_ns, self.sample_index = self.now_ns, 0  # the sensor stream: origin + i / rate
        self.rate, self.declared_rate = RATE, RATE
        self.force_n = 1.0
        self.sequence = 0
        self.pose_fn = None  # t_ns -> 7-D pose (mm); None: a fixed pose 4 mm above the surface
        self.poses_per_step = 1
        self.sent_poses: list[int] = []
        self.sensor_history: dict[int, np.ndarray] = {}  # sample index (of the current stream) -> row
        reliable = QoSProfile(depth=500, reliability=ReliabilityPolicy.RELIABLE)
        self.clock_pub = node.create_publisher(Clock, topics.CLOCK_TOPIC, 10)
        self.sensor_pub = node.create_publisher(SensorSamples, topics.SENSOR_TOPIC, reliable)
        self.pose_pub = node.create_publisher(PoseStamped, topics.POSE_TOPIC, reliable)
        self.features_pub = node.create_publisher(VLFeatures, topics.FEATURES_TOPIC, LATCHED_QOS)
        self.chunks, self.twists, self.diagnostics = [], [], []
        node.create_subscription(ActionChunk, topics.CHUNK_TOPIC, self.chunks.append, reliable)
        node.create_subscription(TwistStamped, topics.TWIST_TOPIC, self.twists.append, reliable)
        node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS_TOPIC, self.diagnostics.append, 50)
        self.rng = np.random.default_rng(0)
        self.features = self.rng.standard_normal((80, int(info["vl_hidden_size"]))).astype(np.float32)

    def publish_features(self) -> None:
        from insertion_vla_ros.ros_io.msg_conversions import vl_features_to_msg

        self.sequence += 1
        self.features_pub.publish(
            vl_features_to_msg(
                self.features,
                stamp_ns=self.now_ns,
                sequence=self.sequence,
                camera_names=["view1"],
                image_stamps_ns=[self.now_ns],
                instruction="test",
                model_fingerprint=self.info["fingerprint"],
                inference_time_s=0.01,
            )
        )

    def clock_stamp(self):
        from insertion_vla_ros.ros_io.time_conversions import ns_to_stamp

        return ns_to_stamp(self.now_ns)

    def jump(self, seconds: float) -> None:
        """The clock (and with it the sensor stream, as after a sim reset) jumps by ``seconds``."""
        self.now_ns += int(seconds * S)
        self.origin_ns, self.sample_index = self.now_ns, 0
        self.step()

    def step(self) -> None:
        from geometry_msgs.msg import PoseStamped
        from rosgraph_msgs.msg import Clock

        from insertion_vla_ros.ros_io.msg_conversions import sensor_samples_to_msg
        from insertion_vla_ros.ros_io.time_conversions import ns_to_stamp

        due = int((self.now_ns - self.origin_ns) * self.rate // S) + 1
        if due > self.sample_index:
            count = due - self.sample_index
            data = self.rng.standard_normal((count, int(self.info["sensor_channels"]))).astype(np.float32)
            data[:, 0] = self.force_n
            stamp = self.origin_ns + round(self.sample_index * S / self.rate)
            for i, row in enumerate(data):
                self.sensor_history[self.sample_index + i] = row
            self.sample_index = due
            self.sensor_pub.publish(
                sensor_samples_to_msg(data, first_stamp_ns=stamp, sample_rate_hz=self.declared_rate)
            )
        for j in range(self.poses_per_step):
            stamp = self.now_ns - (self.poses_per_step - 1 - j) * STEP_NS // self.poses_per_step
            pose = PoseStamped()
            pose.header.stamp = ns_to_stamp(stamp)
            x, y, z = (self.pose_fn(stamp)[:3] / 1000.0) if self.pose_fn else (0.0, 0.0, 0.004)
            pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = float(x), float(y), float(z)
            pose.pose.orientation.w = 1.0
            self.pose_pub.publish(pose)
            self.sent_poses.append(stamp)
        self.clock_pub.publish(Clock(clock=ns_to_stamp(self.now_ns)))
        self.node.test_executor.spin_once(timeout_sec=0.03)

    def recorded_sensor(self, first: int, count: int) -> np.ndarray:
        """Rows ``first .. first + count - 1`` of the current sensor stream, as published."""
        return np.stack([self.sensor_history[i] for i in range(first, first + count)])

    def advance(self, seconds: float, proc) -> None:
        for _ in range(int(round(seconds * S / STEP_NS))):
            self.now_ns += STEP_NS
            self.step()
        assert proc.process.poll() is None, proc.output()[-3000:]

    def run_until(self, predicate, seconds: float, proc) -> bool:
        for _ in range(int(seconds / 0.1)):
            self.advance(0.1, proc)
            if predicate():
                return True
        return False

    def codes_since(self, index: int) -> list[str]:
        return [c.status_reason.split(":", 1)[0] if c.status else "ok" for c in self.chunks[index:]]

    def task(self, suffix: str):
        tasks = [s for a in self.diagnostics for s in a.status if s.name.endswith(suffix)]
        return tasks[-1] if tasks else None

    def values(self, suffix: str) -> dict[str, str]:
        task = self.task(suffix)
        return {kv.key: kv.value for kv in task.values} if task else {}


def _start_expert(tiny_checkpoint, tmp_path, **params):  # noqa: F811
    args = dict(
        use_sim_time=True, autostart=True, sensor_qos="reliable", vl_max_age_s=3.0, diagnostics_period_s=0.5
    )
    args.update(params)
    return NodeProcess(
        "insertion_vla_ros.nodes.action_expert_node",
        node_args(tiny_checkpoint, "action_expert_node", **args),
        tmp_path,
    )


def _running(driver, proc) -> None:
    assert driver.run_until(lambda: len(driver.chunks) >= 3, 600.0, proc), proc.output()[-3000:]
    driver.publish_features()
    assert driver.run_until(lambda: driver.chunks[-1].status == 0, 10.0, proc), driver.codes_since(-20)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_clock_jumps_and_a_sensor_at_another_rate(ros_context, tiny_checkpoint, tmp_path):  # noqa: F811
    from insertion_vla_ros.nodes.policy_loading import checkpoint_info

    proc = _start_expert(tiny_checkpoint, tmp_path)
    node = make_test_node(ros_context, "fault_driver")
    driver = FaultDriver(node, checkpoint_info(str(tiny_checkpoint)))
    try:
        _running(driver, proc)

        # 1. back 1.2 s (a sim reset) while the force is 3 N: never an OK chunk from the old window
        driver.advance(0.5, proc)
        mark = len(driver.chunks)
        driver.force_n = 3.0
        driver.jump(-1.2)
        driver.advance(1.5, proc)
        codes = driver.codes_since(mark)
        assert "ok" not in codes, codes
        assert codes[0] == "time_jump_back" or codes[1] == "time_jump_back", codes
        driver.publish_features()  # captured after the jump: now the force is the reason
        driver.advance(0.3, proc)
        assert driver.codes_since(len(driver.chunks) - 1) == ["force_over_limit"]
        driver.force_n = 1.0
        assert driver.run_until(lambda: driver.chunks[-1].status == 0, 3.0, proc)

        # 2. back 10 s (replay --loop): HOLD until one VLM result after the jump, then OK at once
        mark = len(driver.chunks)
        driver.jump(-10.0)
        driver.advance(1.0, proc)
        assert set(driver.codes_since(mark)) == {"time_jump_back"}, driver.codes_since(mark)
        driver.publish_features()
        assert driver.run_until(lambda: driver.chunks[-1].status == 0, 0.4, proc), driver.codes_since(mark)

        # 3. forward 10 s: a jump, not 100 missed ticks and 6500 lost samples
        driver.advance(1.0, proc)
        before = driver.values("control loop"), driver.values("sensor")
        driver.jump(10.0)
        driver.publish_features()
        driver.advance(2.0, proc)
        loop, sensor = driver.values("control loop"), driver.values("sensor")
        assert int(loop["missed ticks"]) - int(before[0]["missed ticks"]) <= 1, loop
        assert int(loop["clock jumps forward"]) == int(before[0]["clock jumps forward"]) + 1, loop
        assert int(sensor["gap samples"]) == int(before[1]["gap samples"]), sensor
        assert driver.chunks[-1].status == 0

        # 4. the sensor (and its messages) at 1000 Hz: HOLD with both rates, diagnostics ERROR
        driver.rate = driver.declared_rate = 1000.0
        assert driver.run_until(
            lambda: driver.codes_since(len(driver.chunks) - 1) == ["sensor_rate_mismatch"], 3.0, proc
        )
        reason = driver.chunks[-1].status_reason
        assert "1000 Hz" in reason and "650 Hz" in reason, reason
        driver.advance(1.0, proc)
        assert driver.task("sensor").level == b"\x02", driver.task("sensor").message
    finally:
        node.destroy_node()
        code = proc.stop()
    assert code == 0, proc.output()[-3000:]


FATAL_NODE = """
import sys
from insertion_vla_ros.nodes import action_expert_node as ae
from insertion_vla_ros.nodes.node_main import run_lifecycle_node

class Failing(ae.ActionExpertNode):
    ticks = 0
    def _on_tick(self):
        super()._on_tick()
        Failing.ticks += self.controller is not None and bool(self.controller.stats.ok_ticks)
        if Failing.ticks > 3:
            raise RuntimeError("a bug in a callback")

sys.exit(run_lifecycle_node(Failing, sys.argv[1:]))
"""

# SIGTERM handled while Python runs a __del__ (rclpy's Future.__del__ runs after every callback): an exception
# raised by the handler there is dropped ("Exception ignored in ..."), and the node went on commanding.
FINALIZER_SIGNAL_NODE = """
import os, signal, sys
from insertion_vla_ros.nodes import action_expert_node as ae
from insertion_vla_ros.nodes.node_main import run_lifecycle_node

class SignalInFinalizer:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # bytecode, so that the handler runs here, inside the finalizer
            pass

class Signalled(ae.ActionExpertNode):
    ticks = 0
    def _on_tick(self):
        super()._on_tick()
        Signalled.ticks += self.controller is not None and bool(self.controller.stats.ok_ticks)
        if Signalled.ticks == 4:
            SignalInFinalizer()

sys.exit(run_lifecycle_node(Signalled, sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "how", ["SIGINT", "SIGTERM", "SIGTERM inside a finalizer", "shutdown transition", "fatal exception"]
)
def test_the_last_chunk_is_a_shutdown_hold_however_the_node_stops(
    ros_context,
    tiny_checkpoint,  # noqa: F811
    tmp_path,
    how,
):
    from lifecycle_msgs.msg import Transition

    from insertion_vla_ros.nodes.policy_loading import checkpoint_info

    node_sources = {"fatal exception": FATAL_NODE, "SIGTERM inside a finalizer": FINALIZER_SIGNAL_NODE}
    if how in node_sources:  # an action expert whose tick raises / signals itself once it is commanding
        (tmp_path / "custom_node.py").write_text(node_sources[how])
        args = node_args(
            tiny_checkpoint, "action_expert_node", use_sim_time=True, autostart=True, output_twist=True
        )
        python_path = f"{tmp_path}:{__import__('os').environ.get('PYTHONPATH', '')}"
        proc = NodeProcess("custom_node", args, tmp_path, extra_env={"PYTHONPATH": python_path})
    else:
        proc = _start_expert(tiny_checkpoint, tmp_path, output_twist=True)
    node = make_test_node(ros_context, "stop_driver")
    driver = FaultDriver(node, checkpoint_info(str(tiny_checkpoint)))
    try:
        _running(driver, proc)
        if how not in node_sources:
            driver.advance(0.5, proc)
        if how in ("SIGINT", "SIGTERM"):
            proc.process.send_signal(getattr(signal, how))
        elif how == "shutdown transition":
            change_lifecycle_state(node, "action_expert_node", Transition.TRANSITION_ACTIVE_SHUTDOWN)
        for _ in range(100):  # keep the clock going until the process is gone
            driver.now_ns += STEP_NS
            driver.step()
            if proc.process.poll() is not None and how != "shutdown transition":
                break
        spin_until(node, lambda: False, 1.0)
    finally:
        node.destroy_node()
        code = proc.stop()
    last = driver.chunks[-1]
    assert last.status == 2 and last.status_reason.startswith("shutdown"), (how, last.status_reason)
    assert not np.asarray(last.actions).any()
    assert (
        driver.twists and driver.twists[-1].twist.linear.z == 0.0 and driver.twists[-1].twist.linear.x == 0.0
    )
    if how == "fatal exception":
        assert code == 1 and "a bug in a callback" in last.status_reason, proc.output()[-2000:]
    else:
        assert code == 0, proc.output()[-3000:]
    if how.startswith("SIG"):
        assert last.status_reason == f"shutdown: {how.split()[0]}", last.status_reason


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_misspelt_parameter_fails_configure_with_the_closest_name(tmp_path, tiny_checkpoint):  # noqa: F811
    params = tmp_path / "params.yaml"
    params.write_text(CONFIG.read_text().replace("    force_guard_n: 2.4\n", "    force_gaurd_n: 0.5\n"))
    bringup = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "insertion_vla_ros.tools.bringup",
            "--params-file",
            str(params),
            "--checkpoint",
            str(tiny_checkpoint),
            "--autostart",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    for line in bringup.stderr:  # the action expert fails configure and bringup reports it
        lines.append(line)
        if "bringup: action_expert_node exited" in line:
            break
    bringup.send_signal(signal.SIGINT)
    lines += bringup.stderr.readlines()
    assert bringup.wait(timeout=120) == 1
    text = "".join(lines)
    assert "'force_gaurd_n' (did you mean 'force_guard_n'?)" in text, text[-3000:]
    assert "nodes that died: action_expert_node" in text


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_bad_checkpoint_fails_configure_and_another_one_loads(ros_context, tiny_checkpoint, tmp_path):  # noqa: F811
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import GetState

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{ not json")
    proc = NodeProcess(
        "insertion_vla_ros.nodes.action_expert_node",
        [*node_args(corrupt, "action_expert_node", use_sim_time=True)],
        tmp_path,
    )
    node = make_test_node(ros_context, "checkpoint_driver")
    try:
        client = node.create_client(GetState, "/action_expert_node/get_state")
        assert client.wait_for_service(timeout_sec=120.0), proc.output()[-3000:]
        assert not change_lifecycle_state(node, "action_expert_node", Transition.TRANSITION_CONFIGURE)
        future = client.call_async(GetState.Request())
        node.test_executor.spin_until_future_complete(future, timeout_sec=10.0)
        assert future.result().current_state.label == "unconfigured"
        assert proc.process.poll() is None  # the process stays up
        set_remote_parameters(node, "action_expert_node", checkpoint=str(tiny_checkpoint))
        assert change_lifecycle_state(
            node, "action_expert_node", Transition.TRANSITION_CONFIGURE, timeout=120.0
        )
    finally:
        node.destroy_node()
        code = proc.stop()
    output = proc.output()
    assert code == 0 and "is not valid JSON" in output, output[-3000:]


def _pids(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in out]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bringup_keeps_the_action_expert_when_the_vlm_dies_and_respawns_it(
    ros_context,
    tiny_checkpoint,  # noqa: F811
    tmp_path,
):
    import os

    from insertion_vla_msgs.msg import ActionChunk, VLFeatures

    from contracts import topics
    from insertion_vla_ros.ros_io.qos import LATCHED_QOS, RELIABLE_QOS

    rig = NodeProcess(
        "insertion_vla_ros.testing.synthetic_inputs", ["-p", "camera_rate_hz:=10.0"], tmp_path, name="rig"
    )
    bringup = NodeProcess(
        "insertion_vla_ros.tools.bringup",
        [],
        tmp_path,
        argv=[
            "--params-file", str(CONFIG), "--checkpoint", str(tiny_checkpoint), "--autostart",
            "--respawn", "--respawn-delay", "3.0", "--vlm-param", "vlm_period_s:=0.5",
        ],
    )  # fmt: skip
    node = make_test_node(ros_context, "respawn_observer")
    chunks, features = [], []
    node.create_subscription(ActionChunk, topics.CHUNK_TOPIC, chunks.append, RELIABLE_QOS)
    node.create_subscription(VLFeatures, topics.FEATURES_TOPIC, features.append, LATCHED_QOS)
    procs = [rig, bringup]
    try:
        assert spin_until(node, lambda: any(c.status == 0 for c in chunks), 600.0, procs), bringup.output()[
            -3000:
        ]
        (vlm_pid,) = _pids(f"insertion_vla_ros.nodes.vlm_node.*{tiny_checkpoint}")
        os.kill(vlm_pid, signal.SIGKILL)
        killed_at, seen = len(chunks), len(features)
        # the action expert keeps ticking: features age until it holds, then the respawned VLM brings it back
        assert spin_until(
            node,
            lambda: any(c.status_reason.startswith("vl_features_stale") for c in chunks[killed_at:]),
            60.0,
            procs,
        )
        assert spin_until(node, lambda: len(features) > seen and chunks[-1].status == 0, 600.0, procs), (
            bringup.output()[-3000:]
        )
        sequences = [c.sequence for c in chunks[killed_at:]]
        assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))  # never stopped
    finally:
        node.destroy_node()
        code = bringup.stop(timeout=60.0)
        rig.stop()
    output = bringup.output()
    assert "vlm_node exited with code -9; restarting it in 3 s" in output, output[-3000:]
    assert code == 1 and "nodes that died: vlm_node (1x" in output


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_deactivated_vlm_node_publishes_nothing_not_even_its_pending_inference(
    ros_context,
    tiny_checkpoint,  # noqa: F811
    tmp_path,
):
    from insertion_vla_msgs.msg import VLFeatures
    from lifecycle_msgs.msg import Transition

    from contracts import topics
    from insertion_vla_ros.ros_io.qos import LATCHED_QOS

    rig = NodeProcess(
        "insertion_vla_ros.testing.synthetic_inputs", ["-p", "camera_rate_hz:=10.0"], tmp_path, name="rig"
    )
    vlm = NodeProcess(
        "insertion_vla_ros.nodes.vlm_node",
        node_args(tiny_checkpoint, "vlm_node", autostart=True, vlm_period_s=0.3, inject_latency_s=1.0),
        tmp_path,
    )
    node = make_test_node(ros_context, "deactivate_observer")
    features = []
    node.create_subscription(VLFeatures, topics.FEATURES_TOPIC, features.append, LATCHED_QOS)
    try:
        assert spin_until(node, lambda: len(features) >= 2, 600.0, [rig, vlm]), vlm.output()[-3000:]
        # an inference is running (1 s each, requested every 0.3 s: one is always pending too)
        assert change_lifecycle_state(node, "vlm_node", Transition.TRANSITION_DEACTIVATE)
        count = len(features)
        spin_until(node, lambda: False, 3.0, [rig, vlm])  # both the running and the pending one would end
        assert len(features) == count, "features published while inactive"
    finally:
        node.destroy_node()
        code = vlm.stop()
        rig.stop()
    assert code == 0, vlm.output()[-3000:]


def _level(task) -> int:
    return task.level[0] if isinstance(task.level, bytes) else int(task.level)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_diagnostics_say_what_is_wrong_with_the_features(
    ros_context,
    tiny_checkpoint,  # noqa: F811
    tmp_path,
):
    from insertion_vla_msgs.msg import VLFeatures

    from insertion_vla_ros.nodes.policy_loading import checkpoint_info

    proc = _start_expert(tiny_checkpoint, tmp_path, vl_max_age_s=1.0)
    node = make_test_node(ros_context, "diagnostics_driver")
    driver = FaultDriver(node, checkpoint_info(str(tiny_checkpoint)))
    try:
        _running(driver, proc)
        assert driver.run_until(lambda: _level(driver.task("vl features")) == 0, 3.0, proc)
        # stale features: WARN, not OK
        assert driver.run_until(lambda: _level(driver.task("vl features")) == 1, 4.0, proc)
        assert "vl_features_stale" in driver.task("vl features").message
        # every new message is rejected (a payload that does not match its shape): ERROR with the error
        bad = VLFeatures(model_fingerprint=driver.info["fingerprint"], sequence=99)
        bad.header.stamp = driver.clock_stamp()
        bad.shape, bad.dtype = [80, 64], "float32"
        bad.data = b"\x00" * 12
        driver.features_pub.publish(bad)
        assert driver.run_until(lambda: _level(driver.task("vl features")) == 2, 3.0, proc)
        assert "rejected" in driver.task("vl features").message
        driver.publish_features()  # good features again: OK
        assert driver.run_until(lambda: _level(driver.task("vl features")) == 0, 3.0, proc)
    finally:
        node.destroy_node()
        code = proc.stop()
    assert code == 0, proc.output()[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_vlm_node_reports_failing_camera_sets_not_a_met_frequency(
    ros_context,
    tiny_checkpoint,  # noqa: F811
    tmp_path,
):
    from diagnostic_msgs.msg import DiagnosticArray

    from contracts import topics

    rig = NodeProcess(
        "insertion_vla_ros.testing.synthetic_inputs", ["-p", "camera_rate_hz:=10.0"], tmp_path, name="rig"
    )
    vlm = NodeProcess(
        "insertion_vla_ros.nodes.vlm_node",
        node_args(tiny_checkpoint, "vlm_node", autostart=True, vlm_period_s=0.3, diagnostics_period_s=0.5),
        tmp_path,
    )
    node = make_test_node(ros_context, "vlm_diagnostics")
    arrays = []
    node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS_TOPIC, arrays.append, 50)

    def features_task():
        tasks = [s for a in arrays for s in a.status if s.name == "vlm_node: vl features"]
        return tasks[-1] if tasks else None

    try:
        assert spin_until(
            node, lambda: features_task() is not None and _level(features_task()) == 0, 600.0, [rig, vlm]
        )
        set_remote_parameters(node, "synthetic_inputs", corrupt_images=True)
        assert spin_until(node, lambda: _level(features_task()) == 2, 30.0, [rig, vlm])
        assert "image decode" in features_task().message
        set_remote_parameters(node, "synthetic_inputs", corrupt_images=False)
        assert spin_until(node, lambda: _level(features_task()) == 0, 30.0, [rig, vlm])
    finally:
        node.destroy_node()
        vlm.stop()
        rig.stop()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_motion_input_uses_the_pose_at_the_features_capture(ros_context, tmp_path):
    from insertion_vla_ros.nodes.policy_loading import checkpoint_info
    from insertion_vla_ros.ros_io.msg_conversions import action_chunk_from_msg, vl_features_to_msg
    from insertion_vla_ros.ros_io.time_conversions import stamp_to_ns
    from insertion_vla_ros.runtime.controller import ControllerSettings, TickController
    from insertion_vla_ros.runtime.hold_policy import FeatureInfo
    from insertion_vla_ros.testing.tiny_checkpoint import build_tiny_checkpoint
    from models.checkpoint import load_checkpoint

    checkpoint = build_tiny_checkpoint(tmp_path / "model", motion_input=True)
    proc = _start_expert(checkpoint, tmp_path)
    node = make_test_node(ros_context, "motion_driver")
    driver = FaultDriver(node, checkpoint_info(str(checkpoint)))

    def pose_at(t_ns: int) -> np.ndarray:  # a known trajectory: 3 mm/s along x, 1 mm/s down
        t = (t_ns - 100 * S) / S
        return np.array([3.0 * t, 0.5, 4.0 - 1.0 * t, 0.0, 0.0, 0.0, 1.0])

    driver.pose_fn = pose_at
    try:
        assert driver.run_until(lambda: len(driver.chunks) >= 3, 600.0, proc), proc.output()[-3000:]
        capture = driver.now_ns
        driver.publish_features()
        assert driver.run_until(lambda: driver.chunks[-1].status == 0, 10.0, proc), driver.codes_since(-10)
        driver.advance(0.8, proc)  # the robot moves on while the feature ages
        ok = [c for c in driver.chunks if c.status == 0 and stamp_to_ns(c.header.stamp) - capture > S // 2]
        assert ok
        chunk = ok[-1]
        # the same ticks through the controller (from the first OK one, where the safety layer starts from
        # rest), with the motion from the pose at the capture stamp
        policy = load_checkpoint(checkpoint)
        controller = TickController(policy, ControllerSettings.from_policy(policy, vl_max_age_s=3.0))
        controller.add_features(FeatureInfo(driver.sequence, capture, policy.fingerprint), driver.features)
        first_ok = next(c for c in driver.chunks if c.status == 0 and stamp_to_ns(c.header.stamp) >= capture)
        ticks = [stamp_to_ns(c.header.stamp) for c in driver.chunks]
        ticks = [
            t for t in ticks if stamp_to_ns(first_ok.header.stamp) <= t <= stamp_to_ns(chunk.header.stamp)
        ]
        fed_samples = fed_poses = 0
        for tick in ticks:
            last = int((tick - driver.origin_ns) * RATE // S)  # the newest sample stamped at or before it
            rows = driver.recorded_sensor(fed_samples, last + 1 - fed_samples)
            stamps = driver.origin_ns + np.round((fed_samples + np.arange(len(rows))) * S / RATE).astype(
                np.int64
            )
            controller.add_sensor(stamps, rows, declared_rate_hz=RATE)
            fed_samples = last + 1
            for stamp in driver.sent_poses[fed_poses:]:
                if stamp > tick:
                    break
                controller.add_pose(stamp, pose_at(stamp))
                fed_poses += 1
            expected = controller.step(tick)
            assert expected.ok, expected.decision.reason
        np.testing.assert_allclose(action_chunk_from_msg(chunk), expected.actions, atol=1e-4)
        rows = driver.recorded_sensor(fed_samples - 65, 65)
        # the motion matters: with the robot still since the capture the chunk would differ
        encoded = policy.encode_vl_features(driver.features)
        still = policy.predict_actions(
            encoded, rows, chunk.vl_age_s, robot_state=pose_at(tick), motion=np.zeros(6)
        )
        assert np.abs(still.numpy() - expected.actions).max() > 1e-4

        # a pose buffer that no longer reaches back to the capture: the motion is unknown, so it holds
        driver.poses_per_step = 12  # ~600 poses a second: the buffer covers less than a second
        driver.advance(1.2, proc)
        old = driver.now_ns - 2 * S
        message = vl_features_to_msg(
            driver.features, stamp_ns=old, sequence=99, camera_names=["view1"], image_stamps_ns=[old],
            instruction="test", model_fingerprint=driver.info["fingerprint"], inference_time_s=0.01,
        )  # fmt: skip
        driver.features_pub.publish(message)
        assert driver.run_until(
            lambda: driver.codes_since(len(driver.chunks) - 1) == ["robot_state_missing"], 3.0, proc
        ), driver.codes_since(-10)
    finally:
        node.destroy_node()
        code = proc.stop()
    assert code == 0, proc.output()[-3000:]
