"""Start records held back: a task's ``task.received`` and ``task.started`` wait to be written in the same
transaction as its next record (usually its terminal one), or by a background thread once the task has
run for :data:`START_FLUSH_AFTER_S`: one commit per short task instead of two.

A crash inside that window loses the dead attempt's start, never anything the broker thinks done: the
redelivered attempt records its own start, marked ``redelivered``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from relaybus.eventstore import NewEvent

logger = logging.getLogger(__name__)

START_FLUSH_AFTER_S = 0.1


class HeldStarts:
    """The start records of running tasks, by task id, and the thread that writes the ones held too long.

    ``io_lock`` is held by whoever writes (this flusher, or the recorder appending a task's next record),
    so a task's start is never committed after its terminal record.
    """

    def __init__(self, write: Callable[[list[NewEvent]], object]) -> None:
        self._write = write
        self._pending: dict[str, tuple[float, list[NewEvent]]] = {}
        self._pending_lock = threading.Lock()
        self.io_lock = threading.RLock()
        self._flusher: threading.Thread | None = None

    def hold(self, task_id: str, events: list[NewEvent]) -> None:
        with self._pending_lock:
            self._pending[task_id] = (time.monotonic(), events)
        if self._flusher is None or not self._flusher.is_alive():
            self._flusher = threading.Thread(target=self._flush_loop, name="relaybus-recorder", daemon=True)
            self._flusher.start()

    def take(self, task_id: str | None) -> list[NewEvent]:
        """The records held for ``task_id``, no longer held (the caller writes them)."""
        if task_id is None:
            return []
        with self._pending_lock:
            entry = self._pending.pop(task_id, None)
        return entry[1] if entry else []

    def give_back(self, task_id: str | None, events: list[NewEvent]) -> None:
        """Hold again what :meth:`take` gave a writer that could not write it."""
        if events and task_id is not None:
            with self._pending_lock:
                self._pending.setdefault(task_id, (time.monotonic(), events))

    def flush(self, older_than_s: float = 0.0) -> int:
        """Write the start records of tasks that have run longer than ``older_than_s``."""
        with self.io_lock:
            now = time.monotonic()
            with self._pending_lock:
                due = [k for k, (at, _) in self._pending.items() if now - at >= older_than_s]
                batch = [self._pending.pop(k) for k in due]
            if not batch:
                return 0
            events = [e for _, evs in batch for e in evs]
            try:
                self._write(events)
            except Exception:
                with self._pending_lock:
                    for k, entry in zip(due, batch, strict=True):
                        self._pending.setdefault(k, entry)
                raise
            return len(events)

    def _flush_loop(self) -> None:
        while True:
            time.sleep(START_FLUSH_AFTER_S / 2)
            try:
                self.flush(older_than_s=START_FLUSH_AFTER_S)
            except Exception:  # the store is down: keep them, try again on the next tick
                logger.warning("could not flush start records; will retry", exc_info=True)
