"""Write a small synthetic rosbag2 (sqlite3 or MCAP) on the rig's topics, with ``rosbags`` (no ROS needed).

Motion follows :func:`training.fixtures.synthetic_pose`. ``defect`` injects one bad-data case
(``missing_camera``, ``unreadable_frame``, ``non_monotonic``, ``nan_sensor``, ``too_short``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from contracts import topics
from contracts.bag_types import build_typestore
from contracts.constants import CAMERA_NAMES, SENSOR_RATE_HZ
from contracts.episode import encode_jpeg
from models.pose_math import rotvec_to_quaternion
from training.fixtures import synthetic_frame, synthetic_pose


def encode_raw(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """An RGB frame as the pixel array of a raw ``sensor_msgs/Image`` in ``encoding``."""
    alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
    layouts = {
        "rgb8": lambda: rgb,
        "bgr8": lambda: rgb[:, :, ::-1],
        "rgba8": lambda: np.concatenate([rgb, alpha], axis=2),
        "bgra8": lambda: np.concatenate([rgb[:, :, ::-1], alpha], axis=2),
        "mono8": lambda: rgb[:, :, :1],
    }
    return layouts[encoding]()


def decoded_reference(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """What a correct decoder returns for a frame written with :func:`encode_raw`."""
    return np.repeat(rgb[:, :, :1], 3, axis=2) if encoding == "mono8" else rgb


def make_bag(
    path: str | os.PathLike,
    storage: str = "mcap",
    speed: float = 5.0,
    duration_s: float = 2.0,
    start_ns: int = 1_700_000_000_000_000_000,
    cameras: Sequence[str] = CAMERA_NAMES,
    compressed: bool = False,
    channels: int = 1026,
    image_size: int = 32,
    instruction: str | None = "Perform Red_point insertion task",
    defect: str | None = None,
    encodings: Sequence[str] = ("rgb8", "bgr8"),
) -> Path:
    """Write a bag folder at ``path`` and return it.

    Raw frames of camera ``c`` use ``encodings[c % len(encodings)]`` (rgb8, bgr8, rgba8, bgra8, mono8;
    mono8 frames carry the red channel of :func:`training.fixtures.synthetic_frame`).
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    store = build_typestore()
    Image = store.types["sensor_msgs/msg/Image"]
    CompressedImage = store.types["sensor_msgs/msg/CompressedImage"]
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    Samples = store.types["insertion_vla_msgs/msg/SensorSamples"]
    PoseStamped = store.types["geometry_msgs/msg/PoseStamped"]
    Pose = store.types["geometry_msgs/msg/Pose"]
    Point = store.types["geometry_msgs/msg/Point"]
    Quaternion = store.types["geometry_msgs/msg/Quaternion"]
    String = store.types["std_msgs/msg/String"]

    if defect == "too_short":
        duration_s = 0.3
    rng = np.random.default_rng(7)

    def header(stamp: int) -> object:
        return Header(stamp=Time(sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000), frame_id="base")

    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    messages: list[tuple[int, object, object]] = []  # (log time, connection, message)
    with Writer(Path(path), version=9, storage_plugin=plugin) as writer:
        image_type = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
        for c, camera in enumerate(cameras):
            if defect == "missing_camera" and c == 2:
                continue
            topic = topics.camera_topic(camera) + ("/compressed" if compressed else "")
            conn = writer.add_connection(topic, image_type, typestore=store)
            times = np.arange(0.01 * c, duration_s, 0.1)
            for i, t in enumerate(times):
                stamp = start_ns + round(t * 1e9)
                rgb = synthetic_frame(speed, i, image_size)
                if compressed:
                    data = encode_jpeg(rgb)
                    if defect == "unreadable_frame" and c == 1 and i == 3:
                        data = b"\x00broken"
                    msg = CompressedImage(
                        header=header(stamp), format="jpeg", data=np.frombuffer(data, np.uint8)
                    )
                else:
                    encoding = encodings[c % len(encodings)]
                    pixels = encode_raw(rgb, encoding)
                    if defect == "unreadable_frame" and c == 1 and i == 3:
                        pixels = pixels[:5]  # data shorter than height * step
                    msg = Image(
                        header=header(stamp),
                        height=image_size,
                        width=image_size,
                        encoding=encoding,
                        is_bigendian=0,
                        step=image_size * pixels.shape[2],
                        data=np.ascontiguousarray(pixels).reshape(-1),
                    )
                messages.append((stamp + 2_000_000, conn, msg))
        sensor_conn = writer.add_connection(topics.SENSOR_TOPIC, topics.SENSOR_TYPE, typestore=store)
        per_msg = topics.SENSOR_SAMPLES_PER_MESSAGE
        n_msgs = int(duration_s * 650) // per_msg
        starts = [start_ns + round(m * per_msg * 1e9 / 650) for m in range(n_msgs)]
        if defect == "non_monotonic":
            starts[5], starts[6] = starts[6], starts[5]
        for m, stamp in enumerate(starts):
            data = rng.random((per_msg, channels)).astype(np.float32)
            data[:, 0] = speed / 10.0
            if defect == "nan_sensor" and m == 4:
                data[2, -1] = np.nan
            msg = Samples(
                header=header(stamp),
                sample_rate_hz=SENSOR_RATE_HZ,
                num_samples=per_msg,
                num_channels=channels,
                data=data.reshape(-1),
            )
            messages.append((start_ns + round((m + 1) * per_msg * 1e9 / 650), sensor_conn, msg))
        pose_conn = writer.add_connection(topics.POSE_TOPIC, topics.POSE_TYPE, typestore=store)
        pose_t = np.arange(0.0, duration_s, 0.01)
        for t, pose in zip(pose_t, synthetic_pose(pose_t, speed)):
            q = rotvec_to_quaternion(pose[3:6])
            msg = PoseStamped(
                header=header(start_ns + round(t * 1e9)),
                pose=Pose(
                    position=Point(x=pose[0] / 1000.0, y=pose[1] / 1000.0, z=pose[2] / 1000.0),
                    orientation=Quaternion(x=q[0], y=q[1], z=q[2], w=q[3]),
                ),
            )
            messages.append((start_ns + round(t * 1e9) + 1_000_000, pose_conn, msg))
        if instruction is not None:
            conn = writer.add_connection(topics.INSTRUCTION_TOPIC, topics.INSTRUCTION_TYPE, typestore=store)
            messages.append((start_ns, conn, String(data=instruction)))
        for log_time, conn, msg in sorted(messages, key=lambda m: m[0]):
            writer.write(conn, log_time, store.serialize_cdr(msg, conn.msgtype))
    return Path(path)
