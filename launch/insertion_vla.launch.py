"""Launch vlm_node and action_expert_node (lifecycle nodes) from config/insertion_vla.yaml.

    ros2 launch insertion_vla_ros insertion_vla.launch.py checkpoint:=/path/to/checkpoint autostart:=true
    ros2 launch insertion_vla_ros insertion_vla.launch.py use_sim_time:=true view1_topic:=/rig/cam1/image_raw

Without autostart, activate on the robot with ``ros2 lifecycle set /vlm_node configure`` then ``activate``
(the same for /action_expert_node). Hosts without ros2 launch run the console script ``bringup``, which
starts the same nodes from the same YAML. A misspelt argument (``auto_activate:=true``) stops the launch
with the closest declared name instead of being ignored. Unless already set, Fast DDS gets the package's
large-data profile (``config/fastdds_large_data.xml``: a 64 MB shared-memory segment for 12 MB VLFeatures),
under both the Jazzy/Kilted (``FASTDDS_...``) and the Humble (``FASTRTPS_...``) variable names.
"""

from __future__ import annotations

import difflib
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

from contracts.constants import CAMERA_NAMES
from contracts.topics import SENSOR_TOPIC, camera_topic
from launch import LaunchDescription

PACKAGE = "insertion_vla_ros"
NODES = ("vlm_node", "action_expert_node")
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
PROFILE_FILE = "fastdds_large_data.xml"
COMPRESSED_SUFFIX = "/compressed"


def _as_bool(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


def camera_remappings(source: str, target: str) -> list[tuple[str, str]]:
    """Remap a camera topic for both transports (vlm_node subscribes ``<topic>/compressed`` for JPEGs)."""
    return [(source, target), (source + COMPRESSED_SUFFIX, target + COMPRESSED_SUFFIX)]


def _check_arguments(context, declared: set[str]) -> None:
    unknown = sorted(set(context.launch_configurations) - declared)
    if unknown:
        hints = [
            f"{name!r} (did you mean {close[0]!r}?)"
            if (close := difflib.get_close_matches(name, declared, 1))
            else repr(name)
            for name in unknown
        ]
        raise RuntimeError(f"unknown launch argument(s) {', '.join(hints)}; declared: {sorted(declared)}")


def _nodes(context, declared: set[str]):
    _check_arguments(context, declared)
    config_file = LaunchConfiguration("config_file").perform(context)
    overrides = {
        "use_sim_time": _as_bool(LaunchConfiguration("use_sim_time").perform(context)),
        "autostart": _as_bool(LaunchConfiguration("autostart").perform(context)),
    }
    checkpoint = LaunchConfiguration("checkpoint").perform(context)
    if checkpoint:  # empty: keep the YAML's value
        overrides["checkpoint"] = checkpoint
    remappings = []
    for name in CAMERA_NAMES:
        remappings += camera_remappings(
            camera_topic(name), LaunchConfiguration(f"{name}_topic").perform(context)
        )
    remappings.append((SENSOR_TOPIC, LaunchConfiguration("sensor_topic").perform(context)))
    return [
        LifecycleNode(
            package=PACKAGE,
            executable=node,
            name=node,
            namespace="",
            output="screen",
            parameters=[config_file, overrides],
            remappings=remappings,
        )
        for node in NODES
    ]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    default_config = os.path.join(share, "config", "insertion_vla.yaml")
    arguments = [
        DeclareLaunchArgument(
            "config_file", default_value=default_config, description="Node parameters YAML."
        ),
        DeclareLaunchArgument(
            "checkpoint",
            default_value="",
            description="Policy checkpoint directory (empty: the YAML's checkpoint).",
        ),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false", description="Follow /clock (bag replay)."
        ),
        DeclareLaunchArgument(
            "autostart",
            default_value="false",
            description="Configure and activate both nodes at start-up (demo); on robots the operator does.",
        ),
        DeclareLaunchArgument(
            "sensor_topic", default_value=SENSOR_TOPIC, description="Remap of the needle sensor topic."
        ),
    ]
    arguments += [
        DeclareLaunchArgument(
            f"{name}_topic",
            default_value=camera_topic(name),
            description=f"Remap of camera {name}'s image topic (raw and /compressed).",
        )
        for name in CAMERA_NAMES
    ]
    declared = {argument.name for argument in arguments}
    profile = os.path.join(share, "config", PROFILE_FILE)
    environment = [
        SetEnvironmentVariable(variable, profile)
        for variable in PROFILE_VARIABLES
        if not os.environ.get(variable)
    ]
    return LaunchDescription([*environment, *arguments, OpaqueFunction(function=_nodes, args=[declared])])
