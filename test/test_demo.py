"""record's topic list, and a short closed loop through the real nodes (sim_node + bringup processes)."""

from __future__ import annotations

import pytest

from contracts import topics
from contracts.constants import CAMERA_NAMES
from insertion_vla_ros.tools import record


def test_record_topics_match_the_sim_layout():
    listed = dict(record.topic_list(outputs=False))
    expected = {topics.camera_topic(n): topics.IMAGE_TYPE for n in CAMERA_NAMES}
    expected.update(
        {
            topics.SENSOR_TOPIC: topics.SENSOR_TYPE,
            topics.POSE_TOPIC: topics.POSE_TYPE,
            topics.INSTRUCTION_TOPIC: topics.INSTRUCTION_TYPE,
        }
    )
    assert listed == expected
    command = record.ros2_command("out_bag")
    assert command[:3] == ["ros2", "bag", "record"] and "/vla/action_chunk" in command
    assert all(topic in command for topic in expected)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_short_closed_loop_through_the_real_nodes_completes_an_episode(tmp_path):
    pytest.importorskip("insertion_vla_msgs.msg")
    from insertion_vla_ros.testing.tiny_checkpoint import build_tiny_checkpoint
    from insertion_vla_ros.tools.demo_closed_loop import LoopSettings, results_table, run_closed_loop

    checkpoint = build_tiny_checkpoint(tmp_path / "model")
    settings = LoopSettings(
        checkpoint=checkpoint,
        episodes=1,
        max_episode_s=3.0,
        timeout_s=600,
        results_file=tmp_path / "results.json",
        log_dir=tmp_path / "logs",
    )
    results = run_closed_loop(settings, print_every_s=5.0)
    assert len(results) == 1, (tmp_path / "logs" / "sim_node.log").read_text()[-2000:]
    result = results[0]
    assert result["episode"] == 0 and result["end_reason"] in ("timeout", "settled", "force_abort")
    assert result["chunks_received"] >= 20  # the action expert ticked at 10 Hz of sim time through it
    assert result["moving_ticks"] + result["hold_ticks"] == 300
    assert "success" in results_table(results)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_demo_applies_ok_chunks_that_move_the_needle_toward_the_target(tmp_path, capsys):
    """``make demo`` end to end on a small budget: the embedded VLM's features steer the needle."""
    pytest.importorskip("insertion_vla_msgs.msg")
    import json

    import numpy as np

    from insertion_vla_ros.tools import demo

    work = tmp_path / "demo"
    argv = ["--work", str(work), "--demos", "16", "--steps", "400", "--episodes", "1"]
    argv += ["--eval-seed", "3100", "--max-episode-s", "10", "--no-progress"]
    assert demo.main(argv) == 0
    printed = capsys.readouterr().out
    assert "Stage 0 on sim renders" in printed and "random weights" not in printed
    (result,) = json.loads((work / "closed_loop_results.json").read_text())
    assert result["moving_ticks"] > 0 and result["chunks_received"] > 0
    trace = result["trace"]
    assert 0 in trace["chunk_status"]  # an OK chunk (ChunkStatus.OK) was in force
    target = np.asarray(result["targets_xy_mm"][result["target"]])
    tip = np.asarray(trace["tip_mm"])[:, :2]
    start, end = np.linalg.norm(tip[0] - target), np.linalg.norm(tip[-1] - target)
    assert end < 0.75 * start, f"lateral distance to the target {start:.2f} -> {end:.2f} mm"
    assert (work / "closed_loop_episodes.png").stat().st_size > 10_000
