"""Tick stamps on the timer's own grid, missed ticks, and clock jumps told apart from lateness (no rclpy).

A tick is stamped with its scheduled slot time, not with the moment its callback ran: chunk stamps and
sensor windows are then identical across replays of the same bag, and lateness shows up as missed ticks.
The grid must be the timer's: rcl keeps a timer on the grid of its creation time, so a grid anchored
anywhere else (e.g. at a late first callback) would stamp chunks up to one period away from when they are
produced, and a lock-stepped simulator would wait for them.

A jump of the clock (sim reset, bag loop, ``replay`` seeking) is not lateness: :meth:`TickClock.jumped`
re-anchors the grid and the slots skipped by a forward jump are counted as a jump, never as missed ticks.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts.constants import NS_PER_S


@dataclass
class TickClockStats:
    """What the clock has seen: ticks, slots missed by lateness, and jumps of the clock."""

    ticks: int = 0
    missed_ticks: int = 0
    jumps_back: int = 0
    jumps_forward: int = 0
    tick_period_s: float = float("nan")


class TickClock:
    """Turns callback times into tick stamps on a fixed grid of ``period_ns``."""

    def __init__(self, period_ns: int) -> None:
        if period_ns <= 0:
            raise ValueError(f"tick period must be positive, got {period_ns} ns")
        self.period_ns = int(period_ns)
        self.stats = TickClockStats()
        self._anchor_ns: int | None = None
        self._last_ns: int | None = None

    def reset(self) -> None:
        """Forget the grid (activation): the next tick anchors it again."""
        self._anchor_ns = None
        self._last_ns = None

    def jumped(self, backward: bool) -> None:
        """The clock jumped: re-anchor on the next tick, count the jump (not missed ticks)."""
        if backward:
            self.stats.jumps_back += 1
        else:
            self.stats.jumps_forward += 1
        self.reset()

    def tick(self, now_ns: int, until_next_ns: int | None = None) -> int | None:
        """Stamp of the tick whose callback runs at ``now_ns``, or ``None`` if that slot was served.

        ``until_next_ns`` is the timer's ``time_until_next_call()`` (None when unknown): the scheduled
        slot is ``now + until_next - period``. A time before the last tick is taken as a backward jump.
        """
        scheduled = (
            now_ns if until_next_ns is None else min(now_ns, now_ns + int(until_next_ns) - self.period_ns)
        )
        if self._last_ns is not None and scheduled < self._last_ns - self.period_ns // 2:
            self.jumped(backward=True)  # no jump callback told us (a loop without a clock of its own)
        if self._anchor_ns is None:
            self._anchor_ns = scheduled
        # Under wall time the estimate carries microseconds of read-out jitter: snap it to the grid.
        slot = round((scheduled - self._anchor_ns) / self.period_ns)
        tick_ns = self._anchor_ns + slot * self.period_ns
        if self._last_ns is not None:
            slots = round((tick_ns - self._last_ns) / self.period_ns)
            if slots < 1:
                return None
            self.stats.missed_ticks += slots - 1
            self.stats.tick_period_s = (tick_ns - self._last_ns) / NS_PER_S
        self._last_ns = tick_ns
        self.stats.ticks += 1
        return tick_ns

    @property
    def last_tick_ns(self) -> int | None:
        """Stamp of the newest tick (``None`` before the first after a reset)."""
        return self._last_ns
