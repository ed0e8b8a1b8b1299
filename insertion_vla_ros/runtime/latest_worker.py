"""A background thread that processes only the newest submitted item (latest wins).

The action expert encodes each VLFeatures message once (the VL resampler over up to 1500 x 2048 values,
~57 ms on a CPU). Doing that in the executor thread delayed the next 10 Hz tick by as much; this worker
moves it off the executor. An item submitted while another waits replaces it: only the newest features
matter, and the replaced ones are counted, not silently lost.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")


class LatestWorker(Generic[Item]):
    """Run ``process(item)`` in one daemon thread for the newest submitted item.

    ``on_error(item, error)`` receives the exception of a failed ``process`` call; the thread goes on.
    """

    def __init__(
        self,
        process: Callable[[Item], Any],
        on_error: Callable[[Item, BaseException], Any],
        name: str = "latest-worker",
    ) -> None:
        self._process = process
        self._on_error = on_error
        self._condition = threading.Condition()
        self._pending: tuple[Item] | None = None
        self._busy = False
        self._stopping = False
        self.superseded = 0
        """Items replaced by a newer one before they were processed."""
        self.processed = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Item) -> bool:
        """Queue ``item``, replacing one that has not started yet; False (dropped) once stopped."""
        with self._condition:
            if self._stopping:
                return False
            if self._pending is not None:
                self.superseded += 1
            self._pending = (item,)
            self._condition.notify_all()
            return True

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Block until nothing is pending or running; False on timeout."""
        with self._condition:
            return self._condition.wait_for(lambda: self._pending is None and not self._busy, timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Drop what is pending, let the running item finish and end the thread."""
        with self._condition:
            self._stopping = True
            self._pending = None
            self._condition.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._pending is not None or self._stopping)
                if self._stopping:
                    self._condition.notify_all()
                    return
                (item,), self._pending = self._pending, None
                self._busy = True
            try:
                self._process(item)
            except Exception as error:  # reported, never fatal for the thread
                self._on_error(item, error)
            finally:
                with self._condition:
                    self._busy = False
                    self.processed += 1
                    self._condition.notify_all()
