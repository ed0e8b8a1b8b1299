"""replay drives action_expert_node under sim time: its ticks follow the bag's /clock."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("insertion_vla_msgs.msg")

from insertion_vla_ros.tools.replay import parse_remaps  # noqa: E402

NS = 1_000_000_000


def test_parse_remaps():
    assert parse_remaps(["/a:=/b"]) == {"/a": "/b"}
    with pytest.raises(ValueError):
        parse_remaps(["/a=/b"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_replay_drives_action_expert_under_sim_time(ros_context, tmp_path):
    import rclpy
    from insertion_vla_msgs.msg import ActionChunk, ControllerStatus
    from rclpy.executors import SingleThreadedExecutor

    from insertion_vla_ros.testing.tiny_checkpoint import build_tiny_checkpoint
    from insertion_vla_ros.tools.replay import BagPlayer
    from sim.demos import generate_demonstrations

    generate_demonstrations(
        tmp_path / "ep", 1, seed=7, bag_dir=tmp_path / "bags", write_episodes=False, progress=False
    )
    bag = tmp_path / "bags" / "episode_00000"
    checkpoint = build_tiny_checkpoint(tmp_path / "model")
    expert = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "insertion_vla_ros.nodes.action_expert_node",
            "--ros-args",
            "-p",
            f"checkpoint:={checkpoint}",
            "-p",
            "use_sim_time:=true",
            "-p",
            "autostart:=true",
        ],
    )
    node = rclpy.create_node("replay_test", context=ros_context)
    chunks: list[tuple[int, int]] = []
    rates: list[float] = []
    lock = threading.Lock()

    def on_chunk(msg):
        with lock:
            chunks.append((msg.header.stamp.sec * NS + msg.header.stamp.nanosec, msg.status))

    node.create_subscription(ActionChunk, "/vla/action_chunk", on_chunk, 100)
    node.create_subscription(
        ControllerStatus, "/action_expert_node/status", lambda m: rates.append(m.sensor_rate_hz), 10
    )
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    player = BagPlayer(node, bag)
    try:
        # The node must be up (ticking on some clock) before the bag plays: play the first 0.1 s until then.
        deadline = time.monotonic() + 240
        while not node.count_publishers("/vla/action_chunk") and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.2)
        time.sleep(2.0)
        stop = threading.Event()
        spinner = threading.Thread(
            target=lambda: [executor.spin_once(timeout_sec=0.05) for _ in iter(stop.is_set, True)]
        )
        spinner.start()
        with lock:
            chunks.clear()
        player.play(rate=1.0, clock_hz=200.0)
        time.sleep(0.5)
        stop.set()
        spinner.join()
    finally:
        player.close()
        expert.terminate()
        expert.wait(timeout=30)
        node.destroy_node()
    with lock:
        stamps = np.array([s for s, _ in chunks if player.start_ns <= s <= player.end_ns])
    duration = (player.end_ns - player.start_ns) / NS
    assert len(stamps) >= 0.7 * duration / 0.1, (len(stamps), duration)
    # Ticks follow the bag's clock: stamps inside the bag's time span, 100 ms apart in sim time
    # (the 200 Hz clock quantises each tick to 5 ms).
    periods = np.diff(stamps) / NS
    assert np.median(periods) == pytest.approx(0.1, abs=0.006)
    finite = [r for r in rates if np.isfinite(r)]
    assert (
        finite and 600.0 < float(np.median(finite)) < 700.0
    )  # the 650 Hz sensor, as the node measures it in sim time
