"""The budget's ledger (tasks.runtime.budgets.LogLedger) on a real log (SQLite, PostgreSQL): a check reads only the
``llm.completed`` records added since the previous one, pages through a long history, agrees with the full fold,
and stays right with concurrent checks and in a new process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from relaybus.eventstore import EventStore, NewEvent, open_store
from relaybus.eventstore import types as t
from relaybus.tasks.llm import Spent
from relaybus.tasks.runtime.budgets import SPENT_PAGE, LogLedger


class ReadCounting:
    """The real store, counting the events its ``find`` returns (what a check reads)."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.read = 0

    def find(self, **filters: Any) -> list[Any]:
        found = self.store.find(**filters)
        self.read += len(found)
        return found


@pytest.fixture
def store(eventstore_url: str) -> Iterator[EventStore]:
    store = open_store(eventstore_url, create=True)
    yield store
    store.close()


def calls(correlation_id: str, n: int, *, tokens: tuple[int, int] = (7, 3), micros: int | None = 25) -> list[NewEvent]:
    payload: dict[str, Any] = {"completion": {"provider": "p", "model": "m",
                                              "usage": {"prompt_tokens": tokens[0], "completion_tokens": tokens[1]}}}
    if micros is not None:
        payload["cost"] = {"micros": micros, "currency": "USD"}
    return [NewEvent(stream_id=f"task-{correlation_id}", type=t.LLM_COMPLETED, agent="writer",
                     correlation_id=correlation_id, payload=payload) for _ in range(n)]


def folded(store: EventStore, correlation_id: str) -> Spent:
    total = store.llm_usage(correlation_id=correlation_id, by=())
    return Spent(total[0].tokens, total[0].cost_micros) if total else Spent()


def test_each_check_of_a_long_workflow_reads_only_the_calls_recorded_since_the_last(store: EventStore) -> None:
    history = SPENT_PAGE * 2 + 17  # more than one page: the first check pages through all of it
    store.append(calls("wf", history))
    store.append(calls("other", 5, tokens=(1000, 1000)))
    counting = ReadCounting(store)
    ledger = LogLedger(counting)
    assert ledger.spent("wf") == Spent(10 * history, 25 * history) == folded(store, "wf")
    assert counting.read == history
    reads = []
    for i in range(50):
        store.append(calls("wf", 1 + i % 3, micros=None if i % 2 else 25))
        store.append(calls("other", 2))  # another workflow's calls are not read
        counting.read = 0
        assert ledger.spent("wf") == folded(store, "wf")
        reads.append(counting.read)
    assert reads == [1 + i % 3 for i in range(50)]  # bounded by what is new, not by the 2,000-odd before it
    counting.read = 0
    assert ledger.spent("wf") == folded(store, "wf") and counting.read == 0
    # A new process (a restarted worker) has no running total: it reads the workflow once, then only news.
    fresh = LogLedger(counting)
    assert fresh.spent("wf") == folded(store, "wf") and counting.read > history


def test_concurrent_checks_and_records_of_one_workflow_end_at_the_full_fold(store: EventStore) -> None:
    ledger = LogLedger(store)
    errors: list[BaseException] = []

    def branch() -> None:
        try:
            for _ in range(40):
                store.append(calls("wf", 1))
                seen = ledger.spent("wf")
                assert seen.tokens >= 10 and seen.tokens % 10 == 0  # at least its own call, never half a call
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=branch) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and not any(thread.is_alive() for thread in threads)
    assert ledger.spent("wf") == folded(store, "wf") == Spent(10 * 240, 25 * 240)
