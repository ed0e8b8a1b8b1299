"""Sessions written the way the users' original collection code writes them, with a known trajectory.

Each writer follows one original file (file names, CSV columns, number formatting, array names, dtypes,
image encodings, folder per camera), not the converter:

- :func:`write_v1_session`: Insertion_VLA ``Make_dataset/Total_reciver.py`` (``recv_all_<ts>/``);
- :func:`write_v3_session`: Insertion_VLAv3 ``Data_collection/data_collector.py`` (``data_collection_<ts>/``),
  optionally with the robot sender's ``robot_rt_<clock>.csv`` (``Data_collection/Robot_sender.py``);
- :func:`write_v4_episode`: Insertion_VLAv4 ``New_dataset/Robot_action.py`` (``episode_<ts>.h5``), and
  ``New_dataset/Trim_dataset.py``'s trimmed copy.

The robot follows :func:`meca_pose` (what the Meca500's ``GetPose`` returns: mm, and intrinsic x-y'-z''
Euler angles in degrees: a = 180, b = 2 + 4t, r = 30 + 10t). Frames of view ``v`` are filled with
:func:`view_colour` so a test can tell which camera a frame came from; ``right`` ZED frames are inverted.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contracts.episode import encode_jpeg

ZED_SERIAL_TO_VIEW = {"41182735": "View1", "49429257": "View2", "44377151": "View3", "49045152": "View4"}
START_S = 1_763_000_000.0
SENSOR_HZ = 650.0
ROBOT_HZ = 100.0
ALINE_CHANNELS = 1025
COLLECTOR_HEADER = [
    "recv_timestamp", "origin_timestamp", "send_timestamp", "force_placeholder",
    "joint_1", "joint_2", "joint_3", "joint_4", "joint_5", "joint_6",
    "pose_x", "pose_y", "pose_z", "pose_a", "pose_b", "pose_r",
]  # fmt: skip
SENDER_HEADER = [
    "timestamp",
    "joint_angle_1", "joint_angle_2", "joint_angle_3", "joint_angle_4", "joint_angle_5", "joint_angle_6",
    "EE_x", "EE_y", "EE_z", "EE_a", "EE_b", "EE_r",
]  # fmt: skip


@dataclass
class Written:
    """What a writer wrote: times are seconds since ``START_S`` (the known trajectory's clock)."""

    path: Path
    pose_t: np.ndarray
    sensor_t: np.ndarray
    forces: np.ndarray
    frame_t: dict[str, np.ndarray] = field(default_factory=dict)


def meca_pose(t: np.ndarray) -> np.ndarray:
    """Meca500 ``GetPose`` [N, 6] at times ``t`` (s): x, y, z (mm), a, b, r (deg, intrinsic x-y'-z'')."""
    t = np.asarray(t, dtype=np.float64)
    return np.stack(
        [
            169.0 + 2.0 * t,
            -22.0 - 1.0 * t,
            232.0 - 5.0 * t,
            np.full_like(t, 180.0),
            2.0 + 4.0 * t,
            30.0 + 10.0 * t,
        ],
        axis=-1,
    )


def meca_joints(t: np.ndarray) -> np.ndarray:
    """Joint angles [N, 6] (deg) that go with :func:`meca_pose` (values only; never converted)."""
    t = np.asarray(t, dtype=np.float64)
    return np.stack([-7.6 + t, 10.3 - t, -6.5 + 0 * t, 0.5 + 0 * t, 66.0 - 2 * t, -43.8 + t], axis=-1)


def sensor_force(t: np.ndarray) -> np.ndarray:
    """The force channel (N) at sensor times ``t``."""
    return 0.2 + 0.1 * np.sin(2.0 * np.asarray(t))


def view_colour(view: int) -> tuple[int, int, int]:
    """The RGB background of view ``view`` (1-based)."""
    return (40 * view, 250 - 40 * view, 90 + 20 * view)


def _frame(view: int, index: int, right: bool = False, size: int = 32) -> np.ndarray:
    frame = np.empty((size, size, 3), dtype=np.uint8)
    frame[:] = view_colour(view)
    frame[:, (index * 3) % (size - 4) :][:, :4] = 255
    return 255 - frame if right else frame


def _csv_rows(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)  # Python floats are written with repr(), as the originals do
        writer.writerow(header)
        writer.writerows(rows)


def _f32(values: np.ndarray) -> list[float]:
    """float32 payload values as the collectors print them (the sender packs joints/pose as ``<12f``)."""
    return [float(v) for v in np.asarray(values, dtype=np.float32)]


def _collector_csv(path: Path, t: np.ndarray) -> None:
    """``robot_state_<ts>.csv``: ``[time.time()] + struct.unpack('<ddf12f', payload)`` per message."""
    rows = []
    for ti, pose, joints in zip(t, meca_pose(t), meca_joints(t)):
        origin = START_S + ti  # the sender's GlobalClock: round(time.time(), 3)
        rows.append([origin + 0.0021537, origin, origin + 0.0004119, 0.0, *_f32(joints), *_f32(pose)])
    _csv_rows(path, COLLECTOR_HEADER, rows)


def write_robot_rt_csv(folder: Path, t: np.ndarray) -> Path:
    """``robot_rt_<clock.now():.3f>.csv`` of ``Robot_sender.py`` ``RtSampler``: ``f"{ts:.6f}"`` + q + p."""
    path = folder / f"robot_rt_{START_S + t[0]:.3f}.csv"
    rows = [
        [f"{START_S + ti:.6f}", *map(float, joints), *map(float, pose)]
        for ti, pose, joints in zip(t, meca_pose(t), meca_joints(t))
    ]
    _csv_rows(path, SENDER_HEADER, rows)
    return path


def _sensor_npz(path: Path, t: np.ndarray, seed: int, keys: str = "v3") -> np.ndarray:
    """``save_sensor_data_to_npz``: float64 stamps, float32 forces and [N, 1025] float32 A-lines."""
    rng = np.random.default_rng(seed)
    forces = sensor_force(t).astype(np.float32)
    alines = rng.random((t.shape[0], ALINE_CHANNELS), dtype=np.float32)
    stamps = START_S + t
    if keys == "v4":  # the v4 array names, as a user who re-saved v4 sensor arrays in an npz has them
        np.savez(path, timestamp=stamps, force=forces, aline=alines.astype(np.float16))
    else:
        np.savez(path, timestamps=stamps, send_timestamps=stamps + 0.0007, forces=forces, alines=alines)
    return forces


def _camera_times(duration_s: float, camera_hz: float, offset: float) -> np.ndarray:
    return np.round(np.arange(0.05 + offset, duration_s - 0.05, 1.0 / camera_hz), 3)


def write_v3_session(
    root: str | os.PathLike,
    task: str = "Eye_trocar",
    stamp: str = "20251115_002915",
    duration_s: float = 1.6,
    camera_hz: float = 5.0,
    pose_file: str = "robot_state",
    sensor_keys: str = "v3",
) -> Written:
    """``<root>/<task>/data_collection_<stamp>/`` as data_collector.py writes it.

    ``pose_file="robot_rt"`` puts the robot sender's own CSV there instead of the collector's (a sender
    that ran from 0.4 s before to 0.3 s after the episode); ``sensor_keys="v4"`` names the sensor arrays
    as v4 does.
    """
    session = Path(root) / task / f"data_collection_{stamp}"
    written = Written(session, np.zeros(0), np.zeros(0), np.zeros(0))
    for v in range(1, 6):
        (session / f"View{v}").mkdir(parents=True)
    for serial, view in ZED_SERIAL_TO_VIEW.items():
        v = int(view[-1])
        times = _camera_times(duration_s, camera_hz, 0.002 * v)
        written.frame_t[view] = times
        for i, ti in enumerate(times):
            path = session / view / f"ZED_{serial}_left_{START_S + ti:.3f}.jpg"
            path.write_bytes(encode_jpeg(_frame(v, i)))
    times = _camera_times(duration_s, camera_hz, 0.017)
    written.frame_t["View5"] = times
    for i, ti in enumerate(times):
        (session / "View5" / f"OAK_{START_S + ti:.3f}.jpg").write_bytes(encode_jpeg(_frame(5, i)))
    if pose_file == "robot_rt":
        written.pose_t = np.round(np.arange(-0.4, duration_s + 0.3, 1.0 / ROBOT_HZ), 3)
        write_robot_rt_csv(session, written.pose_t)
    else:
        written.pose_t = np.round(np.arange(0.0, duration_s, 1.0 / ROBOT_HZ), 3)
        _collector_csv(session / f"robot_state_{stamp}.csv", written.pose_t)
    written.sensor_t = np.arange(0.0, duration_s, 1.0 / SENSOR_HZ)
    written.forces = _sensor_npz(session / f"sensor_data_{stamp}.npz", written.sensor_t, 3, sensor_keys)
    return written


def write_v1_session(
    root: str | os.PathLike, task: str = "White_silicone_white_circle", stamp: str = "20251027_170308",
    duration_s: float = 1.6, camera_hz: float = 5.0,
) -> Written:  # fmt: skip
    """``<root>/<task>/recv_all_<stamp>/`` as Total_reciver.py writes it (ZED left+right, OAK, Unknown)."""
    session = Path(root) / task / f"recv_all_{stamp}"
    written = Written(session, np.zeros(0), np.zeros(0), np.zeros(0))
    for serial, view in ZED_SERIAL_TO_VIEW.items():
        v = int(view[-1])
        times = _camera_times(duration_s, camera_hz, 0.003 * v)
        written.frame_t[view] = times
        for side in ("left", "right"):
            (session / view / side).mkdir(parents=True)
            for i, ti in enumerate(times):
                path = session / view / side / f"zed_{serial}_{side}_{START_S + ti:.3f}.jpg"
                path.write_bytes(encode_jpeg(_frame(v, i, right=side == "right")))
    (session / "View5").mkdir()
    (session / "Unknown").mkdir()
    times = _camera_times(duration_s, camera_hz, 0.011)
    written.frame_t["View5"] = times
    for i, ti in enumerate(times):
        (session / "View5" / f"oak_CAM_A_{START_S + ti:.3f}.jpg").write_bytes(encode_jpeg(_frame(5, i)))
    (session / "Unknown" / f"usb_cam_{START_S:.3f}.jpg").write_bytes(encode_jpeg(_frame(6, 0)))
    written.pose_t = np.round(np.arange(0.0, duration_s, 1.0 / ROBOT_HZ), 3)
    _collector_csv(session / f"robot_state_{stamp}.csv", written.pose_t)
    written.sensor_t = np.arange(0.0, duration_s, 1.0 / SENSOR_HZ)
    npz = session / f"sensor_data_{stamp}_{int(START_S + written.sensor_t[0])}.npz"
    written.forces = _sensor_npz(npz, written.sensor_t, 1)
    return written


def v4_step_times(n_steps: int, loop_hz: float = 15.0) -> np.ndarray:
    """When Robot_action.py reads step k's data (s after ``rec.start()``): 0, then 0.5 s + (k-1) loops."""
    return np.concatenate([[0.0], 0.5 + np.arange(n_steps - 1) / loop_hz])


def _v4_images(obs, h5py, n_steps: int, cameras: int, image_format: str, black: tuple[int, int] | None):
    images = obs.create_group("images")
    for c in range(1, cameras + 1):
        frames = [_frame(c, k) for k in range(n_steps)]
        if black is not None and black[0] == c:
            frames[black[1]] = np.zeros_like(frames[0])  # the fallback frame of an empty/failed image
        if image_format == "raw":  # ff7920d/2b0d569: np.stack of RGB frames, lzf/gzip compressed
            images.create_dataset(f"camera{c}", data=np.stack(frames), compression="gzip", compression_opts=4)
            continue
        dataset = images.create_dataset(
            f"camera{c}", (n_steps,), dtype=h5py.special_dtype(vlen=np.dtype("uint8"))
        )
        for k, frame in enumerate(frames):
            dataset[k] = np.frombuffer(encode_jpeg(frame, quality=95), dtype=np.uint8)


def write_v4_episode(
    folder: str | os.PathLike,
    stamp: str = "20260106_134625",
    n_steps: int = 30,
    cameras: int = 3,
    image_format: str = "jpeg",
    sensor: bool = True,
    stamp_dtype: str = "float32",
    black_frame: tuple[int, int] | None = None,
) -> Written:
    """``<folder>/episode_<stamp>.h5`` as Robot_action.py's ``save_async`` writes it.

    Defaults are the format from 2026-01-06 (JPEG buffers, float32 stamps, sensor group); ``sensor=False,
    stamp_dtype="float64", image_format="raw"`` is the first version's. ``black_frame=(camera, step)``
    replaces one frame by the black fallback the recorder writes for an empty or failed frame.
    """
    import h5py

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"episode_{stamp}.h5"
    pose_t = v4_step_times(n_steps)
    stop_s = pose_t[-1] + 1.0 / 15.0  # the stop button is read one loop after the last step
    sensor_t = np.arange(int(stop_s * SENSOR_HZ)) / SENSOR_HZ
    forces = sensor_force(sensor_t).astype(np.float16)
    # clock.now() at rec.add(): after the 0.5 s sleep for step 0, a few ms after the reads for the others
    ts = np.round(START_S + pose_t + np.where(np.arange(n_steps) == 0, 0.5, 0.004), 3)
    with h5py.File(path, "w") as f:
        obs = f.create_group("observations")
        _v4_images(obs, h5py, n_steps, cameras, image_format, black_frame)
        dtype = np.float32 if stamp_dtype == "float32" else np.float64
        obs.create_dataset("qpos", data=meca_joints(pose_t).astype(dtype), compression="gzip", shuffle=True)
        obs.create_dataset("ee_pose", data=meca_pose(pose_t).astype(dtype), compression="gzip", shuffle=True)
        f.create_dataset("action", data=np.zeros((n_steps, 6), dtype), compression="gzip", shuffle=True)
        f.create_dataset("timestamp", data=ts.astype(dtype), compression="gzip", shuffle=True)
        if sensor:
            group = obs.create_group("sensor")
            rng = np.random.default_rng(4)
            group.create_dataset("force", data=forces, compression="gzip")
            alines = rng.random((sensor_t.shape[0], ALINE_CHANNELS)).astype(np.float16)
            group.create_dataset("aline", data=alines, compression="gzip", shuffle=True)
            group.create_dataset(
                "timestamp", data=(START_S + sensor_t).astype(np.float32), compression="gzip"
            )
    written = Written(path, pose_t, sensor_t, forces.astype(np.float64))
    written.frame_t = {f"camera{c}": pose_t for c in range(1, cameras + 1)}
    return written


def trim_v4_episode(source: Path, start: int, end: int) -> Path:
    """Trim_dataset.py ``trim_dataset``: frames [start, end), sensor force/aline cut by the same indices."""
    import h5py

    out = source.with_name(f"{source.stem}_trimmed_{start}_{end}.h5")
    with h5py.File(source, "r") as f_in, h5py.File(out, "w") as f_out:
        f_out.create_dataset("action", data=f_in["action"][start:end])
        f_out.create_dataset("timestamp", data=f_in["timestamp"][start:end])
        obs = f_out.create_group("observations")
        obs.create_dataset("qpos", data=f_in["observations/qpos"][start:end])
        obs.create_dataset("ee_pose", data=f_in["observations/ee_pose"][start:end])
        images = obs.create_group("images")
        for cam in sorted(f_in["observations/images"].keys()):
            frames = f_in["observations/images"][cam][start:end]
            images.create_dataset(cam, data=frames, dtype=h5py.special_dtype(vlen=np.uint8))
        sensor = obs.create_group("sensor")
        for key in ("force", "aline"):
            sensor.create_dataset(key, data=f_in["observations/sensor"][key][start:end])
    return out
