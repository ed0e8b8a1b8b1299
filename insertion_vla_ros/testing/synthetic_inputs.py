"""Synthetic rig inputs for tests and benchmarks: cameras, a batched 650 Hz sensor and a fixed robot pose.

Not a simulator (see ``sim_node`` for that): it publishes fixed images per camera at ``camera_rate_hz``,
pre-generated sensor samples and a fixed pose on ``/robot/pose`` at 100 Hz, stamped on the node's ROS clock
(so it follows /clock under ``use_sim_time``). Sample stamps are ``start + i / rate`` and never ahead of the
clock: each timer callback publishes every sample due by now, batched ``samples_per_message`` at a time.
Run time switches (dynamic parameters): ``stopped_cameras`` (comma-separated names), ``sensor_enabled``,
``sensor_nan``, ``pose_enabled``.
Run: ``python -m insertion_vla_ros.testing.synthetic_inputs --ros-args -p camera_rate_hz:=10.0``.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image

from contracts import topics
from contracts.constants import CAMERA_NAMES, NS_PER_S, SENSOR_RATE_HZ
from insertion_vla_ros.ros_io.image_conversions import rgb_to_image_msg
from insertion_vla_ros.ros_io.msg_conversions import sensor_samples_to_msg
from insertion_vla_ros.ros_io.parameters import ParamSpec, declare_parameters, make_set_parameters_validator
from insertion_vla_ros.ros_io.ros_imports import import_interfaces
from insertion_vla_ros.ros_io.time_conversions import ns_to_stamp

PARAMETERS = [
    ParamSpec("camera_names", list(CAMERA_NAMES), "Cameras to publish.", read_only=True),
    ParamSpec(
        "camera_rate_hz", 10.0, "Frame rate of every camera.", read_only=True, minimum=0.1, maximum=200.0
    ),
    ParamSpec("image_size", 112, "Square image side, pixels.", read_only=True, minimum=8, maximum=4096),
    ParamSpec("stopped_cameras", "", "Comma-separated cameras that publish nothing (dynamic)."),
    ParamSpec("corrupt_images", False, "Publish truncated images that cannot be decoded (dynamic)."),
    ParamSpec("sensor_topic", topics.SENSOR_TOPIC, "SensorSamples topic.", read_only=True),
    ParamSpec(
        "sensor_rate_hz", SENSOR_RATE_HZ, "Sample rate.", read_only=True, minimum=1.0, maximum=100000.0
    ),
    ParamSpec(
        "samples_per_message", 13, "Samples batched per message.", read_only=True, minimum=1, maximum=10000
    ),
    ParamSpec("channels", 1026, "Channels per sample.", read_only=True, minimum=1, maximum=100000),
    ParamSpec(
        "sensor_enabled", True, "Publish sensor samples (dynamic; samples skipped while off are lost)."
    ),
    ParamSpec("sensor_nan", False, "Put NaN into channel 0 of every sample (dynamic)."),
    ParamSpec("force_n", 0.0, "Channel 0 (force) held at this value, N; 0: noise like the rest (dynamic)."),
    ParamSpec(
        "declared_rate_hz",
        0.0,
        "Rate the messages claim (stamps follow it); 0: the true sensor_rate_hz (dynamic).",
        minimum=0.0,
        maximum=100000.0,
    ),
    ParamSpec(
        "pose_topic", topics.POSE_TOPIC, "PoseStamped topic of the (fixed) robot pose.", read_only=True
    ),
    ParamSpec("pose_rate_hz", 100.0, "Pose rate.", read_only=True, minimum=1.0, maximum=1000.0),
    ParamSpec("pose_enabled", True, "Publish the robot pose (dynamic)."),
]


class SyntheticInputs(Node):
    """Publishes the synthetic camera and sensor streams."""

    def __init__(self) -> None:
        super().__init__("synthetic_inputs")
        self.params = declare_parameters(self, PARAMETERS)
        self.add_on_set_parameters_callback(self._on_set)
        interfaces = import_interfaces()
        p = self.params
        size = int(p["image_size"])
        rng = np.random.default_rng(0)
        self.frames = {}
        self.camera_pubs = {}
        for index, name in enumerate(p["camera_names"]):
            rgb = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            rgb[:, :, index % 3] = 40 * index  # a different picture per camera
            self.frames[name] = rgb_to_image_msg(rgb, stamp_ns=0, frame_id=name)
            self.camera_pubs[name] = self.create_publisher(
                Image, topics.camera_topic(name), qos_profile_sensor_data
            )
        self.sensor_pub = self.create_publisher(
            interfaces.SensorSamples,
            p["sensor_topic"],
            QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE),
        )
        self.samples = rng.standard_normal((int(p["sensor_rate_hz"]), int(p["channels"]))).astype(np.float32)
        self.sample_index = 0
        self.sensor_start_ns: int | None = None
        self.frames_published = 0
        self.samples_published = 0
        self.create_timer(1.0 / p["camera_rate_hz"], self._publish_cameras)
        batch_period = p["samples_per_message"] / p["sensor_rate_hz"]
        self.create_timer(batch_period / 2.0, self._publish_sensor)
        self.pose_pub = self.create_publisher(PoseStamped, p["pose_topic"], 10)
        self.pose = PoseStamped()
        self.pose.header.frame_id = "base"
        self.pose.pose.position.z = 0.005  # 5 mm above the surface, needle pointing down
        self.pose.pose.orientation.w = 1.0
        self.create_timer(1.0 / p["pose_rate_hz"], self._publish_pose)
        from rclpy.clock import JumpThreshold
        from rclpy.duration import Duration

        self._jump_handle = self.get_clock().create_jump_callback(  # a sim reset restarts the streams
            JumpThreshold(min_forward=Duration(seconds=1.0), min_backward=Duration(nanoseconds=-1)),
            post_callback=self._on_jump,
        )

    def _on_jump(self, jump: Any) -> None:
        self.sensor_start_ns, self.sample_index = None, 0

    def _on_set(self, parameters: list[Any]) -> Any:
        result = make_set_parameters_validator(PARAMETERS)(parameters)
        if result.successful:
            for parameter in parameters:
                self.params[parameter.name] = parameter.value
        return result

    def _publish_cameras(self) -> None:
        now_ns = self.get_clock().now().nanoseconds
        if now_ns <= 0:
            return  # sim time before the first /clock
        stopped = {name.strip() for name in str(self.params["stopped_cameras"]).split(",")}
        for name, msg in self.frames.items():
            if name in stopped:
                continue
            if self.params["corrupt_images"]:  # height x step promises more bytes than the data holds
                broken = type(msg)(height=msg.height, width=msg.width, encoding=msg.encoding, step=msg.step)
                broken.data = bytes(msg.data)[: len(msg.data) // 2]
                msg = broken
            msg.header.stamp = ns_to_stamp(now_ns)
            self.camera_pubs[name].publish(msg)
        self.frames_published += 1

    def _publish_pose(self) -> None:
        now_ns = self.get_clock().now().nanoseconds
        if now_ns <= 0 or not self.params["pose_enabled"]:
            return
        self.pose.header.stamp = ns_to_stamp(now_ns)
        self.pose_pub.publish(self.pose)

    def _publish_sensor(self) -> None:
        now_ns = self.get_clock().now().nanoseconds
        if now_ns <= 0:
            return
        rate = float(self.params["sensor_rate_hz"])
        if self.sensor_start_ns is None:
            self.sensor_start_ns = now_ns
        due = int((now_ns - self.sensor_start_ns) * rate // NS_PER_S) + 1  # samples with stamp <= now
        batch = int(self.params["samples_per_message"])
        while due - self.sample_index >= batch:
            first = self.sample_index
            self.sample_index += batch
            if not self.params["sensor_enabled"]:
                continue
            rows = np.arange(first, first + batch) % self.samples.shape[0]
            data = self.samples[rows]
            if self.params["sensor_nan"] or self.params["force_n"]:
                data = data.copy()
                data[:, 0] = np.nan if self.params["sensor_nan"] else float(self.params["force_n"])
            stamp_ns = self.sensor_start_ns + round(first * NS_PER_S / rate)
            claimed = float(self.params["declared_rate_hz"]) or rate
            self.sensor_pub.publish(
                sensor_samples_to_msg(data, first_stamp_ns=stamp_ns, sample_rate_hz=claimed)
            )
            self.samples_published += batch


def main(args: list[str] | None = None) -> None:
    """Run the synthetic inputs until SIGINT (exit 0)."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=args)
    node = None
    try:
        node = SyntheticInputs()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ValueError as error:
        print(f"synthetic_inputs: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
