"""``open_workflows``, the deadline sweep's query, agrees with its pure fold on SQLite and PostgreSQL alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from relaybus.eventstore import NewEvent
from relaybus.eventstore import types as t
from relaybus.eventstore.projections import open_workflows_of

T0 = datetime(2026, 12, 4, 6, 0, tzinfo=UTC)
CLOSED = t.PIPELINE_OUTCOME_TYPES


def event(cid: str, type_: str, at_s: float, agent: str | None = None, **payload: object) -> NewEvent:
    return NewEvent(stream_id=cid, type=type_, occurred_at=T0 + timedelta(seconds=at_s), agent=agent, payload=payload)


def test_open_workflows_lists_the_opened_and_unclosed_with_their_last_record_as_the_fold_does(store):
    store.append([
        event("a", t.PIPELINE_STARTED, 0, pipeline="p", deadline_s=5),
        event("b", t.PIPELINE_STARTED, 1, pipeline="p"),
        event("old", t.PIPELINE_STARTED, -3600, pipeline="p"),
        event("c", t.PIPELINE_STARTED, 2, pipeline="q"),
        event("a", t.TASK_SENT, 3, agent="researcher"),
        event("c", t.PIPELINE_TIMED_OUT, 4, pipeline="q"),
        event("plain", t.TASK_SENT, 5, agent="writer"),
        event("b", t.TASK_SUCCEEDED, 6, agent="planner"),
    ])
    expected = open_workflows_of(store.read_all(), opened_by=t.PIPELINE_STARTED, closed_by=CLOSED)
    assert [w.correlation_id for w in expected] == ["a", "b", "old"]
    found = store.projection.open_workflows(opened_by=t.PIPELINE_STARTED, closed_by=CLOSED)
    assert found == expected
    a = found[0]
    assert (a.last_event_type, a.last_event_agent) == (t.TASK_SENT, "researcher")
    assert a.last_event_at == T0 + timedelta(seconds=3)
    assert a.opened_payload == {"pipeline": "p", "deadline_s": 5}

    since = store.projection.open_workflows(opened_by=t.PIPELINE_STARTED, closed_by=CLOSED, since=T0)
    assert [w.correlation_id for w in since] == ["a", "b"]
    first = store.projection.open_workflows(opened_by=t.PIPELINE_STARTED, closed_by=CLOSED, limit=1)
    rest = store.projection.open_workflows(
        opened_by=t.PIPELINE_STARTED, closed_by=CLOSED, after_position=first[0].opened_position
    )
    assert first + rest == expected
