"""ROS 2 layer of the asynchronous VLA controller: nodes, message conversion, diagnostics, bringup, replay.

Modules that do not import rclpy (ring buffer, camera sync, staleness and safety policies, conversions of
plain arrays) test without a ROS graph; the node modules import rclpy and ``insertion_vla_msgs``.
"""
