"""Sagas this process has folded, kept by saga id so the next read folds only the events it lacks.

A saga is read before every move (a step's fence, a compensation's outcome, the sweep) and after
each move this process already holds the saga as stored. Reading the whole stream again and folding
it from ``saga.started`` cost a step most of its read: decoding and validating every event again.
The stream only ever grows (events are appended under the stream's version, never changed nor
removed), so a saga folded at version *v* is a true prefix of the saga: the read asks the store for
the events after *v* (one query, as before, usually returning none or a few) and folds those. What
this process appended itself is kept as records, folded only if this process reads the saga again
(the saga's next step often runs in another process).

Nothing is trusted that the store would not confirm: the read still goes to the store every time, a
gap in versions falls back to a full read, and the append's ``expected_version`` still checks the
version decided on. The cache is bounded (least recently used out) and per process.
"""

from __future__ import annotations

from collections import OrderedDict
from threading import Lock
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relaybus.eventstore import RecordedEvent
    from relaybus.sagas.repository import LoadedSaga

#: A saga as folded, and the records stored after it, not folded yet.
Folded = tuple["LoadedSaga", tuple["RecordedEvent", ...]]

DEFAULT_SIZE = 2048


class FoldedSagas:
    """Up to ``size`` sagas as last read or written by this process, by saga id."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self._size = size
        self._by_id: OrderedDict[str, Folded] = OrderedDict()
        self._lock = Lock()

    def get(self, saga_id: str) -> Folded | None:
        with self._lock:
            folded = self._by_id.get(saga_id)
            if folded is not None:
                self._by_id.move_to_end(saga_id)
            return folded

    def put(self, loaded: LoadedSaga, after: tuple[RecordedEvent, ...] = ()) -> None:
        """Keep ``loaded`` and the records ``after`` it, unless a later version of the saga is kept already."""
        with self._lock:
            known = self._by_id.get(loaded.saga_id)
            if known is not None and version_of(known) > version_of((loaded, after)):
                return
            self._by_id[loaded.saga_id] = (loaded, after)
            self._by_id.move_to_end(loaded.saga_id)
            while len(self._by_id) > self._size:
                self._by_id.popitem(last=False)

    def drop(self, saga_id: str) -> None:
        with self._lock:
            self._by_id.pop(saga_id, None)

    def __len__(self) -> int:
        return len(self._by_id)


def version_of(folded: Folded) -> int:
    loaded, after = folded
    return after[-1].version if after else loaded.version
