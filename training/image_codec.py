"""Decode ROS image payloads without ROS (training only; the ROS layer has its own conversion module).

Raw ``sensor_msgs/Image`` encodings: rgb8, bgr8, rgba8, bgra8, mono8. ``CompressedImage``: anything Pillow
reads (jpeg, png). Every function returns HxWx3 uint8 RGB or raises :class:`ImageDecodeError`.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


class ImageDecodeError(ValueError):
    """A frame cannot be decoded (unsupported encoding, truncated data, corrupt file)."""


def decode_raw(data: bytes | np.ndarray, height: int, width: int, encoding: str, step: int) -> np.ndarray:
    """Decode a raw ``sensor_msgs/Image`` payload to RGB."""
    channels = _CHANNELS.get(encoding.lower())
    if channels is None:
        raise ImageDecodeError(f"unsupported raw encoding {encoding!r} (supported: {sorted(_CHANNELS)})")
    buffer = np.frombuffer(
        bytes(data) if not isinstance(data, np.ndarray) else data.tobytes(), dtype=np.uint8
    )
    row = width * channels
    if step < row or buffer.size < step * height or height <= 0 or width <= 0:
        raise ImageDecodeError(
            f"{encoding} {width}x{height}: {buffer.size} bytes with step {step} is too short"
        )
    pixels = buffer[: step * height].reshape(height, step)[:, :row].reshape(height, width, channels)
    enc = encoding.lower()
    if enc == "mono8":
        return np.repeat(pixels, 3, axis=2)
    if enc.startswith("bgr"):
        pixels = pixels[:, :, 2::-1]
    return np.ascontiguousarray(pixels[:, :, :3])


def decode_compressed(data: bytes | np.ndarray) -> np.ndarray:
    """Decode JPEG/PNG bytes (``CompressedImage.data`` or a file) to RGB."""
    raw = bytes(data) if not isinstance(data, np.ndarray) else data.tobytes()
    try:
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageDecodeError(f"cannot decode compressed image ({error})") from error


def is_jpeg(data: bytes) -> bool:
    """Whether bytes start with the JPEG SOI marker (such frames are stored without re-encoding)."""
    return data[:3] == b"\xff\xd8\xff"
