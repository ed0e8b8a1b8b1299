"""When the VLM runs: once per period, never queued (no rclpy). vlm_node and the simulated VLM share it.

A period timer asks for an inference every ``period``; if one is still running, the request is remembered
once (``pending``) and the next inference starts the moment the running one finishes. Requests never pile
up, so with a latency longer than the period the VLM runs back to back, and otherwise once per period.
:class:`VlmSchedule` is that rule; vlm_node calls it from its timer and worker thread,
:class:`SimulatedVlm` replays it on a simulated clock for the in-process loop and ``evaluate``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class VlmSchedule:
    """The busy/pending rule; thread-safe. Each method returns whether an inference starts now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.busy = False
        self.pending = False

    def period_elapsed(self) -> bool:
        """The period timer fired: start now, or remember one request if an inference is running."""
        with self._lock:
            if self.busy:
                self.pending = True
                return False
            self.busy = True
            return True

    def inference_done(self) -> bool:
        """The running inference finished (or was skipped): start the remembered request now, if any."""
        with self._lock:
            if self.pending:
                self.pending = False
                return True
            self.busy = False
            return False

    def cancel(self) -> None:
        """Drop the remembered request (deactivation): nothing runs after the current inference."""
        with self._lock:
            self.pending = False


@dataclass
class VlmResult:
    """Features of one inference: capture time, when they become usable, the features."""

    sequence: int
    capture_ns: int
    ready_ns: int
    features: Any


@dataclass
class SimulatedVlm:
    """:class:`VlmSchedule` on a simulated clock: period timer from the first call, fixed latency.

    ``extract(start_ns)`` runs the model on the newest input at ``start_ns`` and returns
    ``(capture_ns, features)``, or ``None`` when there is no input yet (the inference is skipped, as the
    node skips a period without a camera set).
    """

    extract: Callable[[int], tuple[int, Any] | None]
    period_ns: int
    latency_ns: int
    schedule: VlmSchedule = field(default_factory=VlmSchedule)
    results: list[VlmResult] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)
    _next_timer_ns: int | None = None
    _running: VlmResult | None = None
    _sequence: int = 0

    def advance(self, t_ns: int) -> list[VlmResult]:
        """Process every timer and completion event up to ``t_ns`` in time order; return new results."""
        new: list[VlmResult] = []
        if self._next_timer_ns is None:
            self._next_timer_ns = t_ns
        while True:
            done_ns = self._running.ready_ns if self._running is not None else None
            if done_ns is not None and done_ns <= t_ns and done_ns <= self._next_timer_ns:
                finished, self._running = self._running, None
                if finished.features is not None:
                    self.results.append(finished)
                    new.append(finished)
                if self.schedule.inference_done():
                    self._start(done_ns)
            elif self._next_timer_ns <= t_ns:
                timer_ns = self._next_timer_ns
                self._next_timer_ns += self.period_ns
                if self.schedule.period_elapsed():
                    self._start(timer_ns)
            else:
                return new

    def _start(self, start_ns: int) -> None:
        started = time.perf_counter()
        out = self.extract(start_ns)
        self.wall_s.append(time.perf_counter() - started)
        if out is None:
            self._running = VlmResult(0, start_ns, start_ns, None)  # skipped: done at once
            return
        self._sequence += 1
        capture_ns, features = out
        self._running = VlmResult(self._sequence, capture_ns, start_ns + self.latency_ns, features)

    def newest(self) -> VlmResult | None:
        """The newest published features."""
        return self.results[-1] if self.results else None
