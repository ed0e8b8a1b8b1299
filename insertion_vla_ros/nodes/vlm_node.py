"""vlm_node: camera images + instruction -> VLFeatures, every VLM period, in a worker thread.

Camera callbacks only store messages (by header stamp) in short per-camera queues. A timer on the ROS clock
(so it follows /clock under ``use_sim_time``) asks the worker for one inference per period; the worker
takes the newest approximately synchronised camera set, runs the VLM, and publishes latched VLFeatures.
If an inference outlasts the period, the next one starts right after it; requests never queue up.
"""

from __future__ import annotations

import threading
import time
from typing import Any

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
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from contracts import topics  # noqa: E402
from contracts.constants import CAMERA_NAMES, NS_PER_S  # noqa: E402
from insertion_vla_ros.nodes.fast_path_params import (  # noqa: E402
    VLM_FAST_PATH_PARAMETERS,
    report_fast_path,
    vlm_fast_path,
)
from insertion_vla_ros.nodes.lifecycle_base import ManagedNode  # noqa: E402
from insertion_vla_ros.nodes.node_main import run_lifecycle_node  # noqa: E402
from insertion_vla_ros.nodes.process_tuning import PROCESS_PARAMETERS, report_process_tuning  # noqa: E402
from insertion_vla_ros.ros_io.diagnostics import (  # noqa: E402
    FrequencyMonitor,
    Level,
    TaskStatus,
    diagnostic_array,
    diagnostic_array_type,
)
from insertion_vla_ros.ros_io.image_conversions import any_image_msg_to_rgb  # noqa: E402
from insertion_vla_ros.ros_io.msg_conversions import controller_status_to_msg, vl_features_to_msg  # noqa: E402
from insertion_vla_ros.ros_io.parameters import ParamSpec, runtime_param_specs  # noqa: E402
from insertion_vla_ros.ros_io.qos import LATCHED_QOS, input_qos  # noqa: E402
from insertion_vla_ros.ros_io.time_conversions import stamp_to_ns  # noqa: E402
from insertion_vla_ros.runtime.camera_sync import CameraQueues, CameraSetSelection  # noqa: E402
from insertion_vla_ros.runtime.vlm_schedule import VlmSchedule  # noqa: E402

NODE_NAME = "vlm_node"
TRANSPORT_DTYPE = "float16"
"""Default wire dtype of VLFeatures: bench/closed_loop.py measured the embedded policy's success unchanged
against float32 (README, closed-loop benchmark), at half the bytes."""
DEFAULT_INSTRUCTION = "Insert the needle into the target."

PARAMETERS: list[ParamSpec] = [
    ParamSpec(
        "checkpoint",
        "",
        "Policy checkpoint directory (models.checkpoint layout), loaded at configure: after a failed "
        "configure, set another and configure again.",
    ),
    ParamSpec("device", "cpu", "Torch device of the VLM, e.g. cpu or cuda:0.", read_only=True),
    ParamSpec(
        "torch_threads", 0, "Torch CPU threads (0: torch default).", read_only=True, minimum=0, maximum=256
    ),
    ParamSpec("camera_names", list(CAMERA_NAMES), "Camera names in model input order.", read_only=True),
    ParamSpec(
        "camera_topics",
        [topics.camera_topic(name) for name in CAMERA_NAMES],
        "Image topic per camera (same order as camera_names); '/compressed' is appended for compressed.",
        read_only=True,
    ),
    ParamSpec(
        "camera_transport",
        "raw",
        "sensor_msgs/Image (raw) or CompressedImage (compressed).",
        read_only=True,
        choices=("raw", "compressed"),
    ),
    ParamSpec(
        "camera_qos",
        "sensor_data",
        "Camera subscription QoS (sensor_data = best effort).",
        read_only=True,
        choices=("sensor_data", "reliable"),
    ),
    ParamSpec(
        "camera_queue_size",
        5,
        "Images kept per camera for set matching.",
        read_only=True,
        minimum=1,
        maximum=100,
    ),
    ParamSpec(
        "camera_slop_s",
        0.05,
        "Largest stamp difference allowed within a camera set, s.",
        minimum=0.0,
        maximum=10.0,
    ),
    ParamSpec(
        "camera_max_age_s",
        1.0,
        "Images older than this (ROS time) are not used, s.",
        minimum=0.001,
        maximum=600.0,
    ),
    ParamSpec(
        "vlm_period_s",
        1.7,
        "Period between VLM inferences, s (the next starts right after an inference that took longer).",
        read_only=True,
        minimum=0.001,
        maximum=600.0,
    ),
    ParamSpec("instruction", DEFAULT_INSTRUCTION, "Task instruction; also settable on instruction_topic."),
    ParamSpec(
        "instruction_topic",
        topics.INSTRUCTION_TOPIC,
        "std_msgs/String topic that changes the instruction.",
        read_only=True,
    ),
    ParamSpec("features_topic", topics.FEATURES_TOPIC, "VLFeatures output topic (latched).", read_only=True),
    ParamSpec(
        "transport_dtype",
        TRANSPORT_DTYPE,
        "Dtype the VLFeatures travel in (half the bytes of float32; the action expert reads any of them).",
        read_only=True,
        choices=("float32", "float16", "bfloat16"),
    ),
    ParamSpec(
        "inject_latency_s",
        0.0,
        "DEBUG: extra seconds added to every VLM inference (tests, benches).",
        minimum=0.0,
        maximum=600.0,
    ),
    *VLM_FAST_PATH_PARAMETERS,
    *PROCESS_PARAMETERS,
    *runtime_param_specs(hardware_id="insertion_vla_vlm", status_period_s=0.5),
]


