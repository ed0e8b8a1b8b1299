"""When the action expert may command motion, and why not otherwise (no rclpy).

Every tick is judged from its inputs alone, so the controller recovers as soon as they are good again:
no features yet -> WAITING; features from another model, from the future, or older than the maximum age,
a sensor window that is incomplete, stale, gappy or non-finite, or (for a policy with state input) a
missing or stale robot pose -> HOLD; a needle force at or above the force guard
(:mod:`insertion_vla_ros.runtime.force_guard`) -> HOLD; a non-finite model output -> HOLD. WAITING and HOLD
chunks carry zero motion. Reasons start with a stable code (``code: details``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from contracts.constants import NS_PER_S


class ChunkStatus(enum.IntEnum):
    """Mirror of ``ActionChunk.STATUS_*``."""

    OK = 0
    WAITING = 1
    HOLD = 2


@dataclass(frozen=True)
class FeatureInfo:
    """What the hold policy needs to know about the newest VL features."""

    sequence: int
    stamp_ns: int
    fingerprint: str


@dataclass(frozen=True)
class Decision:
    """Outcome of a check: status, reason (empty when OK) and the feature age in seconds (NaN if none)."""

    status: ChunkStatus
    reason: str = ""
    vl_age_s: float = float("nan")

    @property
    def ok(self) -> bool:
        """Whether motion may be commanded."""
        return self.status == ChunkStatus.OK

    @property
    def code(self) -> str:
        """The reason's stable code (text before the first colon)."""
        return self.reason.split(":", 1)[0]


def check_inputs(
    tick_ns: int,
    features: FeatureInfo | None,
    *,
    expected_fingerprint: str | None,
    max_age_ns: int,
    window_problem: str = "",
    state_problem: str = "",
    force_problem: str = "",
) -> Decision:
    """Judge the inputs of one tick.

    ``window_problem`` is ``SensorWindow.problem``; ``state_problem`` is the reason from
    ``RobotStateBuffer.state_at`` for a policy with state input; ``force_problem`` is
    :func:`insertion_vla_ros.runtime.force_guard.force_problem` of the window.
    """
    if features is None:
        return Decision(ChunkStatus.WAITING, "no_vl_features: no VLFeatures received yet")
    age_ns = tick_ns - features.stamp_ns
    age_s = age_ns / NS_PER_S
    if expected_fingerprint is not None and features.fingerprint != expected_fingerprint:
        return Decision(
            ChunkStatus.HOLD,
            f"fingerprint_mismatch: features from {_short(features.fingerprint)}, "
            f"checkpoint is {_short(expected_fingerprint)}",
            age_s,
        )
    if age_ns < 0:
        return Decision(ChunkStatus.HOLD, f"vl_features_future: stamped {-age_s:.3f} s after the tick", age_s)
    if age_ns > max_age_ns:
        return Decision(
            ChunkStatus.HOLD, f"vl_features_stale: age {age_s:.2f} s > {max_age_ns / NS_PER_S:.2f} s", age_s
        )
    if window_problem:
        return Decision(ChunkStatus.HOLD, window_problem, age_s)
    if state_problem:
        return Decision(ChunkStatus.HOLD, state_problem, age_s)
    if force_problem:
        return Decision(ChunkStatus.HOLD, force_problem, age_s)
    return Decision(ChunkStatus.OK, "", age_s)


def check_output(actions: np.ndarray, inputs: Decision) -> Decision:
    """HOLD when the model output has NaN/Inf; otherwise the input decision stands."""
    bad = int((~np.isfinite(actions)).sum())
    if bad:
        reason = f"output_nonfinite: {bad} non-finite action values"
        return Decision(ChunkStatus.HOLD, reason, inputs.vl_age_s)
    return inputs


def _short(fingerprint: str, keep: int = 16) -> str:
    return repr(fingerprint if len(fingerprint) <= keep else fingerprint[:keep] + "...")


class HoldTracker:
    """Counts WAITING/HOLD decisions and reports changes of status or reason code (for logging once)."""

    def __init__(self) -> None:
        self.hold_count = 0
        self.counts_by_code: dict[str, int] = {}
        self.last: Decision | None = None
        self.changed = False
        """Whether the newest decision's status or reason code differs from the one before."""

    def update(self, decision: Decision) -> bool:
        """Record ``decision``; returns True when status or reason code differs from the previous one."""
        if not decision.ok:
            self.hold_count += 1
            self.counts_by_code[decision.code] = self.counts_by_code.get(decision.code, 0) + 1
        last = self.last
        self.changed = last is None or (last.status, last.code) != (decision.status, decision.code)
        self.last = decision
        return self.changed
