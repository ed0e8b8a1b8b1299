"""action_expert_node: newest VL features + a causal sensor window -> ActionChunk, on a 10 Hz timer.

The sensor subscription (deep queue, its own callback group) only appends samples to a ring buffer keyed by
sample stamp. The VLFeatures subscription decodes and resamples each feature message once (it is reused by
~17 ticks). The tick timer has its own callback group on a multi-threaded executor and follows the ROS
clock, so bag replays with /clock drive it. Each tick: window(65) ending at the tick, hold policy, policy
forward, non-finite check, safety layer, publish (plus optional TwistStamped / MultiDOFJointTrajectory).
A policy with robot-state input (``action_expert.state_dim > 0``) also gets the newest measured pose at or
before the tick from ``pose_topic``; without a fresh one the tick holds (``robot_state_missing/stale``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from insertion_vla_ros.ros_imports import MissingInterfacesError, import_interfaces

try:
    interfaces = import_interfaces()
    _INTERFACES_ERROR: MissingInterfacesError | None = None
except MissingInterfacesError as _error:  # main() reports it with the build hint, without a traceback
    interfaces = None
    _INTERFACES_ERROR = _error

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup  # noqa: E402
from rclpy.lifecycle import State, TransitionCallbackReturn  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402

from insertion_vla_ros.diagnostics import (  # noqa: E402
    FrequencyMonitor,
    Level,
    TaskStatus,
    diagnostic_array,
    diagnostic_array_type,
)
from insertion_vla_ros.force_guard import DEFAULT_FORCE_GUARD_N, force_problem  # noqa: E402
from insertion_vla_ros.hold_policy import (  # noqa: E402
    ChunkStatus,
    Decision,
    FeatureInfo,
    HoldTracker,
    check_inputs,
    check_output,
)
from insertion_vla_ros.latest_worker import LatestWorker  # noqa: E402
from insertion_vla_ros.lifecycle_base import LATCHED_QOS, RELIABLE_QOS, ManagedNode, input_qos  # noqa: E402
from insertion_vla_ros.msg_conversions import (  # noqa: E402
    action_chunk_to_msg,
    controller_status_to_msg,
    sensor_samples_from_msg,
    vl_features_from_msg,
)
from insertion_vla_ros.node_main import run_lifecycle_node  # noqa: E402
from insertion_vla_ros.parameters import ParamSpec, runtime_param_specs  # noqa: E402
from insertion_vla_ros.policy_loading import checkpoint_info  # noqa: E402
from insertion_vla_ros.robot_state import RobotStateBuffer  # noqa: E402
from insertion_vla_ros.safety import SafetyLimiter  # noqa: E402
from insertion_vla_ros.sensor_buffer import SensorRingBuffer  # noqa: E402
from insertion_vla_ros.standard_outputs import trajectory_msg, twist_msg  # noqa: E402
from insertion_vla_ros.time_conversions import NS_PER_S, stamp_to_ns  # noqa: E402
from models.pose_math import pose_from_ros  # noqa: E402

NODE_NAME = "action_expert_node"
INF = float("inf")

PARAMETERS: list[ParamSpec] = [
    ParamSpec("checkpoint", "", "Policy checkpoint directory (models.checkpoint layout).", read_only=True),
    ParamSpec("device", "cpu", "Torch device of the action expert, e.g. cpu or cuda:0.", read_only=True),
    ParamSpec(
        "torch_threads", 1, "Torch CPU threads (0: torch default).", read_only=True, minimum=0, maximum=256
    ),
    ParamSpec(
        "action_period_s",
        0.1,
        "Tick period of the action expert, s (ROS clock).",
        read_only=True,
        minimum=0.001,
        maximum=10.0,
    ),
    ParamSpec("sensor_topic", "/needle_sensor/samples", "SensorSamples input topic.", read_only=True),
    ParamSpec(
        "sensor_qos",
        "sensor_data",
        "Sensor subscription QoS (sensor_data = best effort).",
        read_only=True,
        choices=("sensor_data", "reliable"),
    ),
    ParamSpec(
        "sensor_queue_depth",
        1000,
        "Sensor subscription queue depth in messages (650 Hz needs a deep "
        "queue: the sensor_data default of 5 is 8 ms).",
        read_only=True,
        minimum=10,
        maximum=100000,
    ),
    ParamSpec(
        "sensor_buffer_s",
        2.0,
        "Seconds of samples kept in the ring buffer.",
        read_only=True,
        minimum=0.2,
        maximum=60.0,
    ),
    ParamSpec(
        "sensor_max_age_s",
        0.1,
        "HOLD when the window's newest sample is older than this at the tick, s.",
        minimum=0.0,
        maximum=10.0,
    ),
    ParamSpec(
        "sensor_gap_tolerance_samples",
        0,
        "Missing samples a window may span before HOLD.",
        minimum=0,
        maximum=64,
    ),
    ParamSpec(
        "force_guard_n",
        DEFAULT_FORCE_GUARD_N,
        "HOLD while the needle force (median of the newest samples, magnitude over the force channels) "
        "is at or above this, N (0 disables).",
        minimum=0.0,
        maximum=1000.0,
    ),
    ParamSpec(
        "pose_topic",
        "/robot/pose",
        "PoseStamped input topic of the measured tool pose (subscribed only when the policy takes state).",
        read_only=True,
    ),
    ParamSpec(
        "pose_max_age_s",
        0.1,
        "HOLD when the newest robot pose is older than this at the tick, s (state-input policies).",
        minimum=0.0,
        maximum=10.0,
    ),
    ParamSpec(
        "pose_gripper",
        1.0,
        "Gripper value of the robot state (PoseStamped carries none).",
        read_only=True,
    ),
    ParamSpec("features_topic", "/vla/vl_features", "VLFeatures input topic (latched).", read_only=True),
    ParamSpec(
        "vl_max_age_s",
        0.0,
        "HOLD when the VL features are older than this at the tick, s "
        "(0: the checkpoint's action_expert.max_age_s).",
        minimum=0.0,
        maximum=600.0,
    ),
    ParamSpec(
        "check_fingerprint",
        True,
        "HOLD on VLFeatures from a model other than the checkpoint's.",
        read_only=True,
    ),
    ParamSpec("chunk_topic", "/vla/action_chunk", "ActionChunk output topic.", read_only=True),
    ParamSpec(
        "frame_id", "base", "Frame of the action deltas (header.frame_id of all outputs).", read_only=True
    ),
    ParamSpec(
        "step_limits",
        [2.0, 2.0, 2.0, 0.05, 0.05, 0.05, 1.0],
        "Largest |value| per action dimension per step (mm, rad, gripper).",
        read_only=True,
        minimum=1e-9,
    ),
    ParamSpec(
        "rate_limits",
        [0.5, 0.5, 0.5, 0.02, 0.02, 0.02, 1.0],
        "Largest change per dimension between consecutive steps and chunks.",
        read_only=True,
        minimum=1e-9,
    ),
    ParamSpec(
        "output_twist",
        False,
        "Also publish geometry_msgs/TwistStamped (the chunk's first step as a velocity) every tick.",
        read_only=True,
    ),
    ParamSpec("twist_topic", "/vla/servo_twist", "TwistStamped output topic.", read_only=True),
    ParamSpec(
        "output_trajectory",
        False,
        "Also publish trajectory_msgs/MultiDOFJointTrajectory per chunk.",
        read_only=True,
    ),
    ParamSpec("trajectory_topic", "/vla/trajectory", "MultiDOFJointTrajectory output topic.", read_only=True),
    ParamSpec("trajectory_joint_name", "needle_tip", "Joint (tool) name in the trajectory.", read_only=True),
    *runtime_param_specs(hardware_id="insertion_vla_action_expert", status_period_s=0.2),
]


@dataclass(frozen=True)
class FeatureEntry:
    """Received VL features: what the hold policy checks, and the resampled latents (``None`` if unusable)."""

    info: FeatureInfo
    encoded: Any


def newest_features(entries: list[FeatureEntry], tick_ns: int) -> FeatureEntry | None:
    """The entry with the newest capture stamp at or before ``tick_ns`` (else the newest overall).

    By stamp, not by arrival: features are resampled in a worker thread, so a rejected (mismatched) message
    can be stored before an older good one finishes encoding. Equal stamps: the later arrival wins.
    """
    if not entries:
        return None
    usable = [entry for entry in entries if entry.info.stamp_ns <= tick_ns] or entries
    return max(reversed(usable), key=lambda entry: entry.info.stamp_ns)


class ActionExpertNode(ManagedNode):
    """Lifecycle node producing action chunks at a fixed rate (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, PARAMETERS, **kwargs)
        p = self.params
        self.checkpoint_info = checkpoint_info(p["checkpoint"])
        self.action_names = list(self.checkpoint_info.get("action_names") or [])
        dims = len(self.action_names)
        for name in ("step_limits", "rate_limits"):
            if len(p[name]) != dims:
                raise ValueError(
                    f"parameter '{name}': needs {dims} values (one per action {self.action_names}), "
                    f"got {len(p[name])}"
                )
        model_config = self.checkpoint_info["model_config"]
        self.window_length = int(self.checkpoint_info.get("sensor_window", model_config["sensor"]["window"]))
        self.channels = int(self.checkpoint_info.get("sensor_channels", model_config["sensor"]["channels"]))
        self.sample_rate_hz = float(model_config["sensor"]["sample_rate_hz"])
        self.force_channels = int(model_config["sensor"].get("force_channels", 1))
        self.horizon = int(self.checkpoint_info.get("horizon", model_config["action_expert"]["horizon"]))
        self.state_dim = int(model_config["action_expert"].get("state_dim", 0))
        self.robot_state = RobotStateBuffer()
        self.expected_fingerprint = (
            str(self.checkpoint_info["fingerprint"]) if p["check_fingerprint"] else None
        )
        self.checkpoint_max_age_s = float(model_config["action_expert"].get("max_age_s", 3.4))
        self.period_ns = int(round(p["action_period_s"] * NS_PER_S))
        self.policy: Any = None
        self.buffer = SensorRingBuffer(
            int(p["sensor_buffer_s"] * self.sample_rate_hz), self.channels, self.sample_rate_hz
        )
        self.safety = SafetyLimiter(p["step_limits"], p["rate_limits"])
        self.tracker = HoldTracker()
        self.tick_monitor = FrequencyMonitor(1.0 / p["action_period_s"], tolerance=0.1, window_s=5.0)
        self.features: deque[FeatureEntry] = deque(maxlen=2)
        self._features_lock = threading.Lock()  # features and their counters: executor + encoder thread
        self._encoder: LatestWorker | None = None
        self.features_received = 0
        self.features_rejected = 0
        self.sensor_bad_messages = 0
        self.sequence = 0
        self.missed_ticks = 0
        self.last_tick_ns: int | None = None
        self._grid_anchor_ns: int | None = None  # a scheduled tick time of the timer: its grid's origin
        self.tick_period_s = float("nan")
        self.last_decision: Decision | None = None
        self.last_latency_s = float("nan")
        self.last_error = ""
        self._rate_reference: tuple[int, int] | None = None  # (time ns, samples) for sensor_rate_hz
        self.sensor_rate_hz = float("nan")
        self._tick_lock = threading.Lock()
        self._input_subscriptions: list[Any] = []
        self._timer = None
        self._chunk_pub = None
        self._twist_pub = None
        self._trajectory_pub = None
        monitor_group = MutuallyExclusiveCallbackGroup()
        self.diagnostics_pub = self.create_publisher(
            diagnostic_array_type(),
            "/diagnostics",
            QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE),
        )
        self.status_pub = self.create_publisher(interfaces.ControllerStatus, "~/status", 10)
        self.create_timer(p["diagnostics_period_s"], self._publish_diagnostics, callback_group=monitor_group)
        self.create_timer(p["status_period_s"], self._publish_status, callback_group=monitor_group)

    @property
    def vl_max_age_ns(self) -> int:
        """Largest feature age accepted, ns (parameter, or the checkpoint's when the parameter is 0)."""
        seconds = self.params["vl_max_age_s"] or self.checkpoint_max_age_s
        return int(seconds * NS_PER_S)

    # ----------------------------------------------------------------------------------------- lifecycle
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        """Load the policy (no VLM), warm it up, create subscriptions, publishers and the tick timer."""
        p = self.params
        if not self.load_policy_and_warm_up(load_vlm=False):
            return TransitionCallbackReturn.FAILURE
        self._encoder = LatestWorker(self._encode_features, self._reject_features, name="vl-encoder")
        sensor_group = MutuallyExclusiveCallbackGroup()
        features_group = MutuallyExclusiveCallbackGroup()
        tick_group = MutuallyExclusiveCallbackGroup()  # the tick never waits for another callback
        self._input_subscriptions.append(
            self.create_subscription(
                interfaces.SensorSamples,
                p["sensor_topic"],
                self._on_sensor,
                input_qos(p["sensor_qos"], p["sensor_queue_depth"]),
                callback_group=sensor_group,
            )
        )
        self._input_subscriptions.append(
            self.create_subscription(
                interfaces.VLFeatures,
                p["features_topic"],
                self._on_features,
                LATCHED_QOS,
                callback_group=features_group,
            )
        )
        if self.state_dim:
            from geometry_msgs.msg import PoseStamped

            pose_group = MutuallyExclusiveCallbackGroup()  # never queued behind the 650 Hz sensor callback

            self._input_subscriptions.append(
                self.create_subscription(
                    PoseStamped,
                    p["pose_topic"],
                    self._on_pose,
                    input_qos("reliable", 50),
                    callback_group=pose_group,
                )
            )
        self._chunk_pub = self.create_lifecycle_publisher(
            interfaces.ActionChunk, p["chunk_topic"], RELIABLE_QOS
        )
        if p["output_twist"]:
            from geometry_msgs.msg import TwistStamped

            self._twist_pub = self.create_lifecycle_publisher(TwistStamped, p["twist_topic"], RELIABLE_QOS)
        if p["output_trajectory"]:
            from trajectory_msgs.msg import MultiDOFJointTrajectory

            self._trajectory_pub = self.create_lifecycle_publisher(
                MultiDOFJointTrajectory, p["trajectory_topic"], RELIABLE_QOS
            )
        self._timer = self.create_timer(p["action_period_s"], self._on_tick, callback_group=tick_group)
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        """Start commanding (from rest: the safety layer's previous step is zero)."""
        with self._tick_lock:
            self.safety.reset()
            self.last_tick_ns = None
            self._grid_anchor_ns = None
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        """Stop commanding: publish one HOLD chunk (zero motion) before the publishers are disabled."""
        with self._tick_lock:  # waits for a tick in progress; no tick publishes after this
            self.is_active = False
            stamp_ns = self.get_clock().now().nanoseconds
            self._publish_outputs(
                stamp_ns,
                np.zeros((self.horizon, len(self.action_names)), np.float32),
                Decision(ChunkStatus.HOLD, "deactivated: the node was deactivated"),
                vl_sequence=0,
                latency=0.0,
                clipped=0,
            )
            self.safety.reset()
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        """Drop timer, subscriptions, publishers, buffered inputs, and the model."""
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        """Clean up the same way, from any state."""
        self.is_active = False
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def _teardown(self) -> None:
        if self._encoder is not None:
            self._encoder.stop()
            self._encoder = None
        with self._tick_lock:
            if self._timer is not None:
                self.destroy_timer(self._timer)
                self._timer = None
            for subscription in self._input_subscriptions:
                self.destroy_subscription(subscription)
            self._input_subscriptions.clear()
            for publisher in (self._chunk_pub, self._twist_pub, self._trajectory_pub):
                if publisher is not None:
                    self.destroy_lifecycle_publisher(publisher)
            self._chunk_pub = self._twist_pub = self._trajectory_pub = None
            self.features.clear()
            self.buffer.clear()
            self.robot_state.clear()
            self.policy = None
        import gc

        gc.collect()

    def _warm_up(self) -> None:
        hidden = int(self.checkpoint_info.get("vl_hidden_size", self.policy.vl_hidden_size))
        encoded = self.policy.encode_vl_features(np.zeros((4, hidden), np.float32))
        window = np.zeros((self.window_length, self.channels), np.float32)
        state = np.zeros(self.state_dim, np.float32) if self.state_dim else None
        self.policy.predict_actions(encoded, window, 0.0, robot_state=state)

    # ----------------------------------------------------------------------------------------- inputs
    def _on_sensor(self, msg: Any) -> None:
        try:
            stamps, samples = sensor_samples_from_msg(msg)
            self.buffer.add(stamps, samples)
        except ValueError as error:
            self.sensor_bad_messages += 1
            self.get_logger().error(f"bad SensorSamples: {error}", throttle_duration_sec=5.0)

    def _on_pose(self, msg: Any) -> None:
        try:
            pose = pose_from_ros(msg.pose, self.params["pose_gripper"])
            self.robot_state.add(stamp_to_ns(msg.header.stamp), pose)
        except ValueError as error:
            self.get_logger().error(f"bad robot pose: {error}", throttle_duration_sec=5.0)

    def _on_features(self, msg: Any) -> None:
        info = FeatureInfo(int(msg.sequence), stamp_to_ns(msg.header.stamp), str(msg.model_fingerprint))
        with self._features_lock:
            self.features_received += 1
        encoder = self._encoder
        usable = self.policy is not None and encoder is not None
        if usable and (self.expected_fingerprint is None or info.fingerprint == self.expected_fingerprint):
            try:
                features = np.array(vl_features_from_msg(msg), dtype=np.float32)  # own copy for the worker
            except ValueError as error:
                self._reject_features((info, None), error)
                return
            # Resampled once per message, off the executor: every tick reuses the latents.
            encoder.submit((info, features))
            return
        with self._features_lock:  # a mismatched model: the tick holds and says why
            self.features_rejected += 1
            self.features.append(FeatureEntry(info, None))

    def _encode_features(self, item: tuple[FeatureInfo, np.ndarray]) -> None:
        info, features = item
        policy = self.policy
        if policy is None:
            return
        encoded = policy.encode_vl_features(features)
        with self._features_lock:
            self.features.append(FeatureEntry(info, encoded))

    def _reject_features(self, item: tuple[FeatureInfo, Any], error: BaseException) -> None:
        info = item[0]
        with self._features_lock:
            self.features_rejected += 1
            self.last_error = f"VLFeatures #{info.sequence} rejected: {error}"
        self.get_logger().error(self.last_error, throttle_duration_sec=5.0)

    def _select_features(self, tick_ns: int) -> FeatureEntry | None:
        with self._features_lock:
            entries = list(self.features)
        return newest_features(entries, tick_ns)

    # ----------------------------------------------------------------------------------------- tick
    def _on_tick(self) -> None:
        with self._tick_lock:
            if not self.is_active or self.policy is None:
                return
            tick_ns = self._account_tick(self.get_clock().now().nanoseconds)
            if tick_ns is None:
                return
            p = self.params
            window = self.buffer.window(
                tick_ns,
                self.window_length,
                max_age_ns=int(p["sensor_max_age_s"] * NS_PER_S),
                gap_tolerance_samples=int(p["sensor_gap_tolerance_samples"]),
            )
            entry = self._select_features(tick_ns)
            state, state_problem = None, ""
            if self.state_dim:
                state, state_problem = self.robot_state.state_at(tick_ns, int(p["pose_max_age_s"] * NS_PER_S))
            decision = check_inputs(
                tick_ns,
                None if entry is None else entry.info,
                expected_fingerprint=self.expected_fingerprint,
                max_age_ns=self.vl_max_age_ns,
                window_problem=window.problem,
                state_problem=state_problem,
                force_problem=force_problem(window.samples, p["force_guard_n"], self.force_channels),
            )
            actions = np.zeros((self.horizon, len(self.action_names)), np.float32)
            latency, clipped = 0.0, 0
            if decision.ok and (entry is None or entry.encoded is None):
                decision = Decision(
                    ChunkStatus.HOLD, "vl_features_invalid: features could not be decoded", decision.vl_age_s
                )
            if decision.ok:
                started = time.perf_counter()
                raw = self.policy.predict_actions(
                    entry.encoded, window.samples, decision.vl_age_s, robot_state=state
                )
                raw = raw.detach().to("cpu").numpy()
                latency = time.perf_counter() - started
                decision = check_output(raw, decision)
                if decision.ok:
                    limited = self.safety.apply(raw)
                    actions, clipped = limited.actions, limited.clipped
            if not decision.ok:
                self.safety.reset()  # the robot holds: the next motion ramps up from rest
            self.last_latency_s = latency if decision.ok else self.last_latency_s
            self._publish_outputs(
                tick_ns,
                actions,
                decision,
                vl_sequence=0 if entry is None else entry.info.sequence,
                latency=latency,
                clipped=clipped,
            )

    def _account_tick(self, now_ns: int) -> int | None:
        """Stamp the tick with its scheduled time on the timer's own grid; count skipped slots.

        ``None``: this slot was already served. Stamping the scheduled slot time (not the moment the callback
        ran) keeps chunk stamps and sensor windows identical across replays of the same bag, and lateness
        shows up as missed ticks instead. The grid must be the timer's: rcl keeps a timer on the grid of its
        creation time, so a grid anchored anywhere else (e.g. at a late first callback) would stamp chunks
        up to one period away from when they are produced, and a lock-stepped simulator would wait for them.
        """
        until_next = self._timer.time_until_next_call() if self._timer is not None else None
        scheduled_ns = now_ns
        if until_next is not None:
            scheduled_ns = min(now_ns, now_ns + int(until_next) - self.period_ns)
        if self._grid_anchor_ns is None or (  # first tick, or time jumped back (bag loop)
            self.last_tick_ns is not None and scheduled_ns < self.last_tick_ns - self.period_ns // 2
        ):
            self._grid_anchor_ns, self.last_tick_ns = scheduled_ns, None
        # Under wall time the estimate carries microseconds of read-out jitter: snap it to the grid.
        slot = round((scheduled_ns - self._grid_anchor_ns) / self.period_ns)
        tick_ns = self._grid_anchor_ns + slot * self.period_ns
        if self.last_tick_ns is not None:
            slots = round((tick_ns - self.last_tick_ns) / self.period_ns)
            if slots < 1:
                return None
            self.missed_ticks += slots - 1
            self.tick_period_s = (tick_ns - self.last_tick_ns) / NS_PER_S
        self.last_tick_ns = tick_ns
        self.tick_monitor.tick(now_ns)
        return tick_ns

    def _publish_outputs(
        self,
        stamp_ns: int,
        actions: np.ndarray,
        decision: Decision,
        *,
        vl_sequence: int,
        latency: float,
        clipped: int,
    ) -> None:
        if self.tracker.update(decision):
            if decision.ok:
                self.get_logger().info("running: publishing policy actions")
            else:
                self.get_logger().warning(f"{decision.status.name}: {decision.reason}")
        self.last_decision = decision
        if self._chunk_pub is None:
            return
        p = self.params
        dt = float(p["action_period_s"])
        self._chunk_pub.publish(
            action_chunk_to_msg(
                actions,
                stamp_ns=stamp_ns,
                sequence=self.sequence,
                vl_sequence=vl_sequence,
                vl_age_s=decision.vl_age_s if np.isfinite(decision.vl_age_s) else 0.0,
                inference_time_s=latency,
                step_dt_s=dt,
                action_names=self.action_names,
                status=int(decision.status),
                status_reason=decision.reason,
                safety_clipped=clipped,
                frame_id=p["frame_id"],
            )
        )
        self.sequence += 1
        if self._twist_pub is not None:
            self._twist_pub.publish(
                twist_msg(actions[0], step_dt_s=dt, stamp_ns=stamp_ns, frame_id=p["frame_id"])
            )
        if self._trajectory_pub is not None:
            self._trajectory_pub.publish(
                trajectory_msg(
                    actions,
                    step_dt_s=dt,
                    stamp_ns=stamp_ns,
                    frame_id=p["frame_id"],
                    joint_name=p["trajectory_joint_name"],
                )
            )

    # ----------------------------------------------------------------------------------------- monitoring
    def _state_and_reason(self) -> tuple[int, str]:
        status = interfaces.ControllerStatus
        if not self.is_active:
            return status.STATE_INACTIVE, "inactive" if self.policy is not None else "unconfigured"
        decision = self.last_decision
        if decision is None:
            return status.STATE_WAITING, "no tick yet"
        if decision.status == ChunkStatus.WAITING:
            return status.STATE_WAITING, decision.reason
        if decision.status == ChunkStatus.HOLD:
            return status.STATE_HOLD, decision.reason
        return status.STATE_RUNNING, ""

    def _update_sensor_rate(self, now_ns: int) -> None:
        samples = self.buffer.stats.samples
        if self._rate_reference is not None and now_ns > self._rate_reference[0]:
            elapsed = (now_ns - self._rate_reference[0]) / NS_PER_S
            if elapsed >= 0.5:
                self.sensor_rate_hz = (samples - self._rate_reference[1]) / elapsed
                self._rate_reference = (now_ns, samples)
        else:
            self._rate_reference = (now_ns, samples)

    def _publish_status(self) -> None:
        now_ns = self.get_clock().now().nanoseconds
        self._update_sensor_rate(now_ns)
        state, reason = self._state_and_reason()
        decision = self.last_decision
        self.status_pub.publish(
            controller_status_to_msg(
                now_ns,
                self.get_name(),
                vl_feature_age_s=decision.vl_age_s if decision is not None else float("nan"),
                action_latency_s=self.last_latency_s,
                tick_period_s=self.tick_period_s,
                sensor_rate_hz=self.sensor_rate_hz,
                missed_ticks=self.missed_ticks,
                dropped_samples=self.buffer.stats.dropped_samples,
                hold_count=self.tracker.hold_count,
                safety_clipped=self.safety.total_clipped,
                state=state,
                state_reason=reason,
            )
        )

    def _publish_diagnostics(self) -> None:
        now_ns = self.get_clock().now().nanoseconds
        prefix = self.get_name()
        state, reason = self._state_and_reason()
        if self.is_active:
            loop = self.tick_monitor.report(f"{prefix}: control loop", now_ns)
        else:
            loop = TaskStatus(f"{prefix}: control loop", Level.OK, reason)
        loop.values.update(
            {
                "chunks published": self.sequence,
                "missed ticks": self.missed_ticks,
                "last inference (s)": self.last_latency_s,
                "holds": self.tracker.hold_count,
                "state": reason or "running",
            }
        )
        for code, count in sorted(self.tracker.counts_by_code.items()):
            loop.values[f"holds: {code}"] = count
        if self.is_active and state == interfaces.ControllerStatus.STATE_HOLD:
            loop.merge(Level.WARN, reason)
        elif self.is_active and state == interfaces.ControllerStatus.STATE_WAITING:
            loop.merge(Level.WARN, reason)
        stats = self.buffer.stats
        sensor = TaskStatus(
            f"{prefix}: sensor",
            Level.OK,
            "OK",
            {
                "Actual frequency (Hz)": self.sensor_rate_hz,
                "Target frequency (Hz)": self.sample_rate_hz,
                "messages": stats.messages,
                "samples": stats.samples,
                "gap samples": stats.gap_samples,
                "out of order samples": stats.out_of_order_samples,
                "non-finite samples": stats.nonfinite_samples,
                "bad messages": self.sensor_bad_messages,
            },
        )
        if self.state_dim:
            sensor.values["robot poses rejected"] = self.robot_state.rejected
        if self.is_active and stats.samples == 0:
            sensor.merge(Level.ERROR, "no sensor samples received")
        elif stats.dropped_samples or self.sensor_bad_messages:
            sensor.merge(Level.WARN, f"{stats.dropped_samples} samples lost or out of order")
        with self._features_lock:
            entry = self.features[-1] if self.features else None
        encoder = self._encoder
        features = TaskStatus(
            f"{prefix}: vl features",
            Level.OK,
            "OK",
            {
                "received": self.features_received,
                "rejected": self.features_rejected,
                "superseded before encoding": encoder.superseded if encoder is not None else 0,
                "last sequence": entry.info.sequence if entry else -1,
                "age at last tick (s)": self.last_decision.vl_age_s if self.last_decision else float("nan"),
                "max age (s)": self.vl_max_age_ns / NS_PER_S,
                "expected fingerprint": self.expected_fingerprint or "(not checked)",
            },
        )
        if self.last_error:
            features.values["last error"] = self.last_error
        if self.is_active and entry is None:
            features.merge(Level.WARN, "no VLFeatures received yet")
        safety = TaskStatus(
            f"{prefix}: safety",
            Level.OK,
            "OK",
            {
                "values clipped": self.safety.total_clipped,
                "chunks clipped": self.safety.chunks_clipped,
                "step limits": list(self.params["step_limits"]),
                "rate limits": list(self.params["rate_limits"]),
                "force guard (N)": self.params["force_guard_n"],
            },
        )
        if self.safety.total_clipped:
            safety.merge(Level.WARN, f"{self.safety.total_clipped} action values clipped so far")
        self.diagnostics_pub.publish(
            diagnostic_array(now_ns, self.params["hardware_id"], [loop, sensor, features, safety])
        )


def main(args: list[str] | None = None) -> None:
    """Console script ``action_expert_node``."""
    if _INTERFACES_ERROR is not None:
        raise SystemExit(f"action_expert_node: error: {_INTERFACES_ERROR}")
    raise SystemExit(run_lifecycle_node(ActionExpertNode, args))


if __name__ == "__main__":
    main()
