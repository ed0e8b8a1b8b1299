"""Process settings of a node: what is applied, what is refused, and how diagnostics show it."""

from __future__ import annotations

import os
import threading

import pytest

from insertion_vla_ros.nodes.process_tuning import apply_process_tuning, make_executor, report_process_tuning
from insertion_vla_ros.ros_io.diagnostics import Level, TaskStatus


def test_affinity_reaches_every_thread_and_nothing_else_changes_by_default():
    before = os.sched_getaffinity(0)
    core = min(before)
    started = threading.Event()
    stop = threading.Event()
    seen = {}

    def other():
        started.set()
        stop.wait(10)
        seen["affinity"] = os.sched_getaffinity(0)

    thread = threading.Thread(target=other)
    thread.start()
    started.wait(5)
    try:
        assert apply_process_tuning({"cpu_affinity": [-1], "nice": 0, "realtime_priority": 0}) == ([], [])
        applied, refused = apply_process_tuning({"cpu_affinity": [core]})
        assert applied == [f"cpu_affinity [{core}]"] and not refused
        assert os.sched_getaffinity(0) == {core}
    finally:
        stop.set()
        thread.join()
        os.sched_setaffinity(0, before)
    assert seen["affinity"] == {core}  # a thread that existed before was pinned too


def test_refused_settings_are_reported_not_raised():
    applied, refused = apply_process_tuning({"cpu_affinity": [4095]})
    assert not applied and "cpu_affinity [4095]" in refused[0]
    task = TaskStatus("control loop")
    report_process_tuning(task, (applied, refused))
    assert task.level == Level.WARN and "process settings refused" in task.message
    if os.geteuid() != 0:  # root may raise its priority; an unprivileged user gets a clear refusal
        _, refused = apply_process_tuning({"realtime_priority": 10})
        assert "realtime_priority 10" in refused[0] and "CAP_SYS_NICE" in refused[0]


@pytest.mark.parametrize(
    "kind, threads, name",
    [
        ("single", 1, "SingleThreadedExecutor"),
        ("multi", 2, "MultiThreadedExecutor"),
        ("events", 1, "EventsExecutor"),
        ("single", 3, "MultiThreadedExecutor"),
    ],
)
def test_executor_choice(ros_context, kind, threads, name):
    executor = make_executor({"executor": kind, "executor_threads": threads}, context=ros_context)
    assert type(executor).__name__ == name
    executor.shutdown()
