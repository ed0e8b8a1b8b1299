"""Command-line tools: bringup, replay, record, evaluate, demo, and the in-process simulated loop."""