class VlmNode(ManagedNode):
    """Lifecycle node running the VLM on camera sets (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, PARAMETERS, **kwargs)
        p = self.params
        if len(p["camera_topics"]) != len(p["camera_names"]):
            raise ValueError(
                f"parameter 'camera_topics': {len(p['camera_topics'])} topics for "
                f"{len(p['camera_names'])} camera_names"
            )
        if len(set(p["camera_names"])) != len(p["camera_names"]):
            raise ValueError("parameter 'camera_names': names must be unique")
        self.instruction = str(p["instruction"])
        self.policy: Any = None
        self.fast_choice: Any = None  # the fast path in use (nodes.fast_path_params.FastPathChoice)
        self._extract: Any = None  # (images, instruction) -> (features, meta), set at configure
        self.queues = CameraQueues(p["camera_names"], p["camera_queue_size"])
        self.sequence = 0
        self.feature_monitor = FrequencyMonitor(
            1.0 / p["vlm_period_s"], tolerance=0.5, window_s=10 * p["vlm_period_s"]
        )
        self.last_selection: CameraSetSelection | None = None
        self.last_used_stamps: dict[str, int] | None = None
        self.last_latency_s = float("nan")
        self.last_publish_ns: int | None = None
        self.measured_period_s = float("nan")
        self.failed_sets = 0
        self.skipped_same_set = 0
        self.decode_errors = 0
        self.attempts = 0
        self.failures_since_publish = 0
        self.last_error = ""
        # worker hand-off: at most one pending request, never a queue (the rule the simulated VLM shares)
        self.schedule = VlmSchedule()
        self._generation = 0  # bumped by a clock jump: an inference started before it is not published
        self._request = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._input_subscriptions: list[Any] = []
        self._timer = None
        self._publisher = None
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
        """Load the policy with its VLM, warm it up, create the subscriptions and the publisher."""
        p = self.params
        if not self.load_policy_and_warm_up(load_vlm=True):
            return TransitionCallbackReturn.FAILURE
        views = self.policy.config.vlm.num_views
        if views != len(p["camera_names"]):
            cameras = len(p["camera_names"])
            self.last_error = f"parameter 'camera_names': {cameras} cameras; the checkpoint expects {views}"
            self.get_logger().error(self.last_error)
            self.policy = None
            return TransitionCallbackReturn.FAILURE
        camera_group = MutuallyExclusiveCallbackGroup()
        compressed = p["camera_transport"] == "compressed"
        message_type = CompressedImage if compressed else Image
        qos = input_qos(p["camera_qos"], p["camera_queue_size"])
        for name, topic in zip(p["camera_names"], p["camera_topics"]):
            topic = f"{topic}/compressed" if compressed else topic
            self._input_subscriptions.append(
                self.create_subscription(
                    message_type, topic, self._camera_callback(name), qos, callback_group=camera_group
                )
            )
        # Two subscriptions: transient local gets a latched instruction, volatile gets plain publishers.
        for durability_qos in (LATCHED_QOS, QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)):
            self._input_subscriptions.append(
                self.create_subscription(
                    String,
                    p["instruction_topic"],
                    self._on_instruction,
                    durability_qos,
                    callback_group=camera_group,
                )
            )
        self._publisher = self.create_lifecycle_publisher(
            interfaces.VLFeatures, p["features_topic"], LATCHED_QOS
        )
        self._stop.clear()
        self._worker = threading.Thread(target=self._worker_loop, name="vlm_worker", daemon=True)
        self._worker.start()
        self._timer = self.create_timer(p["vlm_period_s"], self._on_period, callback_group=camera_group)
        return TransitionCallbackReturn.SUCCESS

    def on_clock_jump(self, now_ns: int, backward: bool) -> None:
        """Images from before a jump belong to another timeline: forget them, drop a running inference."""
        self.queues.clear()
        self.last_used_stamps = None
        self._generation += 1
        self.get_logger().warning("the clock jumped: camera images cleared", throttle_duration_sec=1.0)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        """Stop scheduling: a pending request is dropped and nothing is published while inactive."""
        self.schedule.cancel()
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        """Stop the worker, drop subscriptions and publisher, free the model."""
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        """Clean up the same way, from any state."""
        self.is_active = False
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def _teardown(self) -> None:
        self.stop_workers()
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        for subscription in self._input_subscriptions:
            self.destroy_subscription(subscription)
        self._input_subscriptions.clear()
        if self._publisher is not None:
            self.destroy_lifecycle_publisher(self._publisher)
            self._publisher = None
        self.policy = None
        self._extract = None
        self._release_memory()

    def stop_workers(self) -> None:
        """Stop the VLM worker thread (waits for a running inference)."""
        self._stop.set()
        self._request.set()
        if self._worker is not None:
            self._worker.join(timeout=30.0)
            self._worker = None

    @staticmethod
    def _release_memory() -> None:
        import gc

        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def prepare_policy(self) -> None:
        """Apply the fast-path parameters to the loaded VLM (fallbacks logged once, kept for diagnostics)."""
        from models.fast_path import FastVLM, prepare_model

        choice = vlm_fast_path(self.params, self.params["device"])
        for note in choice.fallbacks:
            self.get_logger().warning(f"fast path: {note}")
        prepare_model(self.policy.vlm_model, choice.fast, self.policy.device)
        self._extract = FastVLM(self.policy.vlm, choice.fast).extract
        self.fast_choice = choice
        self.get_logger().info(f"fast path: {choice.summary()}")

    def _warm_up(self) -> None:
        import numpy as np

        vlm = self.policy.config.vlm
        blank = np.zeros((vlm.image_height, vlm.image_width, 3), np.uint8)
        self._extract([blank] * vlm.num_views, self.instruction)

    # ----------------------------------------------------------------------------------------- inputs
    def _camera_callback(self, name: str) -> Any:
        def store(msg: Any) -> None:
            self.queues.add(name, stamp_to_ns(msg.header.stamp), msg)

        return store

    def _on_instruction(self, msg: String) -> None:
        if msg.data != self.instruction:
            self.get_logger().info(f"instruction changed on topic: {msg.data!r}")
            self.instruction = msg.data

    def on_parameter_changed(self, name: str, value: Any) -> None:
        """Apply a new ``instruction`` parameter."""
        if name == "instruction":
            self.instruction = str(value)
            self.get_logger().info(f"instruction changed by parameter: {self.instruction!r}")

    # ----------------------------------------------------------------------------------------- worker
    def _on_period(self) -> None:
        if self.is_active and self.schedule.period_elapsed():
            self._request.set()

    def _worker_loop(self) -> None:
        while True:
            self._request.wait()
            self._request.clear()
            if self._stop.is_set():
                return
            try:
                if self.is_active:  # a request that outlived deactivation is dropped
                    self._run_inference()
            except Exception as error:  # noqa: BLE001 - keep the worker alive, report in diagnostics
                self.failures_since_publish += 1
                self.last_error = f"inference failed: {error}"
                if not self._stop.is_set():
                    self.get_logger().error(self.last_error)
            finally:
                if self.schedule.inference_done():
                    self._request.set()

    def _run_inference(self) -> None:
        p = self.params
        generation = self._generation
        now_ns = self.get_clock().now().nanoseconds
        selection = self.queues.select(
            int(p["camera_slop_s"] * NS_PER_S),
            now_ns=now_ns,
            max_age_ns=int(p["camera_max_age_s"] * NS_PER_S),
        )
        self.last_selection = selection
        if not selection.ok:
            self.failed_sets += 1
            self.get_logger().warning(f"no camera set: {selection.reason}", throttle_duration_sec=5.0)
            return
        if selection.stamps_ns == self.last_used_stamps:
            self.skipped_same_set += 1
            return
        messages = self.queues.items(selection.stamps_ns)
        if messages is None:
            return
        self.attempts += 1
        try:
            images = [any_image_msg_to_rgb(msg) for msg in messages]
        except ValueError as error:
            self.decode_errors += 1
            self.failures_since_publish += 1
            self.last_error = f"image decode: {error}"
            self.get_logger().error(self.last_error, throttle_duration_sec=5.0)
            return
        instruction = self.instruction
        policy, extract = self.policy, self._extract
        if policy is None or extract is None:
            return
        started = time.perf_counter()
        features, _ = extract(images, instruction)
        import torch

        features = features.to(getattr(torch, p["transport_dtype"]))
        extra = float(p["inject_latency_s"])
        if extra > 0.0:
            self._stop.wait(extra)
        latency = time.perf_counter() - started
        if self._stop.is_set():
            return
        names = list(p["camera_names"])
        msg = vl_features_to_msg(
            features,
            stamp_ns=selection.newest_ns,
            sequence=self.sequence,
            camera_names=names,
            image_stamps_ns=[selection.stamps_ns[name] for name in names],
            instruction=instruction,
            model_fingerprint=policy.fingerprint,
            inference_time_s=latency,
        )
        if not self.is_active or self._publisher is None or generation != self._generation:
            return  # deactivated meanwhile, or the clock jumped: these images are from another timeline
        self._publisher.publish(msg)
        self.sequence += 1
        self.failures_since_publish = 0
        self.last_used_stamps = dict(selection.stamps_ns)
        self.last_latency_s = latency
        publish_ns = self.get_clock().now().nanoseconds
        if self.last_publish_ns is not None and publish_ns > self.last_publish_ns:
            self.measured_period_s = (publish_ns - self.last_publish_ns) / NS_PER_S
        self.last_publish_ns = publish_ns
        self.feature_monitor.tick(publish_ns)

    # ----------------------------------------------------------------------------------------- monitoring
    def _state_and_reason(self) -> tuple[int, str]:
        status = interfaces.ControllerStatus
        if not self.is_active:
            return status.STATE_INACTIVE, "inactive" if self.policy is not None else "unconfigured"
        selection = self.last_selection
        if selection is not None and not selection.ok:
            return status.STATE_HOLD, selection.reason
        if self.sequence == 0:
            return status.STATE_WAITING, "waiting for the first camera set"
        return status.STATE_RUNNING, ""

    def _publish_status(self) -> None:
        state, reason = self._state_and_reason()
        selection = self.last_selection
        msg = controller_status_to_msg(
            self.get_clock().now().nanoseconds,
            self.get_name(),
            vlm_period_s=self.measured_period_s,
            vlm_latency_s=self.last_latency_s,
            camera_skew_s=(selection.skew_ns / NS_PER_S)
            if selection is not None and selection.ok
            else float("nan"),
            state=state,
            state_reason=reason,
        )
        self.status_pub.publish(msg)

    def _publish_diagnostics(self) -> None:
        now_ns = self.get_clock().now().nanoseconds
        prefix = self.get_name()
        state, reason = self._state_and_reason()
        cameras = TaskStatus(f"{prefix}: camera sync")
        selection = self.last_selection
        for name in self.params["camera_names"]:
            cameras.values[f"{name} images received"] = self.queues.received[name]
            cameras.values[f"{name} out of order"] = self.queues.out_of_order[name]
        cameras.values["slop (s)"] = self.params["camera_slop_s"]
        cameras.values["sets without match"] = self.failed_sets
        if selection is not None:
            for name, offset in selection.offsets_ns.items():
                cameras.values[f"{name} behind newest (s)"] = offset / NS_PER_S
            cameras.values["skew (s)"] = selection.skew_ns / NS_PER_S
            if not selection.ok:
                level = Level.ERROR if selection.missing else Level.WARN
                cameras.merge(level, selection.reason)
        elif self.is_active:
            cameras.merge(Level.WARN, "no camera set tried yet")
        features = (
            self.feature_monitor.report(f"{prefix}: vl features", now_ns)
            if self.is_active
            else (TaskStatus(f"{prefix}: vl features", Level.OK, "inactive"))
        )
        features.values.update(
            {
                "sequence": self.sequence,
                "last inference (s)": self.last_latency_s,
                "VLM period (s)": self.params["vlm_period_s"],
                "injected latency (s)": self.params["inject_latency_s"],
                "instruction": self.instruction,
                "fingerprint": self.policy.fingerprint if self.policy is not None else "",
                "decode errors": self.decode_errors,
                "state": reason or "running",
            }
        )
        report_fast_path(features, self.fast_choice)
        report_process_tuning(features, self.process_notes)
        features.values["inference attempts"] = self.attempts
        features.values["failed since last published"] = self.failures_since_publish
        if self.last_error:
            features.values["last error"] = self.last_error
        if self.is_active and self.failures_since_publish:
            # a rate met by features published before the failures began says nothing about now
            features.merge(Level.ERROR, f"{self.failures_since_publish} attempts failed: {self.last_error}")
        if self.is_active and self.sequence == 0 and selection is not None and selection.ok:
            features.merge(Level.WARN, "no features published yet")
        self.diagnostics_pub.publish(
            diagnostic_array(now_ns, self.params["hardware_id"], [cameras, features])
        )


def main(args: list[str] | None = None) -> None:
    """Console script ``vlm_node``."""
    if _INTERFACES_ERROR is not None:
        raise SystemExit(f"vlm_node: error: {_INTERFACES_ERROR}")
    raise SystemExit(run_lifecycle_node(VlmNode, args))


if __name__ == "__main__":
    main()
