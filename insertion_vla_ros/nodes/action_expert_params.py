"""Parameters of action_expert_node, declared with descriptors (``ros2 param describe``).

Defaults come from :mod:`contracts` and the checkpoint; ``config/insertion_vla.yaml`` lists the same names.
"""

from __future__ import annotations

from contracts import topics
from contracts.constants import ACTION_PERIOD_S, DEFAULT_RATE_LIMITS, DEFAULT_STEP_LIMITS, GRIPPER_DEFAULT
from insertion_vla_ros.nodes.fast_path_params import EXPERT_FAST_PATH_PARAMETERS
from insertion_vla_ros.nodes.process_tuning import PROCESS_PARAMETERS
from insertion_vla_ros.ros_io.parameters import ParamSpec, runtime_param_specs
from insertion_vla_ros.runtime.controller import DEFAULT_SENSOR_RATE_TOLERANCE
from insertion_vla_ros.runtime.force_guard import DEFAULT_FORCE_GUARD_N

PARAMETERS: list[ParamSpec] = [
    ParamSpec(
        "checkpoint",
        "",
        "Policy checkpoint directory (models.checkpoint layout), loaded at configure: after a failed "
        "configure, set another and configure again.",
    ),
    ParamSpec("device", "cpu", "Torch device of the action expert, e.g. cpu or cuda:0.", read_only=True),
    ParamSpec(
        "torch_threads", 1, "Torch CPU threads (0: torch default).", read_only=True, minimum=0, maximum=256
    ),
    ParamSpec(
        "action_period_s",
        ACTION_PERIOD_S,
        "Tick period of the action expert, s (ROS clock).",
        read_only=True,
        minimum=0.001,
        maximum=10.0,
    ),
    ParamSpec("sensor_topic", topics.SENSOR_TOPIC, "SensorSamples input topic.", read_only=True),
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
        "sensor_rate_tolerance",
        DEFAULT_SENSOR_RATE_TOLERANCE,
        "HOLD (sensor_rate_mismatch) when the sensor's declared or measured rate differs from the "
        "checkpoint's by more than this fraction.",
        minimum=0.0,
        maximum=1.0,
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
        topics.POSE_TOPIC,
        "PoseStamped input topic of the measured tool pose (subscribed only when the policy takes the "
        "robot state or the motion since capture).",
        read_only=True,
    ),
    ParamSpec(
        "pose_max_age_s",
        0.1,
        "HOLD when the newest robot pose is older than this at the tick, s (state or motion input).",
        minimum=0.0,
        maximum=10.0,
    ),
    ParamSpec(
        "pose_gripper",
        GRIPPER_DEFAULT,
        "Gripper value of the robot state (PoseStamped carries none).",
        read_only=True,
    ),
    ParamSpec("features_topic", topics.FEATURES_TOPIC, "VLFeatures input topic (latched).", read_only=True),
    ParamSpec(
        "vl_max_age_s",
        0.0,
        "HOLD when the VL features are older than this at the tick, s "
        "(0: the oldest age the checkpoint's staleness recipe trained on, plus slack).",
        minimum=0.0,
        maximum=600.0,
    ),
    ParamSpec(
        "check_fingerprint",
        True,
        "HOLD on VLFeatures from a model other than the checkpoint's.",
        read_only=True,
    ),
    ParamSpec("chunk_topic", topics.CHUNK_TOPIC, "ActionChunk output topic.", read_only=True),
    ParamSpec(
        "frame_id",
        topics.POSE_FRAME_ID,
        "Frame of the action deltas (header.frame_id of all outputs).",
        read_only=True,
    ),
    ParamSpec(
        "step_limits",
        list(DEFAULT_STEP_LIMITS),
        "Largest |value| per action dimension per step (mm, rad, gripper).",
        read_only=True,
        minimum=1e-9,
    ),
    ParamSpec(
        "rate_limits",
        list(DEFAULT_RATE_LIMITS),
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
    ParamSpec("twist_topic", topics.TWIST_TOPIC, "TwistStamped output topic.", read_only=True),
    ParamSpec(
        "output_trajectory",
        False,
        "Also publish trajectory_msgs/MultiDOFJointTrajectory per chunk.",
        read_only=True,
    ),
    ParamSpec(
        "trajectory_topic", topics.TRAJECTORY_TOPIC, "MultiDOFJointTrajectory output topic.", read_only=True
    ),
    ParamSpec("trajectory_joint_name", "needle_tip", "Joint (tool) name in the trajectory.", read_only=True),
    *EXPERT_FAST_PATH_PARAMETERS,
    *PROCESS_PARAMETERS,
    *runtime_param_specs(hardware_id="insertion_vla_action_expert", status_period_s=0.2),
]


DYNAMIC = frozenset(spec.name for spec in PARAMETERS if not spec.read_only)
"""Parameters a running node applies at once (``ros2 param set``)."""
