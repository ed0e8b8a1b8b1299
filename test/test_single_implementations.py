"""One implementation of each rule: the tick decision, the VLM schedule and bag reading live in one place."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PRODUCT = [
    p
    for room in ("insertion_vla_ros", "models", "training", "sim", "contracts", "bench", "scripts")
    for p in (REPO / room).rglob("*.py")
]


def _files_matching(pattern: str) -> set[str]:
    regex = re.compile(pattern, re.MULTILINE)
    return {str(p.relative_to(REPO)) for p in PRODUCT if regex.search(p.read_text())}


def test_only_the_controller_judges_a_tick():
    controller = "insertion_vla_ros/runtime/controller.py"
    assert _files_matching(r"(?<!def )\bcheck_inputs\(") == {controller}
    assert _files_matching(r"(?<!def )\bcheck_output\(") == {controller}
    assert _files_matching(r"(?<!class )\bSafetyLimiter\(") == {controller}
    assert _files_matching(r"(?<!def )\bforce_problem\(") == {controller}
    # the loops that tick all build the controller
    for loop in (
        "insertion_vla_ros/nodes/action_expert_node.py",
        "insertion_vla_ros/tools/sim_loop.py",
        "insertion_vla_ros/tools/evaluate.py",
    ):
        assert "TickController(" in (REPO / loop).read_text(), loop
    assert "evaluate_episode(" in (REPO / "scripts" / "openloop_check.py").read_text()


def test_one_vlm_schedule_and_one_bag_reader():
    assert _files_matching(r"\bclass VlmSchedule\b") == {"insertion_vla_ros/runtime/vlm_schedule.py"}
    assert "VlmSchedule()" in (REPO / "insertion_vla_ros/nodes/vlm_node.py").read_text()
    assert _files_matching(r"_pending\s*=\s*True") == set()  # no hand-rolled copy of the busy/pending rule
    # decoding bags (typestore, custom types, every image encoding) happens in convert_bag only; replay
    # republishes raw messages without decoding them
    assert _files_matching(r"\.deserialize\(") == {"training/convert_bag.py"}
    assert _files_matching(r"get_typestore\(") == {"contracts/bag_types.py"}
    evaluate = (REPO / "insertion_vla_ros/tools/evaluate.py").read_text()
    assert "convert_bags(" in evaluate and "AnyReader" not in evaluate


def test_one_home_per_shared_constant():
    assert _files_matching(r"^NS_PER_S\s*=") == {"contracts/constants.py"}
    assert _files_matching(r"^CAMERA_NAMES\b.*=") == {"contracts/constants.py"}
    assert _files_matching(r"^ACTION_NAMES\b.*=") == {"contracts/constants.py"}
    assert _files_matching(r'"view1",\s*"view2"') == {"contracts/constants.py"}
    assert _files_matching(r"2\.0, 2\.0, 2\.0, 0\.05") == {"contracts/constants.py"}
    assert _files_matching(r'"/vla/vl_features"|"/needle_sensor/samples"') == {"contracts/topics.py"}
