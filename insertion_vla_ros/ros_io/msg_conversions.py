"""Conversions between the ``insertion_vla_msgs`` messages and numpy arrays / torch tensors.

Writes use ``array.array`` (see ``array_fields``); reads return zero-copy, read-only numpy views where the
wire dtype allows it. Every reader validates the shape and dtype fields against the payload and raises
``ValueError`` on any mismatch: nothing is silently reshaped or truncated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from contracts.constants import NS_PER_S
from insertion_vla_ros.ros_io.array_fields import bytes_field, from_array_field, to_array_field
from insertion_vla_ros.ros_io.time_conversions import ns_to_stamp, stamp_to_ns

_WIRE_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"), "bfloat16": np.dtype("<u2")}


def _tensor_bytes(features: Any) -> tuple[np.ndarray, str, tuple[int, ...]]:
    """Contiguous little-endian array, wire dtype name and shape of a numpy array or torch tensor."""
    if hasattr(features, "detach"):  # torch.Tensor, without importing torch for numpy callers
        import torch

        tensor = features.detach().to("cpu").contiguous()
        shape = tuple(tensor.shape)
        if tensor.dtype == torch.bfloat16:
            return tensor.view(torch.int16).numpy(), "bfloat16", shape
        if tensor.dtype not in (torch.float16, torch.float32):
            raise ValueError(f"VL features must be float32, float16 or bfloat16, got {tensor.dtype}")
        features = tensor.numpy()
    array = np.asarray(features)
    if array.dtype not in (np.float32, np.float16):
        raise ValueError(f"VL features must be float32, float16 or bfloat16, got {array.dtype}")
    name = "float32" if array.dtype == np.float32 else "float16"
    return np.ascontiguousarray(array, dtype=_WIRE_DTYPES[name]), name, tuple(array.shape)


def vl_features_to_msg(
    features: Any,
    *,
    stamp_ns: int,
    sequence: int,
    camera_names: Sequence[str],
    image_stamps_ns: Sequence[int],
    instruction: str,
    model_fingerprint: str,
    inference_time_s: float,
    frame_id: str = "vlm",
) -> Any:
    """Build a ``VLFeatures`` message from a ``[tokens, hidden]`` array or tensor (f32, f16 or bf16)."""
    from insertion_vla_msgs.msg import VLFeatures

    if len(camera_names) != len(image_stamps_ns):
        raise ValueError(f"{len(camera_names)} camera names but {len(image_stamps_ns)} image stamps")
    payload, dtype, shape = _tensor_bytes(features)
    msg = VLFeatures()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.sequence = int(sequence)
    msg.camera_names = [str(name) for name in camera_names]
    msg.image_stamps = [ns_to_stamp(ns) for ns in image_stamps_ns]
    msg.instruction = instruction
    msg.model_fingerprint = model_fingerprint
    msg.shape = [int(dim) for dim in shape]
    msg.dtype = dtype
    msg.data = bytes_field(payload)
    msg.inference_time_s = float(inference_time_s)
    return msg


def vl_features_from_msg(msg: Any) -> np.ndarray:
    """The feature tensor of a ``VLFeatures`` message as numpy (float32/float16 views; bfloat16 -> float32).

    Raises ``ValueError`` for an unknown dtype or a payload whose size does not match ``shape``.
    """
    dtype = _WIRE_DTYPES.get(msg.dtype)
    if dtype is None:
        raise ValueError(f"VLFeatures dtype {msg.dtype!r} is not one of {sorted(_WIRE_DTYPES)}")
    shape = tuple(int(dim) for dim in msg.shape)
    if not shape:
        raise ValueError("VLFeatures shape is empty")
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(msg.data) != expected:
        raise ValueError(
            f"VLFeatures payload is {len(msg.data)} bytes, shape {list(shape)} x {msg.dtype} needs {expected}"
        )
    values = from_array_field(msg.data, np.uint8).view(dtype).reshape(shape)
    if msg.dtype == "bfloat16":  # bfloat16 is the top half of a float32
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values


def action_chunk_to_msg(
    actions: np.ndarray,
    *,
    stamp_ns: int,
    sequence: int,
    vl_sequence: int,
    vl_age_s: float,
    inference_time_s: float,
    step_dt_s: float,
    action_names: Sequence[str],
    status: int,
    status_reason: str = "",
    safety_clipped: int = 0,
    frame_id: str = "base",
) -> Any:
    """Build an ``ActionChunk`` message from a ``[horizon, len(action_names)]`` array."""
    from insertion_vla_msgs.msg import ActionChunk

    actions = np.asarray(actions, dtype=np.float32)
    if actions.ndim != 2 or actions.shape[1] != len(action_names):
        raise ValueError(f"actions {actions.shape} do not match {len(action_names)} action names")
    msg = ActionChunk()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.sequence = int(sequence)
    msg.vl_sequence = int(vl_sequence)
    msg.vl_age_s = float(vl_age_s)
    msg.inference_time_s = float(inference_time_s)
    msg.step_dt_s = float(step_dt_s)
    msg.horizon = int(actions.shape[0])
    msg.action_names = [str(name) for name in action_names]
    msg.actions = to_array_field(actions, np.float32)
    msg.status = int(status)
    msg.status_reason = status_reason
    msg.safety_clipped = int(safety_clipped)
    return msg


def action_chunk_from_msg(msg: Any) -> np.ndarray:
    """The ``[horizon, dims]`` action array of an ``ActionChunk`` (read-only view); validates the sizes."""
    dims = len(msg.action_names)
    if dims == 0:
        raise ValueError("ActionChunk has no action_names")
    expected = int(msg.horizon) * dims
    if len(msg.actions) != expected:
        raise ValueError(
            f"ActionChunk holds {len(msg.actions)} values, horizon {msg.horizon} x {dims} needs {expected}"
        )
    return from_array_field(msg.actions, np.float32).reshape(int(msg.horizon), dims)


def sensor_samples_to_msg(
    samples: np.ndarray, *, first_stamp_ns: int, sample_rate_hz: float, frame_id: str = "needle_sensor"
) -> Any:
    """Build a ``SensorSamples`` message from ``[n, channels]`` samples starting at ``first_stamp_ns``."""
    from insertion_vla_msgs.msg import SensorSamples

    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 2 or samples.shape[0] == 0:
        raise ValueError(f"sensor samples must be [n >= 1, channels], got {samples.shape}")
    if not sample_rate_hz > 0:
        raise ValueError(f"sample rate must be positive, got {sample_rate_hz}")
    msg = SensorSamples()
    msg.header.stamp = ns_to_stamp(first_stamp_ns)
    msg.header.frame_id = frame_id
    msg.sample_rate_hz = float(sample_rate_hz)
    msg.num_samples = int(samples.shape[0])
    msg.num_channels = int(samples.shape[1])
    msg.data = to_array_field(samples, np.float32)
    return msg


def sample_stamps_ns(first_stamp_ns: int, num_samples: int, sample_rate_hz: float) -> np.ndarray:
    """Stamps of ``num_samples`` consecutive samples: ``first + round(i * 1e9 / rate)``."""
    offsets = np.rint(np.arange(num_samples, dtype=np.float64) * (NS_PER_S / sample_rate_hz)).astype(np.int64)
    return np.int64(first_stamp_ns) + offsets


def sensor_samples_from_msg(msg: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(stamps_ns [n], samples [n, channels])`` of a ``SensorSamples`` message; validates sizes and rate."""
    n, channels = int(msg.num_samples), int(msg.num_channels)
    if n == 0 or channels == 0:
        raise ValueError(f"SensorSamples is empty ({n} samples x {channels} channels)")
    if not msg.sample_rate_hz > 0:
        raise ValueError(f"SensorSamples sample_rate_hz must be positive, got {msg.sample_rate_hz}")
    if len(msg.data) != n * channels:
        raise ValueError(f"SensorSamples holds {len(msg.data)} values, {n} x {channels} needs {n * channels}")
    samples = from_array_field(msg.data, np.float32).reshape(n, channels)
    return sample_stamps_ns(stamp_to_ns(msg.header.stamp), n, msg.sample_rate_hz), samples


def controller_status_to_msg(stamp_ns: int, node_name: str, **fields: Any) -> Any:
    """Build a ``ControllerStatus``; unnamed float fields are NaN, counters 0. Unknown names raise."""
    from insertion_vla_msgs.msg import ControllerStatus

    msg = ControllerStatus()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.node_name = node_name
    for name in msg.get_fields_and_field_types():
        if isinstance(getattr(msg, name), float):
            setattr(msg, name, float("nan"))
    for name, value in fields.items():
        if name not in msg.get_fields_and_field_types():
            raise ValueError(f"ControllerStatus has no field {name!r}")
        current = getattr(msg, name)
        setattr(msg, name, type(current)(value))
    return msg
