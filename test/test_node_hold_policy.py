"""Hold policy: every cause gives its status and reason code, and a good tick recovers."""

from __future__ import annotations

import numpy as np

from insertion_vla_ros.runtime.hold_policy import (
    ChunkStatus,
    FeatureInfo,
    HoldTracker,
    check_inputs,
    check_output,
)

S = 1_000_000_000
GOOD = FeatureInfo(sequence=3, stamp_ns=10 * S, fingerprint="fp-a")


def judge(tick_ns: int, features: FeatureInfo | None, window_problem: str = ""):
    return check_inputs(
        tick_ns, features, expected_fingerprint="fp-a", max_age_ns=2 * S, window_problem=window_problem
    )


def test_each_cause_and_recovery():
    tracker = HoldTracker()
    cases = [
        (judge(11 * S, None), ChunkStatus.WAITING, "no_vl_features"),
        (judge(11 * S, GOOD), ChunkStatus.OK, ""),
        (judge(13 * S, GOOD), ChunkStatus.HOLD, "vl_features_stale"),
        (judge(11 * S, FeatureInfo(3, 10 * S, "fp-b")), ChunkStatus.HOLD, "fingerprint_mismatch"),
        (judge(9 * S, GOOD), ChunkStatus.HOLD, "vl_features_future"),
        (judge(11 * S, GOOD, "sensor_window_incomplete: 3/65"), ChunkStatus.HOLD, "sensor_window_incomplete"),
        (judge(11 * S, GOOD, "sensor_window_nonfinite: 1"), ChunkStatus.HOLD, "sensor_window_nonfinite"),
        (judge(11 * S, GOOD), ChunkStatus.OK, ""),
    ]
    changes = [tracker.update(decision) for decision, _, _ in cases]
    for decision, status, code in cases:
        assert decision.status == status
        assert decision.code == code
    assert changes == [True, True, True, True, True, True, True, True]
    assert tracker.hold_count == 6
    assert tracker.counts_by_code["vl_features_stale"] == 1
    assert judge(13 * S, GOOD).reason == "vl_features_stale: age 3.00 s > 2.00 s"
    assert judge(12 * S, GOOD).ok  # age == max is still fresh
    assert judge(11 * S, GOOD).vl_age_s == 1.0


def test_output_nonfinite_holds():
    inputs = judge(11 * S, GOOD)
    assert check_output(np.zeros((8, 7)), inputs) is inputs
    bad = np.zeros((8, 7))
    bad[3, 2] = np.nan
    decision = check_output(bad, inputs)
    assert decision.status == ChunkStatus.HOLD and decision.code == "output_nonfinite"
    assert decision.vl_age_s == 1.0


def test_tracker_reports_only_changes():
    tracker = HoldTracker()
    stale = judge(13 * S, GOOD)
    assert tracker.update(stale) is True
    assert tracker.update(judge(14 * S, GOOD)) is False  # same code, different details
    assert tracker.update(judge(11 * S, GOOD)) is True


def test_robot_state_missing_stale_and_nonfinite_hold():
    from insertion_vla_ros.runtime.robot_state import RobotStateBuffer

    buffer = RobotStateBuffer()
    state, problem = buffer.state_at(11 * S, S // 10)
    assert state is None and problem.startswith("robot_state_missing")
    pose = np.array([1.0, 2.0, -3.0, 0.0, 0.0, 0.0, 1.0])
    buffer.add(11 * S - S // 20, pose)
    buffer.add(11 * S + S // 100, pose + 5.0)  # after the tick: never used for it
    state, problem = buffer.state_at(11 * S, S // 10)
    assert problem == "" and np.array_equal(state, pose.astype(np.float32))
    state, problem = buffer.state_at(11 * S + S // 5, S // 10)  # newest pose is now 0.19 s old
    assert state is None and problem.startswith("robot_state_stale: newest pose 0.190 s old")
    try:
        buffer.add(12 * S, np.full(7, np.nan))
    except ValueError as error:
        assert str(error).startswith("robot_state_nonfinite")
    else:
        raise AssertionError("a NaN pose was accepted")
    assert buffer.rejected == 1
    decision = check_inputs(
        11 * S, GOOD, expected_fingerprint="fp-a", max_age_ns=2 * S, state_problem=problem
    )
    assert decision.status == ChunkStatus.HOLD and decision.code == "robot_state_stale"
