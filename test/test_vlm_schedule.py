"""The VLM scheduling rule vlm_node and the simulated VLM share: once per period, never queued."""

from __future__ import annotations

import pytest

from insertion_vla_ros.runtime.vlm_schedule import SimulatedVlm, VlmSchedule

MS = 1_000_000


def test_a_busy_vlm_remembers_one_request_and_never_queues_more():
    schedule = VlmSchedule()
    assert schedule.period_elapsed()  # idle: start now
    assert not schedule.period_elapsed() and not schedule.period_elapsed()  # busy: remembered once
    assert schedule.inference_done()  # the remembered request starts right away
    assert not schedule.inference_done()  # and nothing else was queued
    assert schedule.period_elapsed()


def test_cancel_drops_the_remembered_request():
    schedule = VlmSchedule()
    schedule.period_elapsed()
    schedule.period_elapsed()
    schedule.cancel()
    assert not schedule.inference_done()


@pytest.mark.parametrize(
    ("period_ms", "latency_ms", "starts_ms"),
    [
        (1700, 1500, [0, 1700, 3400, 5100]),  # faster than the period: once per period
        (1700, 1800, [0, 1800, 3600, 5400]),  # slower: back to back, never queued
        (100, 0, [0, 100, 200, 300]),  # zero latency: features usable at their own tick
    ],
)
def test_simulated_vlm_start_times_follow_the_rule(period_ms, latency_ms, starts_ms):
    starts = []

    def extract(start_ns):
        starts.append(start_ns // MS)
        return start_ns, start_ns

    vlm = SimulatedVlm(extract, period_ms * MS, latency_ms * MS)
    ready = []
    for tick in range(0, starts_ms[-1] + 1, 100):
        ready += [(r.capture_ns // MS, tick) for r in vlm.advance(tick * MS)]
    assert starts == starts_ms
    # each result becomes usable at the first tick at or after start + latency
    assert all(0 <= tick - (capture + latency_ms) < 100 for capture, tick in ready)


def test_an_inference_without_input_is_skipped_and_retried_next_period():
    calls = []

    def extract(start_ns):
        calls.append(start_ns // MS)
        return None if start_ns < 250 * MS else (start_ns, "features")

    vlm = SimulatedVlm(extract, 200 * MS, 50 * MS)
    for tick in range(0, 701, 100):
        vlm.advance(tick * MS)
    assert calls == [0, 200, 400, 600]
    assert [r.capture_ns // MS for r in vlm.results] == [400, 600]
