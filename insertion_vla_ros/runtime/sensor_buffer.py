"""Ring buffer of force/OCT sensor samples keyed by sample stamp, with causal windows (no rclpy).

Messages carry 1..N consecutive samples; each sample's stamp is ``first + i / rate``. The buffer keeps the
stream in stamp order and counts what it drops, each reason on its own: a sample whose stamp equals a
stored one is a duplicate, an older one is out of order; a jump of more than 1.5 sample periods counts the
samples missing in between as a gap. ``clear()`` (a clock jump) starts a new stream, and so does a step of
the stamps by more than ``STREAM_JUMP_S`` either way (its samples may arrive before the clock's jump is
seen): the step across it is neither a gap nor out of order, it is counted as a stream jump. Non-finite
samples are stored (the window reports them) and counted. ``window(t, W)`` returns the W newest samples
with stamp <= t, plus what is wrong with them, if anything: incomplete, stale, gappy, non-finite, or a
sensor rate (declared by the stream, or measured over the window) that differs from the expected one by
more than ``rate_tolerance``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from contracts.constants import NS_PER_S

STREAM_JUMP_S = 1.0
"""A step of the stamps larger than this (either way) starts a new stream instead of counting losses."""


@dataclass(frozen=True)
class SensorWindow:
    """A causal window: ``samples [W, C]`` (a copy), their ``stamps_ns [W]``, and its defects.

    ``count`` is how many samples with stamp <= t were available (up to W); ``problem`` is empty when the
    window is complete, contiguous, fresh, finite and at the expected rate, and otherwise names the first
    defect found, starting with ``sensor_window_incomplete``, ``sensor_rate_mismatch``, ``sensor_stale``,
    ``sensor_window_gap`` or ``sensor_window_nonfinite``.
    """

    samples: np.ndarray
    stamps_ns: np.ndarray
    count: int
    problem: str = ""

    @property
    def ok(self) -> bool:
        """Whether the window can be given to the policy."""
        return not self.problem


@dataclass
class SensorStats:
    """Cumulative counters of a :class:`SensorRingBuffer`."""

    messages: int = 0
    samples: int = 0
    gap_samples: int = 0
    out_of_order_samples: int = 0
    duplicate_samples: int = 0
    nonfinite_samples: int = 0
    resets: int = 0
    stream_jumps: int = 0
    """Times the stamps jumped by more than ``STREAM_JUMP_S`` (a new stream starts, nothing is lost)."""
    declared_rate_hz: float = float("nan")
    """Rate the newest message declared (``SensorSamples.sample_rate_hz``), NaN when none did."""

    @property
    def dropped_samples(self) -> int:
        """Samples missing from the stream (gaps) or dropped (duplicates, out of order)."""
        return self.gap_samples + self.out_of_order_samples + self.duplicate_samples


class SensorRingBuffer:
    """Fixed-capacity, thread-safe store of the newest sensor samples in stamp order."""

    def __init__(
        self,
        capacity: int,
        channels: int,
        sample_rate_hz: float,
        rate_tolerance: float | None = None,
        jump_s: float = STREAM_JUMP_S,
    ) -> None:
        if capacity < 1 or channels < 1:
            raise ValueError(f"capacity and channels must be >= 1, got {capacity}, {channels}")
        if not sample_rate_hz > 0:
            raise ValueError(f"sample rate must be positive, got {sample_rate_hz}")
        self.capacity = int(capacity)
        self.channels = int(channels)
        self.sample_rate_hz = float(sample_rate_hz)
        self.period_ns = NS_PER_S / self.sample_rate_hz
        self.rate_tolerance = rate_tolerance
        self.jump_ns = int(jump_s * NS_PER_S)
        self._data = np.zeros((self.capacity, self.channels), dtype=np.float32)
        self._stamps = np.zeros(self.capacity, dtype=np.int64)
        self._finite = np.ones(self.capacity, dtype=bool)
        self._next = 0  # slot the next sample goes to
        self._size = 0
        self._lock = threading.Lock()
        self.stats = SensorStats()

    def __len__(self) -> int:
        return self._size

    @property
    def newest_stamp_ns(self) -> int | None:
        """Stamp of the newest stored sample (``None`` when empty)."""
        with self._lock:
            return None if self._size == 0 else int(self._stamps[(self._next - 1) % self.capacity])

    def clear(self) -> None:
        """Forget every stored sample and start a new stream (counters are kept; no gap across it)."""
        with self._lock:
            self._next = 0
            self._size = 0
            self.stats.resets += 1

    def add(self, stamps_ns: np.ndarray, samples: np.ndarray, declared_rate_hz: float | None = None) -> int:
        """Append ``samples [n, C]`` stamped ``stamps_ns [n]`` (ascending); returns how many were stored.

        ``declared_rate_hz`` is the rate the message says its samples have (kept for the window check).
        """
        samples = np.asarray(samples)
        stamps_ns = np.asarray(stamps_ns, dtype=np.int64)
        if samples.ndim != 2 or samples.shape[1] != self.channels or samples.shape[0] != stamps_ns.shape[0]:
            raise ValueError(
                f"expected [n, {self.channels}] samples and n stamps, got {samples.shape}, {stamps_ns.shape}"
            )
        finite = np.isfinite(samples).all(axis=1)
        with self._lock:
            self.stats.messages += 1
            self.stats.samples += int(samples.shape[0])
            self.stats.nonfinite_samples += int((~finite).sum())
            if declared_rate_hz is not None:
                self.stats.declared_rate_hz = float(declared_rate_hz)
            newest = int(self._stamps[(self._next - 1) % self.capacity]) if self._size else None
            if newest is not None and stamps_ns.size and abs(int(stamps_ns[0]) - newest) > self.jump_ns:
                # the stream itself jumped (a sim reset, a bag loop, a clock jump): a new stream, whose
                # step from the old one is neither lost samples nor out of order
                self.stats.stream_jumps += 1
                self._next, self._size, newest = 0, 0, None
            keep = np.ones(stamps_ns.shape[0], dtype=bool)
            duplicate = np.zeros(stamps_ns.shape[0], dtype=bool)
            if newest is not None:
                keep = stamps_ns > newest
                duplicate = stamps_ns == newest
            # stamps within one message are ascending by construction; guard anyway
            if stamps_ns.shape[0] > 1:
                steps = np.diff(stamps_ns)
                keep[1:] &= steps > 0
                duplicate[1:] |= steps == 0
            duplicate &= ~keep
            self.stats.duplicate_samples += int(duplicate.sum())
            self.stats.out_of_order_samples += int((~keep & ~duplicate).sum())
            stamps_ns, samples, finite = stamps_ns[keep], samples[keep], finite[keep]
            n = int(stamps_ns.shape[0])
            if n == 0:
                return 0
            steps = np.diff(stamps_ns) if newest is None else np.diff(stamps_ns, prepend=newest)
            missing = np.rint(steps / self.period_ns).astype(np.int64) - 1
            self.stats.gap_samples += int(missing[steps > 1.5 * self.period_ns].sum())
            if n >= self.capacity:
                keep_last = slice(-self.capacity, None)
                stamps_ns, samples, finite = stamps_ns[keep_last], samples[keep_last], finite[keep_last]
                n = self.capacity
            slots = (self._next + np.arange(n)) % self.capacity
            self._data[slots] = samples
            self._stamps[slots] = stamps_ns
            self._finite[slots] = finite
            self._next = int((self._next + n) % self.capacity)
            self._size = min(self.capacity, self._size + n)
            return n

    def window(
        self,
        t_ns: int,
        length: int,
        *,
        max_age_ns: int | None = None,
        gap_tolerance_samples: int = 0,
    ) -> SensorWindow:
        """Return the ``length`` newest samples with stamp <= ``t_ns`` (causal), checked.

        ``max_age_ns``: the newest sample of the window must be at most this far before ``t_ns``.
        ``gap_tolerance_samples``: how many missing samples the window may span before it is rejected.
        The returned arrays are copies (safe to use after the lock is released).
        """
        if length < 1:
            raise ValueError(f"window length must be >= 1, got {length}")
        with self._lock:
            size = self._size
            if size == 0:
                return SensorWindow(
                    np.zeros((0, self.channels), np.float32),
                    np.zeros(0, np.int64),
                    0,
                    f"sensor_window_incomplete: 0/{length} samples",
                )
            oldest = (self._next - size) % self.capacity
            ordered = (oldest + np.arange(size)) % self.capacity  # logical order: oldest .. newest
            stamps = self._stamps[ordered]
            end = int(np.searchsorted(stamps, t_ns, side="right"))  # samples [0, end) are <= t
            start = max(0, end - length)
            take = ordered[start:end]
            samples = self._data[take].copy()
            window_stamps = stamps[start:end].copy()
            finite = self._finite[take]
        count = end - start
        problem = ""
        if count < length:
            problem = f"sensor_window_incomplete: {count}/{length} samples"
        elif rate := self._rate_problem(window_stamps):
            problem = rate
        elif max_age_ns is not None and t_ns - int(window_stamps[-1]) > max_age_ns:
            age = (t_ns - int(window_stamps[-1])) / NS_PER_S
            problem = f"sensor_stale: newest sample {age:.3f} s before tick > {max_age_ns / NS_PER_S:.3f} s"
        else:
            span_samples = (int(window_stamps[-1]) - int(window_stamps[0])) / self.period_ns
            missing = int(round(span_samples)) - (length - 1)
            if missing > gap_tolerance_samples:
                problem = f"sensor_window_gap: {missing} samples missing > {gap_tolerance_samples} tolerated"
            elif not finite.all():
                problem = f"sensor_window_nonfinite: {int((~finite).sum())} samples with NaN/Inf"
        return SensorWindow(samples, window_stamps, count, problem)

    def _rate_problem(self, stamps: np.ndarray) -> str:
        """``sensor_rate_mismatch: ...`` when the declared or measured rate is off by > rate_tolerance."""
        if self.rate_tolerance is None:
            return ""
        expected, tolerance = self.sample_rate_hz, self.rate_tolerance
        declared = self.stats.declared_rate_hz
        if np.isfinite(declared) and abs(declared - expected) > tolerance * expected:
            return (
                f"sensor_rate_mismatch: the stream declares {declared:g} Hz, the checkpoint expects "
                f"{expected:g} Hz (tolerance {tolerance:.0%})"
            )
        span_s = (int(stamps[-1]) - int(stamps[0])) / NS_PER_S
        if len(stamps) > 1 and span_s > 0:
            measured = (len(stamps) - 1) / span_s
            # Only a rate too high shows here; missing samples (a rate too low) are the gap check's.
            if measured > expected * (1 + tolerance):
                return (
                    f"sensor_rate_mismatch: the window measures {measured:.0f} Hz, the checkpoint expects "
                    f"{expected:g} Hz (tolerance {tolerance:.0%})"
                )
        return ""
