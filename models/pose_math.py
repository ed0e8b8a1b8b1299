"""Rigid-motion helpers shared by training targets, the simulator and the ROS output adapters.

Poses are 7-vectors ``[x, y, z, rx, ry, rz, gripper]``: position in mm, orientation as a rotation vector
(axis * angle, rad) in the robot base frame, and a unitless gripper value. A delta-pose action is
``[dx, dy, dz, drx, dry, drz, gripper]``: the translation ``p_b - p_a`` (mm, base frame) and the rotation
vector of ``R_b @ R_a.T`` (rad, base frame), so ``apply_delta(a, pose_delta(a, b)) == b``. Rotations are
composed as matrices, never by differencing Euler angles.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_SMALL_ANGLE = 1e-8


def _skew(v: np.ndarray) -> np.ndarray:
    """Cross-product matrices of ``v`` (..., 3) -> (..., 3, 3)."""
    zero = np.zeros_like(v[..., 0])
    return np.stack(
        [
            np.stack([zero, -v[..., 2], v[..., 1]], axis=-1),
            np.stack([v[..., 2], zero, -v[..., 0]], axis=-1),
            np.stack([-v[..., 1], v[..., 0], zero], axis=-1),
        ],
        axis=-2,
    )


def rotvec_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    """Rodrigues' formula: rotation vectors (..., 3) -> rotation matrices (..., 3, 3)."""
    rotvec = np.asarray(rotvec, dtype=np.float64)
    angle = np.linalg.norm(rotvec, axis=-1, keepdims=True)
    safe = np.where(angle < _SMALL_ANGLE, 1.0, angle)
    axis_skew = _skew(rotvec / safe)
    sin = np.sin(angle)[..., None]
    one_minus_cos = (1.0 - np.cos(angle))[..., None]
    eye = np.broadcast_to(np.eye(3), axis_skew.shape)
    matrix = eye + sin * axis_skew + one_minus_cos * (axis_skew @ axis_skew)
    small = (angle[..., 0] < _SMALL_ANGLE)[..., None, None]
    return np.where(small, eye + _skew(rotvec), matrix)


