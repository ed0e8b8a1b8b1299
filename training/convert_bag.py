"""Convert rosbag2 recordings (sqlite3 or MCAP, read with ``rosbags``) of the rig's topics into episodes.

One bag = one episode. Topics (defaults from :mod:`contracts.topics`, overridable):

- ``/cameras/<name>/image_raw`` (``sensor_msgs/msg/Image``: rgb8, bgr8, rgba8, bgra8, mono8) or
  ``/cameras/<name>/image_raw/compressed`` (``CompressedImage``: jpeg, png); stamp = ``header.stamp``;
- ``/needle_sensor/samples`` (``insertion_vla_msgs/msg/SensorSamples``): sample i of a message is stamped
  ``header.stamp + i / sample_rate_hz``;
- ``/robot/pose`` (``geometry_msgs/msg/PoseStamped``): metres + quaternion -> mm + rotation vector;
- ``/vla/instruction`` (``std_msgs/msg/String``): the first one is the episode instruction.

Message stamps (capture/acquisition time) are used, never the bag's receive time, except for a message
whose header stamp is zero (reported). The custom message types are taken from the bag's stored
definitions when present (``AnyReader``), otherwise registered from the ``msg/*.msg`` files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from contracts import topics
from contracts.bag_types import build_typestore
from contracts.constants import CAMERA_NAMES, GRIPPER_DEFAULT, SENSOR_RATE_HZ
from contracts.episode import encode_jpeg
from models.pose_math import pose_from_ros
from training.conversion_report import ConversionReport, EpisodeReport
from training.episode_builder import CleaningPolicy, RawEpisode, build_episode
from training.image_codec import ImageDecodeError, decode_compressed, decode_raw, is_jpeg

CAMERA_TOPIC_RE = re.compile(r"^/cameras/(?P<name>[^/]+)/image_raw(?P<compressed>/compressed)?$")


@dataclass
class BagOptions:
    """Topic names and interpretation of a bag."""

    cameras: tuple[str, ...] | None = CAMERA_NAMES
    """Cameras the episode must have, in model order; None = every camera topic found, sorted by name."""
    sensor_topic: str = topics.SENSOR_TOPIC
    pose_topic: str = topics.POSE_TOPIC
    instruction_topic: str = topics.INSTRUCTION_TOPIC
    instruction: str | None = None
    """Used when the bag has no instruction message (otherwise such a bag is skipped)."""
    gripper: float = GRIPPER_DEFAULT
    msg_dir: Path | None = None
    """Folder of the custom ``*.msg`` files (default: this repository's ``msg/msg``)."""


def find_bags(root: str | os.PathLike) -> list[Path]:
    """rosbag2 folders (holding metadata.yaml) at or under ``root``."""
    root = Path(root)
    if (root / "metadata.yaml").is_file():
        return [root]
    return sorted(p.parent for p in root.rglob("metadata.yaml"))


def _stamp_ns(header, log_time_ns: int, counter: dict[str, int], label: str) -> int:
    stamp = int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
    if stamp == 0:
        counter[label] = counter.get(label, 0) + 1
        return int(log_time_ns)
    return stamp


def _failing(error: Exception) -> Callable[[], bytes]:
    def load() -> bytes:
        raise error

    return load


def _frame_loader(msg, compressed: bool) -> Callable[[], bytes]:
    """Encode now (raw frames are large) and return a loader of the JPEG, or one that raises."""
    try:
        if compressed:
            data = bytes(msg.data)
            rgb = decode_compressed(data)
            jpeg = data if is_jpeg(data) else encode_jpeg(rgb)
        else:
            jpeg = encode_jpeg(
                decode_raw(msg.data, int(msg.height), int(msg.width), str(msg.encoding), int(msg.step))
            )
    except ImageDecodeError as error:
        return _failing(error)
    return lambda: jpeg


@dataclass
class _Streams:
    frames: dict[str, list] = field(default_factory=dict)
    sensor_stamps: list[np.ndarray] = field(default_factory=list)
    sensor: list[np.ndarray] = field(default_factory=list)
    rates: set[float] = field(default_factory=set)
    pose_stamps: list[int] = field(default_factory=list)
    poses: list[np.ndarray] = field(default_factory=list)
    instructions: list[str] = field(default_factory=list)
    zero_stamps: dict[str, int] = field(default_factory=dict)
    malformed_sensor: int = 0


def read_bag(
    bag: Path, options: BagOptions, report: EpisodeReport, progress: bool = False
) -> RawEpisode | None:
    """Read one bag into raw streams; None (reason in ``report``) when it cannot be used."""
    from rosbags.highlevel import AnyReader

    store = build_typestore(options.msg_dir)
    with AnyReader([bag], default_typestore=store) as reader:
        camera_conns = {}
        for conn in reader.connections:
            match = CAMERA_TOPIC_RE.match(conn.topic)
            if match:
                name = match["name"]
                if name in camera_conns:
                    report.repairs.append(f"camera {name}: raw and compressed topics both present; using raw")
                    if match["compressed"]:
                        continue
                camera_conns[name] = (conn, bool(match["compressed"]))
        cameras = list(options.cameras) if options.cameras else sorted(camera_conns)
        missing = [c for c in cameras if c not in camera_conns]
        if missing:
            report.skip(f"missing camera topic(s) for {missing} (found {sorted(camera_conns)})")
            return None
        wanted = {options.sensor_topic, options.pose_topic, options.instruction_topic}
        conns = [c for c in reader.connections if c.topic in wanted]
        conns += [camera_conns[c][0] for c in cameras]
        conn_camera = {camera_conns[c][0].id: (c, camera_conns[c][1]) for c in cameras}
        streams = _Streams(frames={c: [] for c in cameras})
        total = sum(c.msgcount for c in conns)
        messages = reader.messages(connections=conns)
        for conn, log_time, rawdata in tqdm(
            messages, total=total, desc=bag.name, unit="msg", disable=not progress
        ):
            try:
                msg = reader.deserialize(rawdata, conn.msgtype)
            except Exception as error:  # noqa: BLE001 -- a bad message must not end the whole bag
                report.repairs.append(f"{conn.topic}: undecodable message dropped ({error})")
                continue
            if conn.id in conn_camera:
                camera, compressed = conn_camera[conn.id]
                stamp = _stamp_ns(msg.header, log_time, streams.zero_stamps, conn.topic)
                streams.frames[camera].append((stamp, _frame_loader(msg, compressed)))
            elif conn.topic == options.sensor_topic:
                _add_sensor(msg, log_time, streams)
            elif conn.topic == options.pose_topic:
                _add_pose(msg, log_time, streams, options.gripper)
            elif conn.topic == options.instruction_topic:
                streams.instructions.append(str(msg.data))
    for topic, count in streams.zero_stamps.items():
        report.repairs.append(f"{topic}: {count} messages with a zero header stamp used the bag receive time")
    if streams.malformed_sensor:
        report.repairs.append(f"sensor: {streams.malformed_sensor} malformed messages dropped")
    instruction = streams.instructions[0] if streams.instructions else options.instruction
    if instruction is None:
        report.skip(f"no instruction on {options.instruction_topic} and none given")
        return None
    if len(set(streams.instructions)) > 1:
        report.repairs.append(
            f"instruction changed during the bag; using the first of {sorted(set(streams.instructions))}"
        )
    if len(streams.rates) > 1:
        report.repairs.append(
            f"sensor sample rate varies {sorted(streams.rates)}; stamps follow each message"
        )
    channels = streams.sensor[0].shape[1] if streams.sensor else 0
    return RawEpisode(
        name=report.name,
        instruction=instruction,
        cameras=cameras,
        frames=streams.frames,
        sensor_stamps_ns=np.concatenate(streams.sensor_stamps) if streams.sensor else np.zeros(0, np.int64),
        sensor=np.concatenate(streams.sensor) if streams.sensor else np.zeros((0, channels), np.float32),
        sensor_rate_hz=float(min(streams.rates)) if streams.rates else SENSOR_RATE_HZ,
        pose_stamps_ns=np.asarray(streams.pose_stamps, dtype=np.int64),
        poses=np.asarray(streams.poses, dtype=np.float64).reshape(-1, 7),
        source="rosbag2",
        metadata={"bag": str(bag)},
    )


def _add_sensor(msg, log_time: int, streams: _Streams) -> None:
    n, c = int(msg.num_samples), int(msg.num_channels)
    data = np.asarray(msg.data, dtype=np.float32)
    rate = float(msg.sample_rate_hz)
    if (
        n == 0
        or c == 0
        or data.size != n * c
        or rate <= 0
        or (streams.sensor and streams.sensor[0].shape[1] != c)
    ):
        streams.malformed_sensor += 1
        return
    start = _stamp_ns(msg.header, log_time, streams.zero_stamps, "sensor")
    streams.sensor_stamps.append(start + np.round(np.arange(n) * 1e9 / rate).astype(np.int64))
    streams.sensor.append(data.reshape(n, c))
    streams.rates.add(rate)


def _add_pose(msg, log_time: int, streams: _Streams, gripper: float) -> None:
    streams.pose_stamps.append(_stamp_ns(msg.header, log_time, streams.zero_stamps, "pose"))
    # A zero quaternion comes back non-finite, so cleaning drops and reports the row.
    streams.poses.append(pose_from_ros(msg.pose, gripper))


def convert_bags(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    options: BagOptions | None = None,
    policy: CleaningPolicy | None = None,
    bags: Sequence[Path] | None = None,
    progress: bool = True,
) -> ConversionReport:
    """Convert every bag at or under ``root`` into ``out_dir``; the report is also saved there as JSON."""
    options = options or BagOptions()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ConversionReport("convert-bag")
    bag_list = list(bags) if bags is not None else find_bags(root)
    for bag in tqdm(bag_list, desc="bags", unit="bag", disable=not progress):
        entry = EpisodeReport(source=str(bag), name=bag.name)
        report.episodes.append(entry)
        try:
            raw = read_bag(bag, options, entry, progress=progress)
            if raw is not None:
                build_episode(raw, out_dir, entry, policy)
        except Exception as error:  # noqa: BLE001 -- one unreadable bag is reported, the rest still convert
            entry.skip(f"unreadable bag: {type(error).__name__}: {error}")
    report.save(out_dir / "conversion_report.json")
    return report
