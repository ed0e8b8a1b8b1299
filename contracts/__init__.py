"""What every room agrees on (ROS-free, numpy only): constants and units, topic layout, episode format.

``models``, ``sim``, ``training`` and ``insertion_vla_ros`` all import from here and nowhere else for these,
so ``sim`` and ``training`` never need each other for a name or a file layout (``training`` uses ``sim``
only as a data source: Stage 0 renders and demonstrations).
"""
