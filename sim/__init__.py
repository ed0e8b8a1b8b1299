"""ROS-free simulated needle-insertion rig: scene, cameras, force/OCT sensor, robot, scripted expert."""
