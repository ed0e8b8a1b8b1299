"""Clear start-up errors when the ROS 2 pieces this package needs are missing."""

from __future__ import annotations

BUILD_HINT = (
    "insertion_vla_msgs is not importable. Build it with the package: "
    "`colcon build --base-paths src src/insertion_vla_ros/msg` and `source install/setup.bash` "
    "(on a machine without ROS: run through scripts/in-env, which bootstraps and builds it)."
)
ROS_HINT = (
    "rclpy is not importable: source your ROS 2 setup (e.g. /opt/ros/jazzy/setup.bash), "
    "or run through scripts/in-env on a machine without ROS."
)


class MissingRosDependency(RuntimeError):
    """rclpy or insertion_vla_msgs cannot be imported."""


def require_ros() -> None:
    """Raise ``MissingRosDependency`` with a how-to-fix hint if rclpy or insertion_vla_msgs is missing."""
    try:
        import rclpy  # noqa: F401
    except ImportError as error:
        raise MissingRosDependency(f"{ROS_HINT} ({error})") from error
    try:
        import insertion_vla_msgs.msg  # noqa: F401
    except ImportError as error:
        raise MissingRosDependency(f"{BUILD_HINT} ({error})") from error
