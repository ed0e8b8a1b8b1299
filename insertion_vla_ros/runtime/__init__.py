"""ROS-free run-time logic shared by the nodes, the in-process loop and evaluate.

The tick controller, sensor ring buffer, camera sync, robot state, holds, force guard, safety layer,
chunk execution and the latest-wins worker.
"""
