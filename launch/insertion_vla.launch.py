"""Launch vlm_node and action_expert_node (lifecycle nodes) from config/insertion_vla.yaml.

    ros2 launch insertion_vla_ros insertion_vla.launch.py checkpoint:=/path/to/checkpoint autostart:=true
    ros2 launch insertion_vla_ros insertion_vla.launch.py use_sim_time:=true view1_topic:=/rig/cam1/image_raw

Without autostart, activate on the robot with ``ros2 lifecycle set /vlm_node configure`` then ``activate``
(the same for /action_expert_node). Hosts without ros2 launch run the console script ``bringup``, which
starts the same nodes from the same YAML.
"""

from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

from launch import LaunchDescription

PACKAGE = "insertion_vla_ros"
CAMERAS = ("view1", "view2", "view3", "view4", "view5")
NODES = ("vlm_node", "action_expert_node")


def _as_bool(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


def _nodes(context, *args, **kwargs):
    config_file = LaunchConfiguration("config_file").perform(context)
    overrides = {
        "use_sim_time": _as_bool(LaunchConfiguration("use_sim_time").perform(context)),
        "autostart": _as_bool(LaunchConfiguration("autostart").perform(context)),
    }
    checkpoint = LaunchConfiguration("checkpoint").perform(context)
    if checkpoint:  # empty: keep the YAML's value
        overrides["checkpoint"] = checkpoint
    remappings = [
        (f"/cameras/{name}/image_raw", LaunchConfiguration(f"{name}_topic").perform(context))
        for name in CAMERAS
    ]
    remappings.append(("/needle_sensor/samples", LaunchConfiguration("sensor_topic").perform(context)))
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
    default_config = os.path.join(get_package_share_directory(PACKAGE), "config", "insertion_vla.yaml")
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
            description="Configure and activate both "
            "nodes at start-up (demo); on a robot the operator activates.",
        ),
        DeclareLaunchArgument(
            "sensor_topic",
            default_value="/needle_sensor/samples",
            description="Remap of the needle sensor topic.",
        ),
    ]
    arguments += [
        DeclareLaunchArgument(
            f"{name}_topic",
            default_value=f"/cameras/{name}/image_raw",
            description=f"Remap of camera {name}'s image topic.",
        )
        for name in CAMERAS
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=_nodes)])
