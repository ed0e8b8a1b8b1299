"""Write a small synthetic session in the original collection layout (see :mod:`training.convert_legacy`).

``defect`` injects one bad-data case: ``missing_camera``, ``unreadable_frame``, ``non_monotonic``,
``nan_sensor``, ``too_short``; ``None`` writes a clean session. Poses follow
:func:`training.fixtures.synthetic_pose`, written as the Meca500 writes them: mm and intrinsic x-y'-z''
Euler angles in degrees. :mod:`training.legacy_fixture_layouts` writes each original layout byte for byte.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from contracts.episode import encode_jpeg
from models.pose_math import rotvec_to_matrix
from training.fixtures import synthetic_frame, synthetic_pose

DEFECTS = ("missing_camera", "unreadable_frame", "non_monotonic", "nan_sensor", "too_short")


def matrix_to_meca500(matrix: np.ndarray) -> np.ndarray:
    """Meca500 alpha, beta, gamma (rad) of rotation matrices [..., 3, 3]: R = Rx(a) Ry(b) Rz(g), |b| < 90."""
    beta = np.arcsin(np.clip(matrix[..., 0, 2], -1.0, 1.0))
    alpha = np.arctan2(-matrix[..., 1, 2], matrix[..., 2, 2])
    gamma = np.arctan2(-matrix[..., 0, 1], matrix[..., 0, 0])
    return np.stack([alpha, beta, gamma], axis=-1)


def make_legacy_session(
    root: str | os.PathLike,
    task: str = "Red_point",
    stamp: str = "20240101_120000",
    speed: float = 5.0,
    duration_s: float = 2.0,
    start_s: float = 1_700_000_000.0,
    aline_channels: int = 1025,
    defect: str | None = None,
) -> Path:
    """Write ``root/<task>/data_collection_<stamp>/`` and return that folder."""
    if defect is not None and defect not in DEFECTS:
        raise ValueError(f"unknown defect {defect!r}; choose from {DEFECTS}")
    if defect == "too_short":
        duration_s = 0.3
    session = Path(root) / task / f"data_collection_{stamp}"
    session.mkdir(parents=True)
    rng = np.random.default_rng(zlib.crc32(f"{task}/{stamp}".encode()))
    for v in range(1, 6):
        if defect == "missing_camera" and v == 3:
            continue
        view = session / f"View{v}"
        view.mkdir()
        for i, t in enumerate(np.arange(0.01 * v, duration_s, 0.1)):
            path = view / f"view{v}_{start_s + t:.6f}.jpg"
            data = encode_jpeg(synthetic_frame(speed, i))
            if defect == "unreadable_frame" and v == 2 and i == 4:
                data = b"not a jpeg at all"
            path.write_bytes(data)
    pose_t = np.arange(0.0, duration_s, 0.01)
    poses = synthetic_pose(pose_t, speed)
    euler = np.rad2deg(matrix_to_meca500(rotvec_to_matrix(poses[:, 3:6])))
    lines = [
        "recv_timestamp,origin_timestamp,send_timestamp,force,"
        "joint_1,joint_2,joint_3,joint_4,joint_5,joint_6,pose_x,pose_y,pose_z,pose_a,pose_b,pose_r"
    ]
    for t, pose, angles in zip(pose_t, poses, euler):
        stamps = [start_s + t + 0.002, start_s + t, start_s + t + 0.001]
        values = stamps + [0.0] + [10.0 * j for j in range(6)] + list(pose[:3]) + list(angles)
        lines.append(",".join(f"{x:.9f}" for x in values))
    (session / f"robot_state_{stamp}.csv").write_text("\n".join(lines) + "\n")
    sensor_t = start_s + np.arange(0.0, duration_s, 1 / 650)
    forces = speed / 10.0 + 0.01 * rng.standard_normal(sensor_t.shape[0])
    alines = rng.random((sensor_t.shape[0], aline_channels)).astype(np.float32)
    if defect == "nan_sensor":
        alines[[10, 200, 300]] = np.nan
    if defect == "non_monotonic":
        sensor_t[[100, 101]] = sensor_t[[101, 100]]
        sensor_t[500] = sensor_t[499]
    np.savez(
        session / f"sensor_data_{stamp}.npz",
        timestamps=sensor_t,
        send_timestamps=sensor_t + 0.001,
        forces=forces,
        alines=alines,
    )
    return session
