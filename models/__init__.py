"""ROS-free model code shared by the nodes and by training.

VLM feature extractor, sensor encoder, action expert, the async policy API, checkpoints and configs.
"""
