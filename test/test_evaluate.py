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
