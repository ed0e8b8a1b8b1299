"""ROS 2 layer of the asynchronous VLA controller, in four rooms and a fixtures folder.

``nodes/``     the ROS 2 nodes (lifecycle + wiring): vlm_node, action_expert_node, sim_node.
``runtime/``   ROS-free logic every loop shares: the tick controller, sensor ring buffer, camera sync,
               robot state, holds, force guard, safety layer, chunk execution, latest-wins worker.
``ros_io/``    ROS I/O: message and image conversion, QoS, parameters, diagnostics, time stamps.
``tools/``     bringup, replay, record, evaluate, demo, and the in-process simulated loop.
``testing/``   fixtures for tests and benchmarks (not product code).
"""
