"""Import ``insertion_vla_msgs`` with an actionable error when the interface package was not built."""

from __future__ import annotations

from types import ModuleType

BUILD_HINT = (
    "the message package insertion_vla_msgs is not importable: build it with "
    "`colcon build --base-paths src src/insertion_vla_ros/msg` (it is nested in this repository, "
    "so colcon must be told both paths) and source install/setup.bash; in this repository "
    "`scripts/in-env <command>` does both"
)


class MissingInterfacesError(ImportError):
    """``insertion_vla_msgs`` cannot be imported; the message says how to build it."""


def import_interfaces() -> ModuleType:
    """Return ``insertion_vla_msgs.msg`` or raise :class:`MissingInterfacesError` with the build hint."""
    try:
        import insertion_vla_msgs.msg as interfaces
    except ImportError as error:
        raise MissingInterfacesError(f"{BUILD_HINT} ({error})") from error
    return interfaces
