"""The newer benches run and print their one JSON object with the keys the README quotes (tiny sizes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bench(name: str, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{name}.py"), *args],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["bench"] == name
    return result


def test_grounding_data_reports_the_frames_it_rendered():
    result = _bench("grounding_data", "--scenes", "1", "--frames-per-scene", "2")
    metrics = result["metrics"]
    assert metrics["frames"] == 2 and metrics["frames_per_s"] > 0
    assert metrics["frame_amortised_p50_ms"] > 0


def test_vision_attention_compares_both_paths_on_the_same_output():
    result = _bench("vision_attention", "--depth", "1", "--repeats", "1")
    metrics = result["metrics"]
    assert result["config"]["patched_layers"] == 1
    assert metrics["max_relative_difference"] < 1e-4
    assert metrics["batched_speedup"] > 0


def test_staleness_keys_name_the_latency():
    sys.path.insert(0, str(ROOT / "bench"))
    from staleness import latency_key

    assert [latency_key(x) for x in (0.0, 0.3, 1.5, 3.0)] == ["0", "0p3", "1p5", "3p0"]


def test_staleness_ablation_of_the_embedded_default_loads(tmp_path):
    """The recipes without motion input keep the read-out gates, steering to the offset at capture."""
    sys.path.insert(0, str(ROOT / "bench"))
    from staleness import _without_motion

    from models.config import load_model_config

    ablation = load_model_config(_without_motion(tmp_path, "tiny_sim")).action_expert
    assert not ablation.motion_input and ablation.lateral_from_readout and ablation.grounding_input


def test_closed_loop_settled_success_counts_only_episodes_the_policy_finished():
    """A needle still moving when the timeout catches it in tolerance is a success, not a settled one."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("closed_loop_bench", ROOT / "bench" / "closed_loop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    runs = [
        {"success": True, "end_reason": "timeout"},
        {"success": True, "end_reason": "settled"},
        {"success": False, "end_reason": "settled"},
        {"success": False, "end_reason": "timeout"},
    ]
    assert module.settled_success(runs) == 0.25
