"""Shared pytest setup: DDS isolation per test process, a per-test rclpy context, the `ros` marker."""

from __future__ import annotations

import ast
import functools
import gc
import os
from pathlib import Path

# Each pytest process gets its own DDS domain, restricted to this host, so concurrent test runs (and
# the subprocesses they start, which inherit the environment) never see each other's topics.
os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 100)
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
_SEARCH = (ROOT, ROOT / "test")  # where the project's own modules (and test helpers) live


@pytest.fixture
def ros_context():
    """A fresh rclpy Context for one test; afterwards every node on it is destroyed and it is shut down.

    rclpy 9 (Kilted) destroys a context's nodes when the context shuts down; rclpy 7 (Jazzy) does not, so a
    node a test leaves alive keeps its DDS entities (a latched publisher keeps serving its last sample to
    the next test's subscribers). The nodes are destroyed here, the same way on both.
    """
    import rclpy
    from rclpy.node import Node

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        for obj in gc.get_objects():  # ~0.1 s; finds nodes only referenced by cycles too
            if issubclass(type(obj), Node) and obj.context is context:  # type(): no proxy's __class__
                obj.destroy_node()
        context.try_shutdown()


# --- the `ros` marker: which tests `make test-jazzy` runs under ROS 2 Jazzy ------------------------------
# A test is ROS-facing when its module imports rclpy or a message package (`*_msgs`), directly, inside a
# function, or through any project module it imports (followed transitively, package __init__ files
# included), or when it takes the ros_context fixture. Kept automatic so a new ROS test runs on both
# distributions without being listed anywhere; a test that reaches ROS only through a subprocess of a
# module it does not import can say `pytestmark = pytest.mark.ros`.


def _source(module: str) -> Path | None:
    for base in _SEARCH:
        stem = base.joinpath(*module.split("."))
        for candidate in (stem.with_suffix(".py"), stem / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _imports(path: Path, package: str):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                parts = package.split(".")[: package.count(".") + 2 - node.level]
                base = ".".join(parts + ([node.module] if node.module else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`


@functools.cache
def _uses_ros(module: str) -> bool:
    top = module.split(".")[0]
    if top == "rclpy" or top.endswith("_msgs"):
        return True
    path = _source(module)
    if path is None:  # a third-party or standard-library module
        return False
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    parents = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
    return any(_uses_ros(name) for name in (*parents, *_imports(path, package)) if name != module)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "ros_context" in getattr(item, "fixturenames", ()) or _uses_ros(item.path.stem):
            item.add_marker(pytest.mark.ros)
