"""ROS-free training: episode format, converters, VL feature cache, Stage 1 / Stage 2 trainers."""
