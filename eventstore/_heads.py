"""Stream heads: the (version, hash) of each stream's last event, read from the log or remembered.

An append needs the head of every stream it writes, to number its events and chain their hashes.
Reading them costs a query per append; :class:`HeadCache` remembers, per writer (one per store
object, so per process), the heads this writer committed or read, and the database checks them:
``(stream_id, version)`` is unique, so an append numbered from a stale head (another writer
appended meanwhile) collides with the event already at that version and is retried with the heads
read from the log. A head is remembered only after its transaction committed, so the cache is
never ahead of the log; an older head than the log's is always caught by the constraint.

What the cache assumes: the log is never rewound under a live store (events are append-only; a
test that drops and recreates the tables must open a new store).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from typing import Any

Head = tuple[int, str | None]
"""(version of the stream's last event, its hash)."""


class HeadCache:
    """The heads this writer knows, bounded (cleared when full: a miss only costs a read)."""

    def __init__(self, max_streams: int = 100_000) -> None:
        self._heads: dict[str, Head] = {}
        self._max = max_streams
        self._lock = threading.Lock()

    def known(self, stream_ids: Iterable[str]) -> dict[str, Head]:
        heads = self._heads
        return {s: heads[s] for s in stream_ids if s in heads}

    def remember(self, heads: dict[str, Head]) -> None:
        """After a commit: ``heads`` are now in the log (or older than what is)."""
        with self._lock:
            if len(self._heads) + len(heads) > self._max:
                self._heads.clear()
            self._heads.update(heads)

    def forget(self, stream_ids: Iterable[str]) -> None:
        """After a failed or doubtful commit, or a collision: read these from the log next time."""
        with self._lock:
            for stream in stream_ids:
                self._heads.pop(stream, None)


_SQLITE_HEADS = (
    "SELECT e.stream_id, e.version, e.hash FROM json_each(?) AS s JOIN events AS e "
    "ON e.stream_id = s.value AND e.version = (SELECT max(version) FROM events WHERE stream_id = s.value)"
)
"""Per stream, its last version found in the (stream_id, version) index and that one row read: a
GROUP BY over the streams would read every event of each (a pipeline's stream holds dozens)."""


_SQLITE_ONE_HEAD = "SELECT stream_id, version, hash FROM events WHERE stream_id = ? ORDER BY version DESC LIMIT 1"


def sqlite_heads(driver: Any, stream_ids: set[str]) -> dict[str, Head]:
    """Per stream: (current version, hash of the last event) from the log, absent streams left out; on a sqlite3
    connection, in the caller's transaction (fixed SQL, no Core)."""
    if not stream_ids:
        return {}
    if len(stream_ids) == 1:
        rows = driver.execute(_SQLITE_ONE_HEAD, tuple(stream_ids))
    else:
        rows = driver.execute(_SQLITE_HEADS, (json.dumps(sorted(stream_ids)),))
    return {stream_id: (version, hash_) for stream_id, version, hash_ in rows}


class LastPosition:
    """The last position this writer committed or read under the lock, and whether it was alone then.

    On PostgreSQL an append that guesses its positions (the ones after this) and its streams' heads
    (remembered, or new) needs no read before its insert: the lock, the rows and the commit go in one
    round trip instead of two. The database checks the guess: positions have no gaps and the log only
    grows, so a guess is either the next position or one already taken, which the primary key refuses
    (then the append reads and retries); a stream guessed new that is not meets the unique
    ``(stream_id, version)``. A writer guesses only while it found the log where it left it last time
    (nobody else appending between), so writers that share a busy log do not pay for misses.
    Remembered only after a commit, as heads are; the same assumption as :class:`HeadCache` (the log
    is never rewound under a live store).
    """

    def __init__(self) -> None:
        self._last: int | None = None
        self._alone = False

    def guess(self, count: int) -> list[int] | None:
        """The ``count`` positions to try, or None when the writer should read them."""
        last = self._last
        if last is None or not self._alone:
            return None
        return list(range(last + 1, last + 1 + count))

    def read(self, positions: list[int]) -> None:
        """Positions drawn under the lock and committed: was the log where this writer left it?"""
        if positions:
            self._alone = self._last is not None and positions[0] == self._last + 1
            self._last = positions[-1]

    def committed(self, positions: list[int]) -> None:
        """A guess that held."""
        if positions:
            self._last = positions[-1]

    def missed(self) -> None:
        """A guess refused (or an append that failed): read next time."""
        self._alone = False
