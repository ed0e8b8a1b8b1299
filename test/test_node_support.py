"""Fixtures and helpers shared by the node tests (imported by test_node_*.py; holds no tests itself).

Nodes run in subprocesses (``python -m insertion_vla_ros.<node>``) so the GIL of the test process never
distorts their timing; they inherit this process's isolated ROS_DOMAIN_ID from conftest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config" / "insertion_vla.yaml"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny policy checkpoint (tiny Qwen2.5-VL + LoRA + action expert), built once per test session."""
    from insertion_vla_ros.testing.tiny_checkpoint import build_tiny_checkpoint

    root = tmp_path_factory.getbasetemp() / "tiny_policy"
    checkpoint = root / "checkpoint"
    if not (checkpoint / "config.json").is_file():
        build_tiny_checkpoint(root)
    return checkpoint


class NodeProcess:
    """One node (or tool) in its own process; output goes to a log file read back on ``stop``."""

    def __init__(
        self,
        module: str,
        ros_args: list[str],
        log_dir: Path,
        name: str | None = None,
        argv: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.name = name or module.rsplit(".", 1)[-1]
        self.log_path = log_dir / f"{self.name}.log"
        command = [sys.executable, "-m", module, *(argv or [])]
        if ros_args:
            command += ["--ros-args", *ros_args]
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(extra_env or {}))
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def output(self) -> str:
        return self.log_path.read_text()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGINT, wait, return the exit code (kills after ``timeout``)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._log.close()
        return code


def node_args(checkpoint: Path, node: str, **params) -> list[str]:
    """``--ros-args`` items: the package YAML, the checkpoint, then ``-p node:name:=value`` overrides.

    Overrides name the node: a plain ``-p name:=value`` loses against the YAML's node section.
    """
    args = ["--params-file", str(CONFIG), "-p", f"{node}:checkpoint:={checkpoint}"]
    for name, value in params.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (list, tuple)):
            value = "[" + ",".join(str(v) for v in value) + "]"
        args += ["-p", f"{node}:{name}:={value}"]
    return args


def make_test_node(context, name: str):
    """A node on ``context`` with its own single-threaded executor (``node.test_executor``)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    node = rclpy.create_node(name, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    node.test_executor = executor  # the node only keeps a weak reference
    return node


def spin_until(node, predicate: Callable[[], bool], timeout: float, processes=()) -> bool:
    """Spin ``node`` until ``predicate()`` or ``timeout`` seconds; fails early if a process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        node.test_executor.spin_once(timeout_sec=0.05)
        if predicate():
            return True
        for proc in processes:
            if proc.process.poll() is not None:
                raise AssertionError(
                    f"{proc.name} exited with {proc.process.returncode}:\n{proc.output()[-3000:]}"
                )
    return predicate()


def set_remote_parameters(node, target_node: str, timeout: float = 10.0, **values) -> None:
    """Set parameters of another node through its ``set_parameters`` service (works on every distro)."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    client = node.create_client(SetParameters, f"/{target_node}/set_parameters")
    assert client.wait_for_service(timeout_sec=timeout), f"{target_node} has no set_parameters service"
    request = SetParameters.Request()
    request.parameters = [Parameter(name, value=value).to_parameter_msg() for name, value in values.items()]
    future = client.call_async(request)
    node.test_executor.spin_until_future_complete(future, timeout_sec=timeout)
    assert future.result() is not None, f"set_parameters on {target_node} timed out"
    assert all(result.successful for result in future.result().results), future.result().results
    node.destroy_client(client)


def change_lifecycle_state(node, target_node: str, transition_id: int, timeout: float = 20.0) -> bool:
    """Trigger a lifecycle transition of another node through ``~/change_state``."""
    from lifecycle_msgs.srv import ChangeState

    client = node.create_client(ChangeState, f"/{target_node}/change_state")
    assert client.wait_for_service(timeout_sec=timeout), f"{target_node} has no change_state service"
    request = ChangeState.Request()
    request.transition.id = transition_id
    future = client.call_async(request)
    node.test_executor.spin_until_future_complete(future, timeout_sec=timeout)
    node.destroy_client(client)
    return bool(future.result() is not None and future.result().success)
