"""Process-level settings of a node for a steady loop on a busy CPU: executor, CPU affinity, priority.

``executor``: ``single`` (rclpy's SingleThreadedExecutor; MultiThreadedExecutor when ``executor_threads``
>= 2, as before), ``multi``, or ``events`` (``rclpy.experimental.EventsExecutor``: callbacks dispatched
from an event queue instead of a wait set rebuilt on every spin, in Jazzy and Kilted; not measurably
steadier on a busy 2-core machine, README "Performance", and under ``use_sim_time`` its timer skipped
ticks of a ``/clock`` stepped in 100 ms). ``cpu_affinity`` pins the process to cores (e.g. the action
expert on one core, the VLM on the others); ``nice`` and ``realtime_priority`` (``SCHED_FIFO``) raise its
priority. Each setting is applied when the node starts; one the system refuses (no permission, no such
core) leaves the process as it was and says so in the returned notes, which the node logs and shows in
its diagnostics.
"""

from __future__ import annotations

import os
from typing import Any

from insertion_vla_ros.ros_io.diagnostics import Level, TaskStatus
from insertion_vla_ros.ros_io.parameters import ParamSpec

EXECUTORS = ("single", "multi", "events")

PROCESS_PARAMETERS: list[ParamSpec] = [
    ParamSpec(
        "executor",
        "single",
        "single: SingleThreadedExecutor (MultiThreadedExecutor when executor_threads >= 2); multi; events: "
        "rclpy.experimental.EventsExecutor.",
        read_only=True,
        choices=EXECUTORS,
    ),
    ParamSpec(
        "cpu_affinity",
        [-1],
        "Cores this process may run on, e.g. [0] (-1 alone: all cores).",
        read_only=True,
        minimum=-1,
        maximum=4095,
    ),
    ParamSpec(
        "nice",
        0,
        "Process nice value (negative needs CAP_SYS_NICE).",
        read_only=True,
        minimum=-20,
        maximum=19,
    ),
    ParamSpec(
        "realtime_priority",
        0,
        "SCHED_FIFO priority of the process (0: normal scheduling; needs CAP_SYS_NICE or an rtprio limit).",
        read_only=True,
        minimum=0,
        maximum=99,
    ),
]


def make_executor(params: dict[str, Any], default_threads: int = 4, context: Any = None) -> Any:
    """The executor the parameters ask for (see the module docstring), on ``context`` (default: rclpy's)."""
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor

    kind = params.get("executor", "single")
    threads = int(params.get("executor_threads", default_threads))
    if kind == "events":
        try:
            from rclpy.experimental import EventsExecutor
        except ImportError as error:  # Humble's rclpy has none
            raise RuntimeError(
                "executor 'events' needs rclpy.experimental.EventsExecutor (ROS 2 Jazzy or newer); "
                "use executor 'single' here"
            ) from error
        return EventsExecutor(context=context)
    if kind == "multi" or threads >= 2:
        return MultiThreadedExecutor(num_threads=max(threads, 2), context=context)
    return SingleThreadedExecutor(context=context)


def _threads() -> list[int]:
    """Thread ids of this process.

    On Linux affinity, nice and scheduling policy belong to each thread, and threads started later
    (torch's pool, the VLM worker) inherit them from the thread that starts them.
    """
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def apply_process_tuning(params: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Apply affinity, nice and real-time priority to every thread of this process.

    Returns (applied, refused) notes. Call it before the node starts its own threads (model loading).
    """
    applied: list[str] = []
    refused: list[str] = []
    threads = _threads()
    cores = [int(c) for c in params.get("cpu_affinity", [-1])]
    if cores != [-1]:
        try:
            for tid in threads:
                os.sched_setaffinity(tid, set(cores))
            applied.append(f"cpu_affinity {sorted(os.sched_getaffinity(0))}")
        except (OSError, ValueError) as error:
            refused.append(f"cpu_affinity {cores}: {error}")
    nice = int(params.get("nice", 0))
    if nice:
        try:
            for tid in threads:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
            applied.append(f"nice {nice}")
        except OSError as error:
            refused.append(f"nice {nice}: {error.strerror or error} (needs CAP_SYS_NICE to go below 0)")
    priority = int(params.get("realtime_priority", 0))
    if priority:
        try:
            for tid in threads:
                os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
            applied.append(f"SCHED_FIFO {priority}")
        except OSError as error:
            refused.append(
                f"realtime_priority {priority}: {error.strerror or error} (needs CAP_SYS_NICE or "
                "'ulimit -r'; see the README)"
            )
    return applied, refused


def report_process_tuning(task: TaskStatus, notes: tuple[list[str], list[str]] | None) -> None:
    """Show the process settings in a diagnostics task; a refused one makes it WARN."""
    if not notes:
        return
    applied, refused = notes
    if applied:
        task.values["process"] = "; ".join(applied)
    if refused:
        task.values["process settings refused"] = "; ".join(refused)
        task.merge(Level.WARN, "process settings refused: " + "; ".join(refused))
