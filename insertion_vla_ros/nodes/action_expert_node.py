"""action_expert_node: newest VL features + a causal sensor window -> ActionChunk, on a 10 Hz timer.

Lifecycle and wiring only; every decision is :class:`insertion_vla_ros.runtime.controller.TickController`'s.
Subscriptions store (sensor samples and poses into the controller's buffers; VLFeatures are decoded and
encoded once, in a latest-wins worker thread, off the executor); the tick timer, in its own callback group
on the ROS clock (so ``/clock`` from a bag replay drives it), stamps the tick on its grid, calls
``controller.step`` and publishes the result (plus optional TwistStamped / MultiDOFJointTrajectory).
Configure loads the checkpoint and builds the controller from its config; activate starts from rest with
empty buffers; deactivate publishes one zero HOLD chunk. Monitoring lives in
:mod:`insertion_vla_ros.ros_io.controller_monitoring`.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from insertion_vla_ros.ros_io.ros_imports import MissingInterfacesError, import_interfaces

try:
    interfaces = import_interfaces()
    _INTERFACES_ERROR: MissingInterfacesError | None = None
except MissingInterfacesError as _error:  # main() reports it with the build hint, without a traceback
    interfaces = None
    _INTERFACES_ERROR = _error

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup  # noqa: E402
from rclpy.lifecycle import State, TransitionCallbackReturn  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402

from contracts import topics  # noqa: E402
from contracts.constants import NS_PER_S  # noqa: E402
from insertion_vla_ros.nodes.action_expert_params import PARAMETERS  # noqa: E402
from insertion_vla_ros.nodes.fast_path_params import expert_fast_path, report_fast_path  # noqa: E402
from insertion_vla_ros.nodes.lifecycle_base import ManagedNode  # noqa: E402
from insertion_vla_ros.nodes.node_main import run_lifecycle_node  # noqa: E402
from insertion_vla_ros.nodes.process_tuning import report_process_tuning  # noqa: E402
from insertion_vla_ros.ros_io.controller_monitoring import (  # noqa: E402
    SensorRate,
    controller_state,
    controller_tasks,
    status_fields,
)
from insertion_vla_ros.ros_io.diagnostics import FrequencyMonitor, diagnostic_array, diagnostic_array_type  # noqa: E402
from insertion_vla_ros.ros_io.msg_conversions import (  # noqa: E402
    action_chunk_to_msg,
    controller_status_to_msg,
    sensor_samples_from_msg,
    vl_features_from_msg,
)
from insertion_vla_ros.ros_io.qos import LATCHED_QOS, RELIABLE_QOS, input_qos  # noqa: E402
from insertion_vla_ros.ros_io.standard_outputs import trajectory_msg, twist_msg  # noqa: E402
from insertion_vla_ros.ros_io.time_conversions import stamp_to_ns  # noqa: E402
from insertion_vla_ros.runtime.controller import ControllerSettings, TickController, TickResult  # noqa: E402
from insertion_vla_ros.runtime.hold_policy import FeatureInfo  # noqa: E402
from insertion_vla_ros.runtime.latest_worker import LatestWorker  # noqa: E402
from insertion_vla_ros.runtime.tick_clock import TickClock  # noqa: E402
from models.action_expert import MOTION_DIM  # noqa: E402
from models.pose_math import pose_from_ros  # noqa: E402

NODE_NAME = "action_expert_node"
# Node parameters the controller reads at every tick, so ``ros2 param set`` applies them at once.
_CONTROLLER_PARAMETERS = {
    "sensor_max_age_s": "sensor_max_age_s",
    "sensor_gap_tolerance_samples": "sensor_gap_tolerance_samples",
    "sensor_rate_tolerance": "sensor_rate_tolerance",
    "force_guard_n": "force_guard_n",
    "pose_max_age_s": "pose_max_age_s",
    "vl_max_age_s": "vl_max_age_s",
}


class ActionExpertNode(ManagedNode):
    """Lifecycle node producing action chunks at a fixed rate (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, PARAMETERS, **kwargs)
        p = self.params
        self.policy: Any = None
        self.fast_choice: Any = None  # the fast path in use (nodes.fast_path_params.FastPathChoice)
        self.controller: TickController | None = None
        self.clock_grid = TickClock(int(round(p["action_period_s"] * NS_PER_S)))
        self.tick_monitor = FrequencyMonitor(1.0 / p["action_period_s"], tolerance=0.1, window_s=5.0)
        self.sensor_rate = SensorRate()
        self.sequence = 0
        self.sensor_bad_messages = 0
        self.last_error = ""
        self._tick_lock = threading.Lock()
        self._encoder: LatestWorker | None = None
        self._input_subscriptions: list[Any] = []
        self._timer = None
        self._chunk_pub = None
        self._twist_pub = None
        self._trajectory_pub = None
        monitor_group = MutuallyExclusiveCallbackGroup()
        self.diagnostics_pub = self.create_publisher(
            diagnostic_array_type(),
            topics.DIAGNOSTICS_TOPIC,
            QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE),
        )
        self.status_pub = self.create_publisher(interfaces.ControllerStatus, "~/status", 10)
        self.create_timer(p["diagnostics_period_s"], self._publish_diagnostics, callback_group=monitor_group)
        self.create_timer(p["status_period_s"], self._publish_status, callback_group=monitor_group)

    # ----------------------------------------------------------------------------------------- lifecycle
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        """Load the policy (no VLM), build the controller, create subscriptions, publishers and the timer.

        SUCCESS -> inactive; FAILURE (unreadable checkpoint, limits that do not fit it) -> unconfigured,
        with the reason in the log and in diagnostics.
        """
        p = self.params
        if not self.load_policy_and_warm_up(load_vlm=False):
            return TransitionCallbackReturn.FAILURE
        try:
            dims = self.policy.config.action_expert.action_dim
            for name in ("step_limits", "rate_limits"):
                if len(p[name]) != dims:
                    got, names = len(p[name]), list(self.policy.action_names)
                    raise ValueError(
                        f"parameter '{name}': needs {dims} values (one per action {names}), got {got}"
                    )
            settings = ControllerSettings.from_policy(
                self.policy,
                check_fingerprint=p["check_fingerprint"],
                step_limits=p["step_limits"],
                rate_limits=p["rate_limits"],
                sensor_buffer_s=p["sensor_buffer_s"],
                period_s=p["action_period_s"],
                **{field: p[name] for name, field in _CONTROLLER_PARAMETERS.items()},
            )
            self.controller = TickController(self.policy, settings)
        except ValueError as error:
            self.last_error = f"cannot build the controller: {error}"
            self.get_logger().error(self.last_error)
            self.policy = None
            return TransitionCallbackReturn.FAILURE
        self._encoder = LatestWorker(self._encode_features, self._reject_features, name="vl-encoder")
        self._create_subscriptions()
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
        tick_group = MutuallyExclusiveCallbackGroup()  # the tick never waits for another callback
        self._timer = self.create_timer(p["action_period_s"], self._on_tick, callback_group=tick_group)
        return TransitionCallbackReturn.SUCCESS

    def _create_subscriptions(self) -> None:
        p = self.params
        subscribe = self._input_subscriptions.append
        subscribe(
            self.create_subscription(
                interfaces.SensorSamples,
                p["sensor_topic"],
                self._on_sensor,
                input_qos(p["sensor_qos"], p["sensor_queue_depth"]),
                callback_group=MutuallyExclusiveCallbackGroup(),
            )
        )
        subscribe(
            self.create_subscription(
                interfaces.VLFeatures,
                p["features_topic"],
                self._on_features,
                LATCHED_QOS,
                callback_group=MutuallyExclusiveCallbackGroup(),
            )
        )
        if self.controller.settings.state_dim or self.controller.settings.motion_input:
            from geometry_msgs.msg import PoseStamped

            subscribe(  # own group: never queued behind the 650 Hz sensor callback
                self.create_subscription(
                    PoseStamped,
                    p["pose_topic"],
                    self._on_pose,
                    input_qos("reliable", 50),
                    callback_group=MutuallyExclusiveCallbackGroup(),
                )
            )

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        """Start commanding from rest: nothing received while inactive shapes the first chunk."""
        with self._tick_lock:
            self.controller.reset()
            self.clock_grid.reset()
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        """Stop commanding: publish one HOLD chunk (zero motion) before the publishers are disabled."""
        with self._tick_lock:  # waits for a tick in progress; no tick publishes after this
            self.is_active = False
            if self.controller is not None:
                now = self.get_clock().now().nanoseconds
                self._publish(self.controller.hold_result(now, "deactivated: the node was deactivated"))
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        """Drop timer, subscriptions, publishers, the controller and the model."""
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        """From any state: tell the robot to hold (when commanding), then clean up."""
        self.before_exit("shutdown: the shutdown transition was triggered")
        self.is_active = False
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def before_exit(self, reason: str) -> None:
        """A last zero HOLD chunk (and zero Twist) with ``reason``, waited for until delivered (<= 1 s).

        Called before the process leaves (SIGINT, SIGTERM, a fatal error) and on the shutdown transition;
        without it the last chunk on the wire could be an OK one with 0.8 s of motion.
        """
        from rclpy.duration import Duration

        with self._tick_lock:
            if not self.is_active or self.controller is None:
                return  # inactive: deactivation already published a HOLD, and publishers are disabled
            self.is_active = False
            self._publish(self.controller.hold_result(self.get_clock().now().nanoseconds, reason))
        for publisher in (self._chunk_pub, self._twist_pub, self._trajectory_pub):
            if publisher is not None:
                publisher.wait_for_all_acked(Duration(seconds=1.0))

    def on_clock_jump(self, now_ns: int, backward: bool) -> None:
        """Nothing received before a jump may shape a chunk after it; the jump is no lateness either."""
        with self._tick_lock:
            self.clock_grid.jumped(backward)
            if self.controller is not None:
                self.controller.time_jumped(now_ns, backward)
            direction = "back" if backward else "forward"
            self.get_logger().warning(
                f"the clock jumped {direction}: inputs cleared", throttle_duration_sec=1.0
            )

    def stop_workers(self) -> None:
        """Stop the feature encoder thread."""
        if self._encoder is not None:
            self._encoder.stop()
            self._encoder = None

    def _teardown(self) -> None:
        self.stop_workers()
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
            self.controller = None
            self.policy = None
        import gc

        gc.collect()

    def prepare_policy(self) -> None:
        """Switch on the CUDA-graph tick / high-priority stream when asked and possible (else say why)."""
        from models.fast_graphs import tick_runner

        choice = expert_fast_path(self.params, self.params["device"])
        for note in choice.fallbacks:
            self.get_logger().warning(f"fast path: {note}")
        self.policy.set_tick_runner(tick_runner(self.policy, choice.cuda_graphs, choice.cuda_streams))
        self.fast_choice = choice
        self.get_logger().info(f"fast path: {choice.summary()}")

    def _warm_up(self) -> None:
        cfg = self.policy.config
        # As many tokens as the VLM publishes when the layout fixes it (the grounding read-out needs all).
        tokens = cfg.action_expert.vl_token_positions or 4
        encoded = self.policy.encode_vl_features(np.zeros((tokens, cfg.vlm.hidden_size), np.float32))
        window = np.zeros((cfg.sensor.window, cfg.sensor.channels), np.float32)
        state = np.zeros(cfg.action_expert.state_dim, np.float32) if cfg.action_expert.state_dim else None
        motion = np.zeros(MOTION_DIM, np.float32) if cfg.action_expert.motion_input else None
        self.policy.predict_actions(encoded, window, 0.0, robot_state=state, motion=motion)

    def on_parameter_changed(self, name: str, value: Any) -> None:
        """Hand a changed tick parameter (force guard, maximum ages, tolerances) to the controller."""
        controller = self.controller
        if controller is not None and name in _CONTROLLER_PARAMETERS:
            controller.update_settings(**{_CONTROLLER_PARAMETERS[name]: value})

    # ----------------------------------------------------------------------------------------- inputs
    def _on_sensor(self, msg: Any) -> None:
        controller = self.controller
        if controller is None:
            return
        try:
            stamps, samples = sensor_samples_from_msg(msg)
            controller.add_sensor(stamps, samples, declared_rate_hz=float(msg.sample_rate_hz))
        except ValueError as error:
            self.sensor_bad_messages += 1
            self.get_logger().error(f"bad SensorSamples: {error}", throttle_duration_sec=5.0)

    def _on_pose(self, msg: Any) -> None:
        controller = self.controller
        if controller is None:
            return
        try:
            controller.add_pose(
                stamp_to_ns(msg.header.stamp), pose_from_ros(msg.pose, self.params["pose_gripper"])
            )
        except ValueError as error:
            self.get_logger().error(f"bad robot pose: {error}", throttle_duration_sec=5.0)

    def _on_features(self, msg: Any) -> None:
        info = FeatureInfo(int(msg.sequence), stamp_to_ns(msg.header.stamp), str(msg.model_fingerprint))
        encoder, controller = self._encoder, self.controller
        if encoder is None or controller is None:
            return
        try:
            features = np.array(vl_features_from_msg(msg), dtype=np.float32)  # own copy for the worker
        except ValueError as error:
            self._reject_features((info, None), error)
            return
        encoder.submit((info, features))  # encoded once per message, off the executor

    def _encode_features(self, item: tuple[FeatureInfo, np.ndarray]) -> None:
        controller = self.controller
        if controller is not None:
            controller.add_features(*item)

    def _reject_features(self, item: tuple[FeatureInfo, Any], error: BaseException) -> None:
        controller = self.controller
        if controller is not None:
            controller.reject_features(item[0], error, self.get_clock().now().nanoseconds)
        self.get_logger().error(
            f"VLFeatures #{item[0].sequence} rejected: {error}", throttle_duration_sec=5.0
        )

    # ----------------------------------------------------------------------------------------- tick
    def _on_tick(self) -> None:
        with self._tick_lock:
            controller = self.controller
            if not self.is_active or controller is None:
                return
            now_ns = self.get_clock().now().nanoseconds
            until_next = self._timer.time_until_next_call() if self._timer is not None else None
            tick_ns = self.clock_grid.tick(now_ns, until_next)
            if tick_ns is None:
                return
            self.tick_monitor.tick(now_ns)
            self._publish(controller.step(tick_ns))

    def _publish(self, result: TickResult) -> None:
        controller = self.controller
        if controller is not None and controller.holds.changed:
            decision = result.decision
            if decision.ok:
                self.get_logger().info("running: publishing policy actions")
            else:
                self.get_logger().warning(f"{decision.status.name}: {decision.reason}")
        if self._chunk_pub is None:
            return
        p = self.params
        dt = float(p["action_period_s"])
        decision = result.decision
        self._chunk_pub.publish(
            action_chunk_to_msg(
                result.actions,
                stamp_ns=result.tick_ns,
                sequence=self.sequence,
                vl_sequence=result.vl_sequence,
                vl_age_s=decision.vl_age_s if np.isfinite(decision.vl_age_s) else 0.0,
                inference_time_s=result.latency_s,
                step_dt_s=dt,
                action_names=list(self.policy.action_names),
                status=int(decision.status),
                status_reason=decision.reason,
                safety_clipped=result.clipped,
                frame_id=p["frame_id"],
            )
        )
        self.sequence += 1
        if self._twist_pub is not None:
            self._twist_pub.publish(
                twist_msg(result.actions[0], step_dt_s=dt, stamp_ns=result.tick_ns, frame_id=p["frame_id"])
            )
        if self._trajectory_pub is not None:
            self._trajectory_pub.publish(
                trajectory_msg(
                    result.actions,
                    step_dt_s=dt,
                    stamp_ns=result.tick_ns,
                    frame_id=p["frame_id"],
                    joint_name=p["trajectory_joint_name"],
                )
            )

    # ----------------------------------------------------------------------------------------- monitoring
    def _publish_status(self) -> None:
        now_ns = self.get_clock().now().nanoseconds
        controller = self.controller
        rate = (
            self.sensor_rate.update(now_ns, controller.sensor.stats.samples) if controller else float("nan")
        )
        state, reason = controller_state(controller, self.is_active)
        self.status_pub.publish(
            controller_status_to_msg(
                now_ns,
                self.get_name(),
                **status_fields(controller, self.clock_grid, rate),
                state=int(state),
                state_reason=reason,
            )
        )

    def _publish_diagnostics(self) -> None:
        now_ns = self.get_clock().now().nanoseconds
        tasks = controller_tasks(
            self.get_name(),
            self.controller,
            self.clock_grid,
            self.tick_monitor,
            active=self.is_active,
            now_ns=now_ns,
            sensor_rate_hz=self.sensor_rate.hz,
            chunks_published=self.sequence,
            extra_error=self.last_error if self.controller is None else "",
        )
        if self.sensor_bad_messages and len(tasks) > 1:
            tasks[1].values["bad messages"] = self.sensor_bad_messages
        report_fast_path(tasks[0], self.fast_choice)
        report_process_tuning(tasks[0], self.process_notes)
        self.diagnostics_pub.publish(diagnostic_array(now_ns, self.params["hardware_id"], tasks))


def main(args: list[str] | None = None) -> None:
    """Console script ``action_expert_node``."""
    if _INTERFACES_ERROR is not None:
        raise SystemExit(f"action_expert_node: error: {_INTERFACES_ERROR}")
    raise SystemExit(run_lifecycle_node(ActionExpertNode, args))


if __name__ == "__main__":
    main()
