"""Sensor ring buffer: batched and single samples, gaps, reordering, NaN, causal windows."""

from __future__ import annotations

import numpy as np
import pytest

from insertion_vla_ros.ros_io.msg_conversions import sample_stamps_ns
from insertion_vla_ros.runtime.sensor_buffer import SensorRingBuffer

RATE = 650.0
PERIOD = 1e9 / RATE
C = 4


def batch(first_index: int, n: int, t0: int = 10**9) -> tuple[np.ndarray, np.ndarray]:
    stamps = sample_stamps_ns(t0 + round(first_index * PERIOD), n, RATE)
    samples = np.arange(first_index, first_index + n, dtype=np.float32)[:, None].repeat(C, axis=1)
    return stamps, samples


def test_batched_and_single_messages_make_one_stream():
    buf = SensorRingBuffer(200, C, RATE)
    buf.add(*batch(0, 13))
    for i in range(13, 20):
        buf.add(*batch(i, 1))
    buf.add(*batch(20, 13))
    assert len(buf) == 33
    assert buf.stats.messages == 9 and buf.stats.samples == 33
    assert buf.stats.dropped_samples == 0
    stamps, _ = batch(32, 1)
    window = buf.window(int(stamps[0]), 33)
    assert window.ok, window.problem
    np.testing.assert_array_equal(window.samples[:, 0], np.arange(33))


def test_window_is_causal_and_exactly_w():
    buf = SensorRingBuffer(500, C, RATE)
    buf.add(*batch(0, 130))
    stamps, _ = batch(0, 130)
    tick = int(stamps[99]) + 1  # between sample 99 and 100
    window = buf.window(tick, 65)
    assert window.ok
    assert window.samples.shape == (65, C)
    np.testing.assert_array_equal(window.samples[:, 0], np.arange(35, 100))
    assert (window.stamps_ns <= tick).all()
    # exactly on a stamp: that sample is included
    assert buf.window(int(stamps[99]), 65).samples[-1, 0] == 99


def test_incomplete_window():
    buf = SensorRingBuffer(500, C, RATE)
    buf.add(*batch(0, 40))
    window = buf.window(int(batch(39, 1)[0][0]), 65)
    assert not window.ok and window.count == 40
    assert window.problem == "sensor_window_incomplete: 40/65 samples"
    assert SensorRingBuffer(10, C, RATE).window(0, 5).problem.startswith("sensor_window_incomplete: 0/5")


def test_gaps_counted_and_rejected_in_window():
    buf = SensorRingBuffer(500, C, RATE)
    buf.add(*batch(0, 50))
    buf.add(*batch(55, 50))  # samples 50..54 missing
    assert buf.stats.gap_samples == 5
    assert buf.stats.dropped_samples == 5
    tick = int(batch(104, 1)[0][0])
    window = buf.window(tick, 65)
    assert window.problem == "sensor_window_gap: 5 samples missing > 0 tolerated"
    assert buf.window(tick, 65, gap_tolerance_samples=5).ok
    # a window entirely after the gap is fine
    assert buf.window(tick, 50).ok


def test_out_of_order_and_duplicate_samples_dropped_and_counted():
    buf = SensorRingBuffer(500, C, RATE)
    buf.add(*batch(0, 13))
    buf.add(*batch(26, 13))  # arrives before 13..25
    buf.add(*batch(13, 13))  # late: dropped, counted
    buf.add(*batch(38, 2))  # 38 is a duplicate, 39 is new
    assert buf.stats.gap_samples == 13
    assert buf.stats.out_of_order_samples == 13  # each reason has its own counter
    assert buf.stats.duplicate_samples == 1
    assert buf.stats.dropped_samples == 27
    assert len(buf) == 27
    stored = buf.window(int(batch(39, 1)[0][0]), 27).samples[:, 0]
    np.testing.assert_array_equal(stored, np.r_[np.arange(13), np.arange(26, 40)])


def test_nan_detected_and_recovers():
    buf = SensorRingBuffer(500, C, RATE)
    stamps, samples = batch(0, 100)
    samples[80, 2] = np.nan
    samples[81, 0] = np.inf
    buf.add(stamps, samples)
    assert buf.stats.nonfinite_samples == 2
    window = buf.window(int(stamps[99]), 65)
    assert window.problem == "sensor_window_nonfinite: 2 samples with NaN/Inf"
    buf.add(*batch(100, 65))
    assert buf.window(int(batch(164, 1)[0][0]), 65).ok  # NaNs slid out of the window


def test_stale_window():
    buf = SensorRingBuffer(500, C, RATE)
    stamps, samples = batch(0, 100)
    buf.add(stamps, samples)
    late_tick = int(stamps[-1]) + 200_000_000
    window = buf.window(late_tick, 65, max_age_ns=50_000_000)
    assert window.problem.startswith("sensor_stale: newest sample 0.200 s")
    assert buf.window(late_tick, 65).ok  # age unchecked when not asked


def test_ring_wraps_and_keeps_newest():
    buf = SensorRingBuffer(100, C, RATE)
    for first in range(0, 1000, 13):
        buf.add(*batch(first, 13))
    assert len(buf) == 100
    newest = buf.newest_stamp_ns
    assert newest == int(batch(1000 - 1000 % 13 + 12, 1)[0][0]) if 1000 % 13 else True
    window = buf.window(newest, 65)
    assert window.ok
    assert np.all(np.diff(window.samples[:, 0]) == 1)
    assert buf.stats.dropped_samples == 0
    buf.add(*batch(5000, 300))  # one message larger than the ring
    assert len(buf) == 100 and buf.window(buf.newest_stamp_ns, 100).samples[0, 0] == 5200


def test_shape_validation():
    buf = SensorRingBuffer(10, C, RATE)
    with pytest.raises(ValueError):
        buf.add(np.zeros(2, np.int64), np.zeros((2, C + 1), np.float32))
    with pytest.raises(ValueError):
        SensorRingBuffer(10, C, 0.0)
