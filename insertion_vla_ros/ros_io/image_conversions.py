"""sensor_msgs/Image and CompressedImage <-> HxWx3 uint8 RGB arrays, without cv_bridge.

Raw encodings: rgb8, bgr8, rgba8, bgra8, mono8. Compressed formats: jpeg and png (the ``format`` string of
image_transport, e.g. "rgb8; jpeg compressed bgr8", is accepted). Anything else, a wrong ``step``,
truncated data or an undecodable payload raises ``ValueError`` naming the problem.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image as PilImage

from insertion_vla_ros.ros_io.array_fields import bytes_field, from_array_field
from insertion_vla_ros.ros_io.time_conversions import ns_to_stamp

# encoding -> (channels, channel order to take RGB from the raw channels; None = grey replicated)
_RAW_ENCODINGS: dict[str, tuple[int, tuple[int, ...] | None]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, None),
}
SUPPORTED_RAW_ENCODINGS = tuple(_RAW_ENCODINGS)
SUPPORTED_COMPRESSED_FORMATS = ("jpeg", "png")


def image_msg_to_rgb(msg: Any) -> np.ndarray:
    """Decode a ``sensor_msgs/Image`` into an HxWx3 uint8 RGB array (a copy)."""
    encoding = str(msg.encoding).lower()
    if encoding not in _RAW_ENCODINGS:
        raise ValueError(
            f"unsupported image encoding {msg.encoding!r}; supported: {', '.join(SUPPORTED_RAW_ENCODINGS)}"
        )
    channels, order = _RAW_ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ValueError(f"image is empty ({width}x{height})")
    if step < width * channels:
        raise ValueError(f"image step {step} is smaller than width {width} x {channels} bytes per pixel")
    if len(msg.data) != step * height:
        raise ValueError(
            f"image data is {len(msg.data)} bytes, step {step} x height {height} needs {step * height}"
        )
    rows = from_array_field(msg.data, np.uint8).reshape(height, step)
    pixels = rows[:, : width * channels].reshape(height, width, channels)
    if order is None:
        return np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels[:, :, list(order)])


def compressed_msg_to_rgb(msg: Any) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` (jpeg or png) into an HxWx3 uint8 RGB array."""
    fmt = str(msg.format).lower()
    if not any(name in fmt for name in SUPPORTED_COMPRESSED_FORMATS):
        raise ValueError(f"unsupported compressed format {msg.format!r}; supported: jpeg, png")
    payload = from_array_field(msg.data, np.uint8).tobytes()
    if not payload:
        raise ValueError("compressed image has no data")
    try:
        with PilImage.open(io.BytesIO(payload)) as image:
            image.load()
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as error:
        raise ValueError(f"cannot decode {msg.format!r} image: {error}") from error


def any_image_msg_to_rgb(msg: Any) -> np.ndarray:
    """Decode either an Image or a CompressedImage message (told apart by their fields)."""
    if hasattr(msg, "encoding"):
        return image_msg_to_rgb(msg)
    return compressed_msg_to_rgb(msg)


def rgb_to_image_msg(rgb: np.ndarray, *, stamp_ns: int, frame_id: str = "", encoding: str = "rgb8") -> Any:
    """Encode an HxWx3 uint8 RGB array as a ``sensor_msgs/Image`` (rgb8, bgr8 or mono8)."""
    from sensor_msgs.msg import Image

    rgb = _check_rgb(rgb)
    if encoding == "rgb8":
        pixels = rgb
    elif encoding == "bgr8":
        pixels = rgb[:, :, ::-1]
    elif encoding == "mono8":
        pixels = np.asarray(PilImage.fromarray(rgb).convert("L"))
    else:
        raise ValueError(f"cannot encode to {encoding!r}; use rgb8, bgr8 or mono8")
    pixels = np.ascontiguousarray(pixels)
    msg = Image()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(pixels.strides[0])
    msg.data = bytes_field(pixels)
    return msg


def rgb_to_compressed_msg(rgb: np.ndarray, *, stamp_ns: int, frame_id: str = "", fmt: str = "jpeg") -> Any:
    """Encode an HxWx3 uint8 RGB array as a ``sensor_msgs/CompressedImage`` (jpeg or png)."""
    from sensor_msgs.msg import CompressedImage

    rgb = _check_rgb(rgb)
    if fmt not in SUPPORTED_COMPRESSED_FORMATS:
        raise ValueError(f"cannot compress to {fmt!r}; use jpeg or png")
    buffer = io.BytesIO()
    PilImage.fromarray(rgb, mode="RGB").save(buffer, format="JPEG" if fmt == "jpeg" else "PNG", quality=92)
    msg = CompressedImage()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.format = fmt
    msg.data = bytes_field(buffer.getvalue())
    return msg


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 RGB array, got {rgb.dtype} {rgb.shape}")
    return rgb
