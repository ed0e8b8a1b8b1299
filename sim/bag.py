"""Write a sim episode as a rosbag2 (MCAP by default) with the real topic layout, via ``rosbags``.

``BagEpisodeWriter`` has the same streaming methods as ``contracts.episode.EpisodeWriter``
(``add_frame``, ``add_sensor``, ``add_pose``, ``close``, ``abort``), so one loop can feed both.
Topics and types come from :mod:`contracts.topics` and :mod:`contracts.bag_types` (the custom
``insertion_vla_msgs`` types, registered from the ``.msg`` files).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys.store import Typestore

from contracts.bag_types import build_typestore
from contracts.constants import NS_PER_S, SENSOR_RATE_HZ
from contracts.topics import (
    IMAGE_TYPE,
    INSTRUCTION_TOPIC,
    INSTRUCTION_TYPE,
    POSE_FRAME_ID,
    POSE_TOPIC,
    POSE_TYPE,
    SENSOR_SAMPLES_PER_MESSAGE,
    SENSOR_TOPIC,
    SENSOR_TYPE,
    camera_topic,
)
from models.pose_math import rotvec_to_quaternion


def _qos(durability: QosDurability, depth: int) -> Qos:
    zero = QosTime(0, 0)
    return Qos(
        QosHistory.KEEP_LAST, depth, QosReliability.RELIABLE, durability, zero, zero,
        QosLiveliness.AUTOMATIC, zero, False,
    )  # fmt: skip


LATCHED_QOS = _qos(QosDurability.TRANSIENT_LOCAL, 1)
"""Offered QoS recorded for the instruction (latched: late joiners still receive it)."""
STREAM_QOS = _qos(QosDurability.VOLATILE, 10)


def pose_to_ros(pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Convert an internal pose (mm, rotation vector) to (position [3] in metres, quaternion xyzw)."""
    pose = np.asarray(pose, dtype=np.float64)
    return pose[0:3] / 1000.0, rotvec_to_quaternion(pose[3:6])


