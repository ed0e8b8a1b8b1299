"""ROS I/O: message and image conversion, QoS profiles, parameters, diagnostics, time stamps."""
