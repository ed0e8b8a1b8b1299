"""Topic names and message types of the rig's real topic layout (one source of truth for sim, bags, nodes).

Cameras publish ``sensor_msgs/msg/Image`` (rgb8) on ``/cameras/<name>/image_raw``; the needle sensor
publishes batched ``insertion_vla_msgs/msg/SensorSamples``; the robot state is a ``PoseStamped`` in
metres with an ``[x, y, z, w]`` quaternion in frame ``base``; the instruction is latched (transient local).
"""

from __future__ import annotations

SENSOR_TOPIC = "/needle_sensor/samples"
POSE_TOPIC = "/robot/pose"
INSTRUCTION_TOPIC = "/vla/instruction"
FEATURES_TOPIC = "/vla/vl_features"
CHUNK_TOPIC = "/vla/action_chunk"
TWIST_TOPIC = "/vla/servo_twist"
TRAJECTORY_TOPIC = "/vla/trajectory"
DIAGNOSTICS_TOPIC = "/diagnostics"
CLOCK_TOPIC = "/clock"
SIM_STATUS_TOPIC = "/sim/status"
SIM_RESULT_TOPIC = "/sim/episode_result"
POSE_FRAME_ID = "base"

IMAGE_TYPE = "sensor_msgs/msg/Image"
SENSOR_TYPE = "insertion_vla_msgs/msg/SensorSamples"
POSE_TYPE = "geometry_msgs/msg/PoseStamped"
INSTRUCTION_TYPE = "std_msgs/msg/String"

SENSOR_SAMPLES_PER_MESSAGE = 13
"""Sensor samples batched per message (13 at 650 Hz = one message per 20 ms)."""


def camera_topic(name: str) -> str:
    """Image topic of camera ``name``, e.g. ``/cameras/view1/image_raw``."""
    return f"/cameras/{name}/image_raw"


def camera_name_from_topic(topic: str) -> str | None:
    """Inverse of :func:`camera_topic` (``None`` when ``topic`` is not a camera image topic)."""
    parts = topic.split("/")
    if len(parts) == 4 and parts[0] == "" and parts[1] == "cameras" and parts[3] == "image_raw" and parts[2]:
        return parts[2]
    return None
