"""Approximate-time camera set selection: newest set, skew, missing cameras, out-of-order stamps."""

from __future__ import annotations

import threading

import pytest

from insertion_vla_ros.runtime.camera_sync import CameraQueues, select_camera_set

MS = 1_000_000


def test_newest_complete_set_within_slop():
    stamps = {
        "a": [100 * MS, 200 * MS, 300 * MS],
        "b": [105 * MS, 205 * MS, 305 * MS],
        "c": [98 * MS, 198 * MS],  # c has not delivered its 300 ms frame yet
    }
    result = select_camera_set(stamps, 10 * MS)
    assert result.ok
    assert result.stamps_ns == {"a": 200 * MS, "b": 205 * MS, "c": 198 * MS}
    assert result.skew_ns == 7 * MS
    assert result.newest_ns == 205 * MS
    assert result.offsets_ns == {"a": 5 * MS, "b": 0, "c": 7 * MS}
    assert result.reason == ""


def test_skew_too_large_names_the_late_camera():
    stamps = {"a": [1000 * MS], "b": [1002 * MS], "c": [900 * MS]}
    result = select_camera_set(stamps, 20 * MS)
    assert not result.ok
    assert result.skew_ns == 102 * MS
    assert result.worst_camera() == "c"
    assert "c 102.0 ms behind" in result.reason
    assert "a " not in result.reason.split("(")[1]  # a is within slop of b, not blamed


def test_slop_boundary_is_inclusive():
    stamps = {"a": [0, 50 * MS], "b": [50 * MS + 20 * MS]}
    assert select_camera_set(stamps, 20 * MS).stamps_ns == {"a": 50 * MS, "b": 70 * MS}
    assert not select_camera_set(stamps, 20 * MS - 1).ok


def test_missing_camera_reported():
    result = select_camera_set({"a": [1], "b": [], "c": [2]}, MS)
    assert not result.ok and result.missing == ("b",)
    assert "b" in result.reason


def test_stopped_camera_ages_out():
    now = 10_000 * MS
    stamps = {"a": [now - 50 * MS], "b": [now - 2_000 * MS, now - 1_900 * MS]}
    result = select_camera_set(stamps, 100 * MS, now_ns=now, max_age_ns=1_000 * MS)
    assert result.missing == ("b",)
    assert "within 1 s" in result.reason
    # without the age limit, b's old frames would not match a's new one either (skew)
    assert not select_camera_set(stamps, 100 * MS).ok


def test_future_images_are_not_used():
    now = 1_000 * MS
    stamps = {"a": [900 * MS, 1_100 * MS], "b": [905 * MS, 1_100 * MS]}
    result = select_camera_set(stamps, 10 * MS, now_ns=now)
    assert result.stamps_ns == {"a": 900 * MS, "b": 905 * MS}


def test_out_of_order_stamps_in_any_order():
    ordered = select_camera_set({"a": [10, 20, 30], "b": [11, 21, 31]}, 2)
    shuffled = select_camera_set({"a": [30, 10, 20], "b": [21, 31, 11]}, 2)
    assert ordered.stamps_ns == shuffled.stamps_ns == {"a": 30, "b": 31}


def test_older_anchor_used_when_newest_frames_do_not_match():
    stamps = {"a": [100, 200], "b": [101, 260]}
    assert select_camera_set(stamps, 5).stamps_ns == {"a": 100, "b": 101}


def test_invalid_arguments():
    with pytest.raises(ValueError):
        select_camera_set({}, 1)
    with pytest.raises(ValueError):
        select_camera_set({"a": [1]}, -1)


def test_queues_keep_newest_by_stamp_and_count_out_of_order():
    queues = CameraQueues(["a", "b"], depth=3)
    for stamp in (10, 30, 20, 40):
        queues.add("a", stamp, f"a{stamp}")
    queues.add("b", 39, "b39")
    queues.add("b", 39, "b39-again")  # same stamp replaces
    assert queues.out_of_order["a"] == 1
    assert queues.received == {"a": 4, "b": 2}
    result = queues.select(5)
    assert result.stamps_ns == {"a": 40, "b": 39}
    assert queues.items(result.stamps_ns) == ["a40", "b39-again"]
    queues.add("a", 5, "too old")  # older than everything in a full queue: evicted at once
    assert queues.items({"a": 5, "b": 39}) is None
    assert queues.select(100).stamps_ns == {"a": 40, "b": 39}


def test_queues_thread_safe_under_concurrent_adds():
    queues = CameraQueues(["a"], depth=4)

    def writer(offset: int) -> None:
        for i in range(500):
            queues.add("a", offset + 2 * i, i)

    threads = [threading.Thread(target=writer, args=(k,)) for k in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert queues.received["a"] == 1000
    assert queues.select(0).stamps_ns == {"a": 999}


def test_queue_arguments_validated():
    with pytest.raises(ValueError):
        CameraQueues(["a", "a"], 2)
    with pytest.raises(ValueError):
        CameraQueues(["a"], 0)
