"""Action chunks as standard messages for downstream controllers (TwistStamped, MultiDOFJointTrajectory).

Units follow REP 103: chunk translations are mm per step and become m/s (twist) or m (trajectory);
rotations are rotation vectors in rad per step and become rad/s or quaternions. The trajectory is relative
to the tool pose at the chunk's start (point j = the pose after steps 0..j), so an all-zero chunk (HOLD)
is a trajectory that stays where it is.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from contracts.constants import NS_PER_S
from insertion_vla_ros.ros_io.time_conversions import ns_to_stamp
from models.pose_math import apply_delta, rotvec_to_quaternion

MM_PER_M = 1000.0


def step_twist(step: np.ndarray, step_dt_s: float) -> tuple[np.ndarray, np.ndarray]:
    """``(linear m/s [3], angular rad/s [3])`` of one ``[dx, dy, dz (mm), drx, dry, drz (rad), ...]`` step."""
    step = np.asarray(step, dtype=np.float64)
    return step[0:3] / MM_PER_M / step_dt_s, step[3:6] / step_dt_s


def twist_msg(step: np.ndarray, *, step_dt_s: float, stamp_ns: int, frame_id: str) -> Any:
    """``geometry_msgs/TwistStamped`` commanding one chunk step as a velocity over ``step_dt_s``."""
    from geometry_msgs.msg import TwistStamped

    linear, angular = step_twist(step, step_dt_s)
    msg = TwistStamped()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = (float(v) for v in linear)
    msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z = (float(v) for v in angular)
    return msg


def chunk_poses(actions: np.ndarray) -> np.ndarray:
    """Cumulative poses ``[H, 7]`` (mm, rotation vector) reached after each step, from the identity pose."""
    pose = np.zeros(7)
    poses = []
    for step in np.asarray(actions, dtype=np.float64):
        pose = apply_delta(pose, step)
        poses.append(pose)
    return np.asarray(poses)


def trajectory_msg(
    actions: np.ndarray, *, step_dt_s: float, stamp_ns: int, frame_id: str, joint_name: str
) -> Any:
    """``trajectory_msgs/MultiDOFJointTrajectory`` of a chunk: one point per step, relative to its start."""
    from builtin_interfaces.msg import Duration
    from geometry_msgs.msg import Transform, Twist
    from trajectory_msgs.msg import MultiDOFJointTrajectory, MultiDOFJointTrajectoryPoint

    msg = MultiDOFJointTrajectory()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.joint_names = [joint_name]
    for index, (step, pose) in enumerate(zip(np.asarray(actions), chunk_poses(actions))):
        transform = Transform()
        transform.translation.x, transform.translation.y, transform.translation.z = (
            float(v) for v in pose[0:3] / MM_PER_M
        )
        qx, qy, qz, qw = (float(v) for v in rotvec_to_quaternion(pose[3:6]))
        transform.rotation.x, transform.rotation.y, transform.rotation.z, transform.rotation.w = (
            qx,
            qy,
            qz,
            qw,
        )
        linear, angular = step_twist(step, step_dt_s)
        velocity = Twist()
        velocity.linear.x, velocity.linear.y, velocity.linear.z = (float(v) for v in linear)
        velocity.angular.x, velocity.angular.y, velocity.angular.z = (float(v) for v in angular)
        elapsed_ns = int(round((index + 1) * step_dt_s * NS_PER_S))
        point = MultiDOFJointTrajectoryPoint()
        point.transforms = [transform]
        point.velocities = [velocity]
        point.time_from_start = Duration(sec=elapsed_ns // NS_PER_S, nanosec=elapsed_ns % NS_PER_S)
        msg.points.append(point)
    return msg
