"""The ROS 2 nodes (vlm_node, action_expert_node, sim_node): lifecycle and wiring; logic lives in runtime."""