class BagEpisodeWriter:
    """Streams one episode into a rosbag2 folder; call ``close()`` (or ``abort()``)."""

    def __init__(
        self,
        path: str | os.PathLike,
        instruction: str,
        cameras: list[str],
        sensor_rate_hz: float = SENSOR_RATE_HZ,
        samples_per_message: int = SENSOR_SAMPLES_PER_MESSAGE,
        storage: StoragePlugin = StoragePlugin.MCAP,
        typestore: Typestore | None = None,
    ) -> None:
        self.path = Path(path)
        self.instruction = instruction
        self.sensor_rate_hz = float(sensor_rate_hz)
        self.samples_per_message = int(samples_per_message)
        self.typestore = typestore or build_typestore()
        self.types = self.typestore.types
        if self.path.exists():
            shutil.rmtree(self.path)
        self._writer = Writer(self.path, version=9, storage_plugin=storage)
        self._writer.open()
        add = self._writer.add_connection
        self._cameras = {
            name: add(
                camera_topic(name), IMAGE_TYPE, typestore=self.typestore, offered_qos_profiles=[STREAM_QOS]
            )
            for name in cameras
        }
        self._sensor = add(
            SENSOR_TOPIC, SENSOR_TYPE, typestore=self.typestore, offered_qos_profiles=[STREAM_QOS]
        )
        self._pose = add(POSE_TOPIC, POSE_TYPE, typestore=self.typestore, offered_qos_profiles=[STREAM_QOS])
        self._instruction = add(
            INSTRUCTION_TOPIC, INSTRUCTION_TYPE, typestore=self.typestore, offered_qos_profiles=[LATCHED_QOS]
        )
        self._instruction_written = False
        self._pending_stamps = np.zeros(0, np.int64)
        self._pending = np.zeros((0, 0), np.float32)
        self.counts: dict[str, int] = {}

    def _header(self, stamp_ns: int, frame_id: str) -> Any:
        time = self.types["builtin_interfaces/msg/Time"](
            sec=int(stamp_ns // NS_PER_S), nanosec=int(stamp_ns % NS_PER_S)
        )
        return self.types["std_msgs/msg/Header"](stamp=time, frame_id=frame_id)

    def _write(self, connection: Any, stamp_ns: int, message: Any) -> None:
        if not self._instruction_written:
            self._instruction_written = True
            self._write(self._instruction, stamp_ns, self.types[INSTRUCTION_TYPE](data=self.instruction))
        self._writer.write(
            connection, int(stamp_ns), self.typestore.serialize_cdr(message, connection.msgtype)
        )
        self.counts[connection.topic] = self.counts.get(connection.topic, 0) + 1

    def add_frame(self, camera: str, stamp_ns: int, rgb: np.ndarray) -> None:
        """Write one RGB frame (HxWx3 uint8) as ``sensor_msgs/Image`` rgb8."""
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 uint8 RGB image, got {rgb.dtype} {rgb.shape}")
        height, width = rgb.shape[:2]
        message = self.types[IMAGE_TYPE](
            header=self._header(stamp_ns, f"{camera}_optical_frame"),
            height=height,
            width=width,
            encoding="rgb8",
            is_bigendian=0,
            step=width * 3,
            data=np.ascontiguousarray(rgb).reshape(-1),
        )
        self._write(self._cameras[camera], stamp_ns, message)

    def add_sensor(self, stamps_ns: np.ndarray, samples: np.ndarray) -> None:
        """Queue sensor samples [n, C]; full batches of ``samples_per_message`` are written at once."""
        samples = np.asarray(samples, dtype=np.float32)
        stamps_ns = np.asarray(stamps_ns, dtype=np.int64).reshape(-1)
        if self._pending.size == 0:
            self._pending = np.zeros((0, samples.shape[1]), np.float32)
        self._pending = np.concatenate([self._pending, samples])
        self._pending_stamps = np.concatenate([self._pending_stamps, stamps_ns])
        full = self._pending.shape[0] // self.samples_per_message * self.samples_per_message
        for start in range(0, full, self.samples_per_message):
            self._write_sensor(slice(start, start + self.samples_per_message))
        self._pending, self._pending_stamps = self._pending[full:], self._pending_stamps[full:]

    def _write_sensor(self, rows: slice) -> None:
        batch, stamps = self._pending[rows], self._pending_stamps[rows]
        message = self.types[SENSOR_TYPE](
            header=self._header(int(stamps[0]), "needle_sensor"),
            sample_rate_hz=self.sensor_rate_hz,
            num_samples=batch.shape[0],
            num_channels=batch.shape[1],
            data=np.ascontiguousarray(batch).reshape(-1),
        )
        self._write(self._sensor, int(stamps[0]), message)

    def add_pose(self, stamp_ns: int, pose: np.ndarray) -> None:
        """Write one pose (internal 7-vector) as ``PoseStamped`` in metres + quaternion, frame ``base``."""
        position, quaternion = pose_to_ros(pose)
        t = self.types
        message = t[POSE_TYPE](
            header=self._header(stamp_ns, POSE_FRAME_ID),
            pose=t["geometry_msgs/msg/Pose"](
                position=t["geometry_msgs/msg/Point"](
                    x=float(position[0]), y=float(position[1]), z=float(position[2])
                ),
                orientation=t["geometry_msgs/msg/Quaternion"](
                    x=float(quaternion[0]),
                    y=float(quaternion[1]),
                    z=float(quaternion[2]),
                    w=float(quaternion[3]),
                ),
            ),
        )
        self._write(self._pose, stamp_ns, message)

    def close(self, extra_metadata: dict[str, Any] | None = None) -> Path:
        """Flush the last (partial) sensor batch and finish the bag; metadata is not stored in bags."""
        del extra_metadata
        if self._pending.shape[0]:
            self._write_sensor(slice(0, self._pending.shape[0]))
            self._pending = self._pending[:0]
        self._writer.close()
        return self.path

    def abort(self) -> None:
        """Close and delete the partial bag."""
        try:
            self._writer.close()
        finally:
            shutil.rmtree(self.path, ignore_errors=True)
