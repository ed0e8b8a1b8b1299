"""Fast, validated moves between numpy arrays and the array fields of ROS 2 Python messages.

rclpy's generated setters check lists and numpy arrays element by element (a 10 MB float32 field took
~440 ms that way); an ``array.array`` of the right type code is accepted as is (~10 ms). Reading goes
the other way without a copy: ``numpy.frombuffer`` over the field's ``array.array``.
No rclpy import here: these helpers work on any object with the fields.
"""

from __future__ import annotations

import array

import numpy as np

_TYPECODES = {np.dtype("float32"): "f", np.dtype("float64"): "d", np.dtype("uint8"): "B"}


def to_array_field(values: np.ndarray, dtype: np.dtype | str) -> array.array:
    """Pack ``values`` (any shape) into an ``array.array`` for a message field of element type ``dtype``."""
    dtype = np.dtype(dtype)
    typecode = _TYPECODES.get(dtype)
    if typecode is None:
        raise ValueError(f"no array.array type code for {dtype}")
    packed = array.array(typecode)
    contiguous = np.ascontiguousarray(values, dtype=dtype.newbyteorder("="))
    packed.frombytes(memoryview(contiguous.reshape(-1)).cast("B"))  # one copy, no temporary bytes
    return packed


def bytes_field(data: bytes | bytearray | memoryview | np.ndarray) -> array.array:
    """Wrap raw bytes (or a uint8 array) for a ``uint8[]`` message field without per-element checks."""
    packed = array.array("B")
    if isinstance(data, np.ndarray):
        data = memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8))
    packed.frombytes(data)
    return packed


def from_array_field(field: array.array | bytes | list, dtype: np.dtype | str) -> np.ndarray:
    """Read-only numpy view of a message array field (zero copy when the field is an ``array.array``)."""
    dtype = np.dtype(dtype)
    if isinstance(field, list):  # a message built with a plain list (slow path, still correct)
        return np.asarray(field, dtype=dtype)
    return np.frombuffer(field, dtype=dtype)
