"""bringup runs both nodes in own processes; a slow VLM never delays ticks; clean SIGINT; start-up errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from test_node_support import CONFIG, NodeProcess, make_test_node, spin_until, tiny_checkpoint  # noqa: F401

S = 1_000_000_000


@pytest.mark.slow
def test_bringup_talks_slow_vlm_keeps_ticks_and_sigint_exits_zero(ros_context, tiny_checkpoint, tmp_path):  # noqa: F811
    from insertion_vla_msgs.msg import ActionChunk, ControllerStatus, VLFeatures

    from insertion_vla_ros.ros_io.qos import LATCHED_QOS, RELIABLE_QOS
    from insertion_vla_ros.ros_io.time_conversions import stamp_to_ns

    rig = NodeProcess(
        "insertion_vla_ros.testing.synthetic_inputs", ["-p", "camera_rate_hz:=10.0"], tmp_path, name="rig"
    )
    bringup = NodeProcess(
        "insertion_vla_ros.tools.bringup",
        [],
        tmp_path,
        argv=[
            "--params-file",
            str(CONFIG),
            "--checkpoint",
            str(tiny_checkpoint),
            "--autostart",
            "--vlm-param",
            "vlm_period_s:=0.5",
            "--vlm-param",
            "inject_latency_s:=1.5",
            "--vlm-param",
            "torch_threads:=1",
        ],
    )
    node = make_test_node(ros_context, "bringup_observer")
    chunks, features, statuses = [], [], []
    node.create_subscription(ActionChunk, "/vla/action_chunk", chunks.append, RELIABLE_QOS)
    node.create_subscription(VLFeatures, "/vla/vl_features", features.append, LATCHED_QOS)
    node.create_subscription(ControllerStatus, "/action_expert_node/status", statuses.append, 10)
    procs = [rig, bringup]
    try:
        # the two processes talk: OK chunks use features from the vlm_node
        assert spin_until(node, lambda: any(c.status == 0 for c in chunks), 600.0, procs), bringup.output()[
            -4000:
        ]
        first_ok = next(i for i, c in enumerate(chunks) if c.status == 0)
        assert spin_until(node, lambda: len(features) >= 4, 60.0, procs)
        window = chunks[first_ok:]
        # every feature took >= 1.5 s, none queued up: consecutive features >= ~1.5 s apart in capture time
        assert all(f.inference_time_s >= 1.5 for f in features)
        t0 = np.array([stamp_to_ns(f.header.stamp) for f in features]) / S
        assert (np.diff(t0) >= 1.3).all(), np.diff(t0)
        # meanwhile the action expert ticked on every 100 ms slot: no gap in sequence or stamps
        sequences = [c.sequence for c in window]
        assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))
        # Ticks are stamped on their 100 ms slot, so a late tick shows up as a skipped slot. A VLM in the
        # tick's thread would skip ~15 slots per inference; a 2-core CI host shared with other jobs can skip
        # isolated slots when starved of CPU (load average ~9 on 2 cores while this was written), which is
        # what the tolerance allows; bench/control_loop.py reports missed_ticks for a quiet host.
        slots = np.diff(np.array([stamp_to_ns(c.header.stamp) for c in window])) // (S // 10)
        assert (slots >= 1).all() and slots.max() <= 3, (
            slots
        )  # never a blackout of a VLM inference (15 slots)
        missed = int((slots - 1).sum())
        assert missed <= 0.25 * len(window), f"{missed} of {len(window)} slots missed"
        assert len(window) >= 30  # the features above span >= 4.5 s of ticks
        assert statuses and statuses[-1].missed_ticks <= 0.25 * (
            chunks[-1].sequence + 1
        )  # the node counts too
        ages = [c.vl_age_s for c in window if c.status == 0]
        assert max(ages) >= 1.5  # features are used while they age, well past one inference
        assert {c.vl_sequence for c in window if c.status == 0} >= {f.sequence for f in features[1:-1]}
    finally:
        node.destroy_node()
        bringup_code = bringup.stop(timeout=60.0)
        rig_code = rig.stop()
    output = bringup.output()
    assert bringup_code == 0, output[-4000:]
    assert rig_code == 0
    assert "Traceback" not in output
    assert "starting vlm_node" in output and "starting action_expert_node" in output


def _run_node(module: str, *ros_args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, "--ros-args", "--params-file", str(CONFIG), *ros_args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_startup_errors_name_the_problem(tiny_checkpoint, tmp_path):  # noqa: F811
    missing = _run_node(
        "insertion_vla_ros.nodes.action_expert_node",
        "-p",
        f"checkpoint:={tmp_path / 'nope'}",
        "-p",
        "autostart:=true",
    )
    assert missing.returncode == 1
    assert "parameter 'checkpoint'" in missing.stderr and "not found" in missing.stderr
    assert "Traceback" not in missing.stderr

    bad = _run_node(
        "insertion_vla_ros.nodes.vlm_node",
        "-p",
        f"checkpoint:={tiny_checkpoint}",
        "-p",
        "vlm_node:vlm_period_s:=-1.0",
    )
    assert bad.returncode == 1 and "vlm_period_s" in bad.stderr and "Traceback" not in bad.stderr

    limits = _run_node(
        "insertion_vla_ros.nodes.action_expert_node",
        "-p",
        f"checkpoint:={tiny_checkpoint}",
        "-p",
        "action_expert_node:step_limits:=[1.0,2.0]",
        "-p",
        "autostart:=true",
    )
    assert limits.returncode == 1 and "parameter 'step_limits'" in limits.stderr
