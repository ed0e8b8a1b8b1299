"""Timestamp unit handling for sources that store bare numbers."""

from __future__ import annotations

import numpy as np

from contracts.constants import NS_PER_S

# Magnitude thresholds: a 2020s epoch time is ~1.7e9 s, ~1.7e12 ms, ~1.7e15 us, ~1.7e18 ns.
_SECONDS_BELOW = 1e11
_MILLIS_BELOW = 1e14
_MICROS_BELOW = 1e17


def to_ns(values: np.ndarray | float, unit: str = "auto") -> np.ndarray:
    """Convert stamps to int64 ns; ``unit`` is s/ms/us/ns or "auto" (chosen from the largest magnitude).

    "auto" treats values below 1e11 as seconds (epoch or relative), below 1e14 as milliseconds, below
    1e17 as microseconds, and larger values as nanoseconds. Non-finite values become int64 min, which
    sorts first and is dropped as a non-finite row by the caller's checks.
    """
    array = np.asarray(values, dtype=np.float64)
    if unit == "auto":
        finite = array[np.isfinite(array)]
        peak = float(np.max(np.abs(finite))) if finite.size else 0.0
        unit = (
            "s"
            if peak < _SECONDS_BELOW
            else "ms"
            if peak < _MILLIS_BELOW
            else "us"
            if peak < _MICROS_BELOW
            else "ns"
        )
    scale = {"s": NS_PER_S, "ms": 1e6, "us": 1e3, "ns": 1.0}.get(unit)
    if scale is None:
        raise ValueError(f"unknown time unit {unit!r} (s, ms, us, ns or auto)")
    out = np.full(array.shape, np.iinfo(np.int64).min, dtype=np.int64)
    finite_mask = np.isfinite(array)
    out[finite_mask] = np.round(array[finite_mask] * scale).astype(np.int64)
    return out
