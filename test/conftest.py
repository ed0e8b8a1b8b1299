"""Shared pytest setup: DDS isolation per test process and a per-test rclpy context."""

from __future__ import annotations

import os

# Each pytest process gets its own DDS domain, restricted to this host, so concurrent test runs (and
# the subprocesses they start, which inherit the environment) never see each other's topics.
os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 100)
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")

import pytest  # noqa: E402


@pytest.fixture
def ros_context():
    """A fresh rclpy Context for one test, shut down afterwards."""
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        context.try_shutdown()
