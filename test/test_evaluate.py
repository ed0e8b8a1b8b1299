"""evaluate on a sim-written MCAP bag: JSON metrics with sane values and the three PNG plots."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def sim_bag(tmp_path_factory):
    from sim.demos import generate_demonstrations

    root = tmp_path_factory.mktemp("bag")
    summary = generate_demonstrations(
        root / "ep", 1, seed=5, bag_dir=root / "bags", write_episodes=False, progress=False, max_steps=40
    )
    return root / "bags" / "episode_00000", summary[0]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_evaluate_writes_metrics_and_plots(sim_bag, tmp_path):
    from insertion_vla_ros.testing.tiny_checkpoint import build_tiny_checkpoint
    from insertion_vla_ros.tools.evaluate import main

    checkpoint = build_tiny_checkpoint(tmp_path / "model")
    bag, _ = sim_bag
    out = tmp_path / "eval"
    assert (
        main(
            [
                str(bag),
                "--checkpoint",
                str(checkpoint),
                "--out",
                str(out),
                "--vlm-latency",
                "0.3",
                "--vlm-period",
                "1.7",
            ]
        )
        == 0
    )
    report = json.loads((out / "metrics.json").read_text())
    m = report["metrics"]
    assert report["instruction"].startswith("Perform ") and m["ok_ticks"] > 10
    # Features become usable 0.3 s after capture (at the first tick after that) and are reused for one
    # 1.7 s period: ages from 0.3 s (plus the ticks' phase against the 10 Hz frames) over 1.6 s.
    assert 0.3 <= m["vl_age_min_s"] < 0.4
    assert m["vl_age_max_s"] - m["vl_age_min_s"] == pytest.approx(1.6, abs=1e-6)
    assert m["hold_reasons"].get("no_vl_features", 0) >= 1  # the first 0.3 s wait for the VLM
    for name in ("dx", "dy", "dz", "drx", "dry", "drz", "gripper"):
        assert 0.0 <= m[f"mae_chunk_{name}"] < 100.0
    for png in ("predicted_vs_recorded.png", "vl_age.png", "latency_hist.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(("storage", "compressed"), [("sqlite3", True), ("mcap", False)])
def test_evaluate_reads_bags_written_with_rosbags_directly(tmp_path, storage, compressed):
    """Bags from outside the project (rosbags Writer): CompressedImage and every raw encoding."""
    from insertion_vla_ros.testing.tiny_checkpoint import build_tiny_checkpoint
    from insertion_vla_ros.tools.evaluate import main
    from training.bag_fixture import make_bag

    checkpoint = build_tiny_checkpoint(tmp_path / "model")
    bag = make_bag(
        tmp_path / "bag",
        storage,
        duration_s=2.0,
        compressed=compressed,
        encodings=("rgb8", "bgr8", "rgba8", "mono8", "bgra8"),
    )
    out = tmp_path / "eval"
    args = [str(bag), "--checkpoint", str(checkpoint), "--out", str(out), "--vlm-latency", "0.2"]
    assert main([*args, "--vlm-period", "0.5"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["ok_ticks"] > 5, metrics


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_openloop_check_shows_the_ticks_around_the_recorded_stop(tmp_path, capsys):
    """``--around-stop``: the ticks either side of where the expert comes to rest at its goal depth."""
    import importlib.util
    import sys
    from pathlib import Path

    import numpy as np

    from insertion_vla_ros.testing.tiny_checkpoint import build_tiny_checkpoint
    from sim.demos import generate_demonstrations

    script = Path(__file__).resolve().parents[1] / "scripts" / "openloop_check.py"
    spec = importlib.util.spec_from_file_location("openloop_check", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    steps = np.array(
        [[0.0, 0.0, -0.1], [0.0, 0.0, -0.01], [0.0, 0.0, -0.1], [0.0, 0.0, 0.0], [0.01, 0.0, 0.0]]
    )
    assert module.last_move_index(steps) == 2 and module.last_move_index(np.zeros((3, 3))) is None

    (summary,) = generate_demonstrations(tmp_path / "ep", 1, seed=5, progress=False, max_steps=120)
    assert summary["success"]
    checkpoint = build_tiny_checkpoint(tmp_path / "model")
    argv = [str(checkpoint), str(tmp_path / "ep"), "--around-stop", "2", "--vlm-latency-s", "0.3"]
    saved, sys.argv = sys.argv, ["openloop_check.py", *argv]
    try:
        assert module.main() == 0
    finally:
        sys.argv = saved
    lines = [line for line in capsys.readouterr().out.splitlines() if line.lstrip().startswith("tick")]
    ticks = [int(line.split()[1]) for line in lines]
    assert len(lines) == 5 and ticks == list(range(ticks[0], ticks[0] + 5))
    assert "last recorded motion" in lines[2] and all("last recorded" not in line for line in lines[3:])
    after = [line.split("target dxyz")[1].split("predicted")[0] for line in lines[3:]]
    assert all(np.allclose([float(v) for v in a.strip(" []").split()], 0.0) for a in after), lines
