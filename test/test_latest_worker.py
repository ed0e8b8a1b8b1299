"""LatestWorker (newest item wins, errors reported, stop ends the thread) and how the tick picks features."""

from __future__ import annotations

import threading

from insertion_vla_ros.runtime.latest_worker import LatestWorker


def test_items_submitted_while_busy_are_replaced_by_the_newest():
    release = threading.Event()
    started = threading.Event()
    seen: list[int] = []

    def process(item: int) -> None:
        started.set()
        release.wait(5.0)
        seen.append(item)

    worker = LatestWorker(process, lambda item, error: None)
    assert worker.submit(1)
    assert started.wait(5.0)  # 1 is running and blocks
    for item in (2, 3, 4):
        worker.submit(item)  # 2 and 3 are replaced before they start
    release.set()
    assert worker.wait_idle(5.0)
    worker.stop()
    assert seen == [1, 4]
    assert worker.superseded == 2
    assert worker.processed == 2


def test_errors_go_to_the_handler_and_the_thread_goes_on():
    errors: list[tuple[int, str]] = []
    seen: list[int] = []

    def process(item: int) -> None:
        if item < 0:
            raise ValueError(f"bad item {item}")
        seen.append(item)

    worker = LatestWorker(process, lambda item, error: errors.append((item, str(error))))
    worker.submit(-1)
    assert worker.wait_idle(5.0)
    worker.submit(7)
    assert worker.wait_idle(5.0)
    worker.stop()
    assert errors == [(-1, "bad item -1")]
    assert seen == [7]


def test_stop_joins_the_thread_and_later_items_are_refused():
    worker = LatestWorker(lambda item: None, lambda item, error: None, name="test-worker")
    worker.stop()
    assert not worker._thread.is_alive()
    assert worker.submit(1) is False


def test_the_tick_takes_features_by_capture_stamp_not_by_arrival():
    from insertion_vla_ros.runtime.controller import FeatureEntry, newest_entry
    from insertion_vla_ros.runtime.hold_policy import FeatureInfo

    mismatched = FeatureEntry(FeatureInfo(2, 2_000, "other-model"), None)
    good_but_older = FeatureEntry(FeatureInfo(1, 1_000, "model"), object())  # encoded after #2 arrived
    assert newest_entry([], 5_000) is None
    assert newest_entry([mismatched, good_but_older], 5_000) is mismatched  # the tick holds: mismatch
    assert newest_entry([mismatched, good_but_older], 1_500) is good_but_older  # #2 not captured yet
    assert newest_entry([mismatched, good_but_older], 500) is mismatched  # none usable: newest overall
    again = FeatureEntry(FeatureInfo(3, 2_000, "model"), object())
    assert newest_entry([mismatched, again], 5_000) is again  # equal stamps: the later arrival
