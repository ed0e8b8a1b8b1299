"""Approximate-time selection of one image per camera (like message_filters' ApproximateTime), no rclpy.

``select_camera_set`` is a pure function over per-camera image stamps: it returns the newest complete set
(one stamp per camera) whose skew (newest minus oldest stamp) is at most ``slop_ns``, or says why there is
none (which cameras have no usable image, or which cameras are too far from the newest one and by how
much). ``CameraQueues`` keeps a short per-camera store of messages keyed by their header stamp and applies
the selection; it is thread-safe so camera callbacks and the VLM worker can share it.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from contracts.constants import NS_PER_S


@dataclass(frozen=True)
class CameraSetSelection:
    """Outcome of :func:`select_camera_set`.

    ``stamps_ns`` maps every camera to its chosen stamp when a set was found (``ok``), else is ``None``.
    ``missing`` lists cameras without any usable image. ``offsets_ns`` gives, for the chosen set or for the
    best rejected candidate, each camera's distance below the newest stamp of that candidate (0 for the
    newest camera); ``skew_ns`` is the largest of them. ``reason`` is empty when ``ok``.
    """

    stamps_ns: dict[str, int] | None
    skew_ns: int
    missing: tuple[str, ...] = ()
    offsets_ns: dict[str, int] = field(default_factory=dict)
    reason: str = ""

    @property
    def ok(self) -> bool:
        """Whether a complete set within the slop was found."""
        return self.stamps_ns is not None

    @property
    def newest_ns(self) -> int:
        """Newest stamp of the chosen set (the feature time t0); raises if there is no set."""
        if self.stamps_ns is None:
            raise ValueError("no camera set was selected")
        return max(self.stamps_ns.values())

    def worst_camera(self) -> str | None:
        """Camera furthest below the newest stamp (the one to blame for a skew), ``None`` if no offsets."""
        if not self.offsets_ns:
            return None
        return max(self.offsets_ns, key=lambda name: self.offsets_ns[name])


def select_camera_set(
    stamps_by_camera: Mapping[str, Sequence[int]],
    slop_ns: int,
    *,
    now_ns: int | None = None,
    max_age_ns: int | None = None,
) -> CameraSetSelection:
    """Choose the newest complete camera set with skew <= ``slop_ns``.

    ``stamps_by_camera`` maps each camera (all of them, in model order) to the stamps of the images it has
    available, in any order (out-of-order arrival is fine). With ``now_ns`` and ``max_age_ns``, images
    older than ``now_ns - max_age_ns`` are not usable (a stopped camera then shows up as missing), and so
    are images stamped after ``now_ns`` (never use the future).

    "Newest" means the set whose newest stamp is latest; among those, each camera takes its newest stamp
    not after that one, which also gives the smallest skew for that newest stamp.
    """
    if slop_ns < 0:
        raise ValueError(f"slop must be >= 0, got {slop_ns} ns")
    if not stamps_by_camera:
        raise ValueError("no cameras given")
    usable: dict[str, list[int]] = {}
    for name, stamps in stamps_by_camera.items():
        kept = sorted(int(s) for s in stamps)
        if now_ns is not None:
            kept = [s for s in kept if s <= now_ns]
            if max_age_ns is not None:
                kept = [s for s in kept if now_ns - s <= max_age_ns]
        usable[name] = kept
    missing = tuple(name for name, stamps in usable.items() if not stamps)
    if missing:
        aged = max_age_ns is not None and now_ns is not None
        age_note = f" within {max_age_ns / NS_PER_S:.3g} s" if aged else ""
        return CameraSetSelection(
            None, 0, missing=missing, reason=f"no image{age_note} from camera(s) {', '.join(missing)}"
        )

    best_rejected: tuple[int, dict[str, int]] | None = None
    candidates = sorted({s for stamps in usable.values() for s in stamps}, reverse=True)
    for anchor in candidates:
        chosen: dict[str, int] = {}
        for name, stamps in usable.items():
            index = bisect.bisect_right(stamps, anchor)
            if index == 0:
                break
            chosen[name] = stamps[index - 1]
        if len(chosen) != len(usable):
            continue  # some camera has nothing at or before this anchor; older anchors may still work
        offsets = {name: anchor - stamp for name, stamp in chosen.items()}
        skew = max(offsets.values())
        if skew <= slop_ns:
            return CameraSetSelection(chosen, skew, offsets_ns=offsets)
        if best_rejected is None or skew < best_rejected[0]:
            best_rejected = (skew, offsets)

    if best_rejected is None:  # cannot happen when every camera has a stamp, kept for safety
        return CameraSetSelection(None, 0, reason="no complete camera set")
    skew, offsets = best_rejected
    late = [name for name, offset in sorted(offsets.items(), key=lambda kv: -kv[1]) if offset > slop_ns]
    details = ", ".join(f"{name} {offsets[name] / 1e6:.1f} ms behind" for name in late)
    return CameraSetSelection(
        None,
        skew,
        offsets_ns=offsets,
        reason=f"camera skew {skew / 1e6:.1f} ms > slop {slop_ns / 1e6:.1f} ms ({details})",
    )


class CameraQueues:
    """Short per-camera stores of messages keyed by header stamp (thread-safe).

    Each camera keeps its ``depth`` newest stamps; an older stamp arriving late is inserted in order (or
    dropped when the store is full of newer ones); a repeated stamp replaces the stored message.
    """

    def __init__(self, camera_names: Sequence[str], depth: int) -> None:
        if depth < 1:
            raise ValueError(f"queue depth must be >= 1, got {depth}")
        if len(set(camera_names)) != len(camera_names) or not camera_names:
            raise ValueError(f"camera names must be unique and non-empty, got {list(camera_names)}")
        self.camera_names = tuple(camera_names)
        self.depth = int(depth)
        self._lock = threading.Lock()
        self._stamps: dict[str, list[int]] = {name: [] for name in self.camera_names}
        self._items: dict[str, dict[int, Any]] = {name: {} for name in self.camera_names}
        self.received: dict[str, int] = dict.fromkeys(self.camera_names, 0)
        self.out_of_order: dict[str, int] = dict.fromkeys(self.camera_names, 0)
        self.last_receipt_ns: dict[str, int | None] = dict.fromkeys(self.camera_names, None)

    def add(self, camera: str, stamp_ns: int, item: Any, receipt_ns: int | None = None) -> None:
        """Store ``item`` for ``camera`` under ``stamp_ns``."""
        with self._lock:
            stamps = self._stamps[camera]
            items = self._items[camera]
            self.received[camera] += 1
            self.last_receipt_ns[camera] = receipt_ns
            if stamp_ns in items:
                items[stamp_ns] = item
                return
            if stamps and stamp_ns < stamps[-1]:
                self.out_of_order[camera] += 1
            bisect.insort(stamps, stamp_ns)
            items[stamp_ns] = item
            while len(stamps) > self.depth:
                items.pop(stamps.pop(0))

    def clear(self) -> None:
        """Forget every stored image (a clock jump: their stamps belong to another timeline)."""
        with self._lock:
            for name in self.camera_names:
                self._stamps[name].clear()
                self._items[name].clear()

    def select(
        self, slop_ns: int, *, now_ns: int | None = None, max_age_ns: int | None = None
    ) -> CameraSetSelection:
        """Apply :func:`select_camera_set` to the stored stamps."""
        with self._lock:
            snapshot = {name: list(self._stamps[name]) for name in self.camera_names}
        return select_camera_set(snapshot, slop_ns, now_ns=now_ns, max_age_ns=max_age_ns)

    def items(self, stamps_ns: Mapping[str, int]) -> list[Any] | None:
        """Return the stored items of a selected set in camera order (``None`` if one was evicted)."""
        with self._lock:
            found = [self._items[name].get(stamps_ns[name]) for name in self.camera_names]
        return None if any(item is None for item in found) else found
