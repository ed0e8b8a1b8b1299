"""LatestWorker: the newest item wins, errors are reported, stop ends the thread."""

from __future__ import annotations

import threading

from insertion_vla_ros.latest_worker import LatestWorker


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
