"""/metrics' running totals (relaybus.web.counting) folded from a real SQLite log: outcomes, histograms with
cumulative buckets, a send recorded after its task finished, the look-back, and only new records per scrape."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from relaybus.eventstore import EventStore, NewEvent, open_store
from relaybus.eventstore import types as t
from relaybus.web.counting import BUCKETS, Counters

NOW = datetime.now(UTC)


@pytest.fixture
def store(tmp_path: Path) -> EventStore:
    return open_store(f"sqlite:///{tmp_path / 'events.sqlite'}", create=True)


def task(task_id: str, agent: str, *steps: tuple[str, float]) -> list[NewEvent]:
    """Lifecycle records of one task, each at ``NOW + seconds``."""
    return [NewEvent(stream_id=f"wf-{task_id}", type=type_, task_id=task_id, agent=agent,
                     occurred_at=NOW + timedelta(seconds=s)) for type_, s in steps]


def test_outcomes_run_time_and_queue_wait_per_agent(store: EventStore) -> None:
    store.append([
        *task("a", "writer", (t.TASK_SENT, 0), (t.TASK_STARTED, 0.5), (t.TASK_SUCCEEDED, 2.5)),
        *task("b", "writer", (t.TASK_SENT, 0), (t.TASK_STARTED, 0.01), (t.TASK_RETRIED, 0.2),
              (t.TASK_STARTED, 1.0), (t.TASK_FAILED, 1.03), (t.TASK_DEAD_LETTERED, 1.04)),
        # A send the sender recorded after the task had already finished: its queue wait still counts.
        *task("c", "critic", (t.TASK_STARTED, 0.3), (t.TASK_SUCCEEDED, 0.4), (t.TASK_SENT, 0.1)),
        NewEvent(stream_id="wf-a", type=t.LLM_COMPLETED, agent="writer",
                 payload={"completion": {"model": "m1", "usage": {"prompt_tokens": 7, "completion_tokens": 3}}}),
    ])  # fmt: skip
    s = Counters(store).update(NOW)
    assert s.outcomes == {("writer", "succeeded"): 1, ("writer", "retried"): 1, ("writer", "failed"): 1,
                          ("writer", "dead_lettered"): 1, ("critic", "succeeded"): 1}
    writer_runs = s.run_time["writer"]
    assert sum(writer_runs.counts) == 2 and writer_runs.total == pytest.approx(2.0 + 0.03)  # the last start's run
    buckets = dict(writer_runs.cumulative())
    assert buckets["0.05"] == 1 and buckets["2.5"] == 2 and buckets["+Inf"] == 2
    assert list(buckets) == [*map(str, BUCKETS), "+Inf"]
    assert s.queue_wait["writer"].total == pytest.approx(0.5 + 0.01)  # first start - send, once per task
    assert s.queue_wait["critic"].total == pytest.approx(0.2) and sum(s.queue_wait["critic"].counts) == 1
    assert s.llm_calls == {("writer", "m1"): 1}
    assert s.llm_tokens == {("writer", "m1", "prompt"): 7, ("writer", "m1", "completion"): 3}


def test_a_scrape_folds_only_what_was_appended_since_and_the_first_looks_back_only_so_far(store: EventStore) -> None:
    store.append(task("old", "writer", (t.TASK_STARTED, -3600), (t.TASK_SUCCEEDED, -3599)))
    counters = Counters(store, lookback=timedelta(minutes=15))
    first = counters.update(NOW)
    assert first.outcomes == {} and first.since == NOW - timedelta(minutes=15)
    store.append(task("new", "writer", (t.TASK_STARTED, 1), (t.TASK_SUCCEEDED, 2)))
    assert counters.update(NOW).outcomes == {("writer", "succeeded"): 1}
    assert counters.update(NOW).outcomes == {("writer", "succeeded"): 1}  # nothing new: nothing counted twice
