"""The ``main`` of a lifecycle node process: start-up errors, auto-activation, executor, clean SIGINT."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

# Errors that mean "this node cannot start as configured": printed as one line, exit code 1, no traceback.
STARTUP_ERRORS: tuple[type[BaseException], ...] = (ValueError, ImportError, FileNotFoundError)


SIGNAL_POLL_S = 0.2
"""Longest the executor waits before Python can handle a signal (sim-time timers may never fire)."""


class StopRequest:
    """The SIGINT/SIGTERM handler: records the signal; the spin loop ends when it is set.

    While spinning, the handler must not raise. Python runs a signal handler wherever the main thread
    happens to be, also inside a ``__del__`` (rclpy's ``Future.__del__`` runs after every callback), and
    an exception raised there is printed as "Exception ignored" and dropped: the node then kept commanding
    the robot after SIGTERM. During start-up (loading a model can take a minute) it also raises, so Ctrl-C
    does not wait for the load; if that raise is lost, the recorded signal still stops the node before it
    spins.
    """

    def __init__(self) -> None:
        self.signal_name = ""
        self.raise_now = True

    def __call__(self, signum: int, frame: Any) -> None:
        """Record the signal; raise ``KeyboardInterrupt`` only while ``raise_now`` (start-up)."""
        self.signal_name = signal.Signals(signum).name
        if self.raise_now:
            raise KeyboardInterrupt(self.signal_name)


def run_lifecycle_node(
    factory: Callable[[], Any], args: Sequence[str] | None = None, *, num_threads: int = 4
) -> int:
    """Create the node with ``factory``, spin it, and return the exit code.

    The executor is what the node's ``executor`` and ``executor_threads`` parameters ask for
    (:func:`~insertion_vla_ros.nodes.process_tuning.make_executor`); its class is logged.

    A parameter or interface error raised while constructing prints ``<prog>: error: ...`` and returns 1.
    With the node's ``autostart`` parameter, configure and activate run before spinning and a failed
    transition returns 1. SIGINT/SIGTERM stop spinning and return 0; an exception escaping a callback
    returns 1. Either way :meth:`ManagedNode.before_exit` runs while the ROS context is still valid (rclpy's
    own signal handlers would shut it down first), so the action expert's final HOLD reaches the robot.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.signals import SignalHandlerOptions

    from insertion_vla_ros.nodes.process_tuning import apply_process_tuning, make_executor

    prog = sys.argv[0].rsplit("/", 1)[-1] or "node"
    rclpy.init(args=list(args) if args is not None else None, signal_handler_options=SignalHandlerOptions.NO)
    stop = StopRequest()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    node = None
    executor = None
    code = 0
    reason = "shutdown: the process was asked to stop"
    try:
        try:
            node = factory()
        except STARTUP_ERRORS as error:
            print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
            return 1
        params = getattr(node, "params", {})
        applied, refused = apply_process_tuning(params)  # before the node starts threads of its own
        for note in refused:
            node.get_logger().warning(f"process setting refused: {note}")
        if applied:
            node.get_logger().info("process: " + "; ".join(applied))
        node.process_notes = (applied, refused)
        if node.autostart and not node.start_up():
            print(f"{prog}: error: could not configure and activate: {node.last_error}", file=sys.stderr)
            return 1
        # rclpy's MultiThreadedExecutor busy-waits while a callback group is busy and then starves the other
        # subscriptions (measured: the 650 Hz sensor stream lagged 0.4-0.8 s behind the 10 Hz tick). These
        # nodes keep every callback short (the VLM runs in its own thread), so one thread is the default.
        executor = make_executor(params, num_threads)
        node.get_logger().info(f"executor: {type(executor).__name__}")
        executor.add_node(node)
        stop.raise_now = False
        while not stop.signal_name:  # a bounded wait: with rclpy's handlers off, Python must run the handler
            executor.spin_once(timeout_sec=SIGNAL_POLL_S)
        reason = f"shutdown: {stop.signal_name}"
    except KeyboardInterrupt as interrupt:
        reason = f"shutdown: {interrupt.args[0] if interrupt.args else 'SIGINT'}"
    except ExternalShutdownException:
        code = 0
    except Exception as error:  # noqa: BLE001 - reported after the robot was told to hold
        code = 1
        reason = f"shutdown: fatal error: {type(error).__name__}: {error}"
        print(f"{prog}: fatal error: {error!r}", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the final HOLD short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if node is not None and rclpy.ok():
            try:
                node.before_exit(reason)
            except Exception as error:  # noqa: BLE001 - best effort, never a traceback
                print(f"{prog}: could not publish the final state: {error}", file=sys.stderr)
        if node is not None:
            try:
                node.stop_workers()
            except Exception:  # noqa: BLE001 - best effort during shutdown, never a traceback
                pass
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if node is not None:
            try:
                node.destroy_node()
            except Exception:  # noqa: BLE001
                pass
        rclpy.try_shutdown()
    return code