def matrix_to_rotvec(matrix: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> rotation vectors (..., 3), angle in [0, pi]."""
    matrix = np.asarray(matrix, dtype=np.float64)
    trace = np.trace(matrix, axis1=-2, axis2=-1)
    cos = np.clip((trace - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    vee = np.stack(
        [
            matrix[..., 2, 1] - matrix[..., 1, 2],
            matrix[..., 0, 2] - matrix[..., 2, 0],
            matrix[..., 1, 0] - matrix[..., 0, 1],
        ],
        axis=-1,
    )
    sin = np.sin(angle)
    general = vee * (angle / np.where(np.abs(sin) < 1e-12, 1.0, 2.0 * sin))[..., None]
    small = vee / 2.0  # first-order expansion near the identity
    # Near pi the vee vector vanishes: take the axis from the symmetric part (R + I) / 2 = a a^T.
    sym = (matrix + np.eye(3)) / 2.0
    diag = np.clip(np.diagonal(sym, axis1=-2, axis2=-1), 0.0, None)
    col = np.argmax(diag, axis=-1)
    picked = np.take_along_axis(sym, col[..., None, None].repeat(3, axis=-1), axis=-2)[..., 0, :]
    axis = picked / np.sqrt(np.maximum(np.take_along_axis(diag, col[..., None], axis=-1), 1e-12))
    sign = np.where(np.sum(axis * vee, axis=-1, keepdims=True) < 0, -1.0, 1.0)
    axis = axis * sign
    near_pi = axis * angle[..., None]
    out = np.where((angle < 1e-6)[..., None], small, general)
    return np.where((np.pi - angle < 1e-4)[..., None], near_pi, out)


def pose_delta(pose_a: np.ndarray, pose_b: np.ndarray) -> np.ndarray:
    """Delta-pose action taking ``pose_a`` to ``pose_b`` (both (..., 7)); gripper = pose_b's gripper."""
    pose_a = np.asarray(pose_a, dtype=np.float64)
    pose_b = np.asarray(pose_b, dtype=np.float64)
    rot = rotvec_to_matrix(pose_b[..., 3:6]) @ np.swapaxes(rotvec_to_matrix(pose_a[..., 3:6]), -1, -2)
    return np.concatenate(
        [pose_b[..., 0:3] - pose_a[..., 0:3], matrix_to_rotvec(rot), pose_b[..., 6:7]], axis=-1
    )


def apply_delta(pose: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Pose reached by applying a delta-pose action (..., 7) to ``pose`` (..., 7)."""
    pose = np.asarray(pose, dtype=np.float64)
    delta = np.asarray(delta, dtype=np.float64)
    rot = rotvec_to_matrix(delta[..., 3:6]) @ rotvec_to_matrix(pose[..., 3:6])
    return np.concatenate([pose[..., 0:3] + delta[..., 0:3], matrix_to_rotvec(rot), delta[..., 6:7]], axis=-1)


def euler_to_matrix(angles_rad: np.ndarray, convention: str = "ZYZ") -> np.ndarray:
    """Intrinsic Euler angles (..., 3) -> rotation matrices, e.g. "ZYZ" (Doosan A/B/C) or "XYZ"."""
    angles_rad = np.asarray(angles_rad, dtype=np.float64)
    if len(convention) != 3 or any(c not in "XYZ" for c in convention.upper()):
        raise ValueError(f"Euler convention must be three of X/Y/Z, got {convention!r}")
    axes = {"X": np.array([1.0, 0, 0]), "Y": np.array([0, 1.0, 0]), "Z": np.array([0, 0, 1.0])}
    result = np.broadcast_to(np.eye(3), angles_rad.shape[:-1] + (3, 3)).copy()
    for i, name in enumerate(convention.upper()):  # intrinsic: right-multiply successive rotations
        result = result @ rotvec_to_matrix(angles_rad[..., i : i + 1] * axes[name])
    return result


def extrinsic_euler_to_matrix(angles_rad: np.ndarray, axes: str) -> np.ndarray:
    """Extrinsic (fixed-axis) Euler angles (..., 3) -> rotation matrices, e.g. scipy's lowercase "xyz".

    Rotating about fixed axes a, b, c by angles (p, q, r) is the intrinsic sequence c, b, a by (r, q, p).
    """
    angles_rad = np.asarray(angles_rad, dtype=np.float64)
    return euler_to_matrix(angles_rad[..., ::-1], axes[::-1])


def rotvec_to_quaternion(rotvec: np.ndarray) -> np.ndarray:
    """Rotation vectors (..., 3) -> unit quaternions (..., 4) in ROS order ``[x, y, z, w]``."""
    rotvec = np.asarray(rotvec, dtype=np.float64)
    angle = np.linalg.norm(rotvec, axis=-1, keepdims=True)
    half = angle / 2.0
    # sin(half)/angle -> 1/2 as angle -> 0
    scale = np.where(
        angle < _SMALL_ANGLE, 0.5 - angle**2 / 48.0, np.sin(half) / np.where(angle == 0, 1, angle)
    )
    return np.concatenate([rotvec * scale, np.cos(half)], axis=-1)


def quaternion_to_rotvec(quaternion: np.ndarray) -> np.ndarray:
    """Quaternions (..., 4) in ROS order ``[x, y, z, w]`` (normalised here) -> rotation vectors (..., 3)."""
    q = np.asarray(quaternion, dtype=np.float64)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(norm < 1e-12):
        raise ValueError("zero-length quaternion")
    q = q / norm
    q = np.where(q[..., 3:4] < 0, -q, q)  # shortest rotation: angle in [0, pi]
    sin_half = np.linalg.norm(q[..., :3], axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(sin_half, q[..., 3:4])
    scale = np.where(sin_half < 1e-12, 2.0, angle / np.where(sin_half < 1e-12, 1.0, sin_half))
    return q[..., :3] * scale


def pose_from_ros(pose_msg: Any, gripper: float) -> np.ndarray:
    """A ``geometry_msgs/Pose`` (metres, quaternion; any object with its fields) -> internal 7-D pose.

    The result is ``[x, y, z (mm), rotation vector (rad), gripper]``. A zero quaternion gives a non-finite
    rotation, so callers that validate finiteness reject the pose instead of guessing one.
    """
    p, q = pose_msg.position, pose_msg.orientation
    try:
        rotvec = quaternion_to_rotvec(np.array([q.x, q.y, q.z, q.w], dtype=np.float64))
    except ValueError:
        rotvec = np.full(3, np.nan)
    position_mm = np.array([p.x, p.y, p.z], dtype=np.float64) * 1000.0
    return np.concatenate([position_mm, rotvec, [float(gripper)]])
