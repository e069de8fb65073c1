"""Where relaybus derives event ids: task records, the sent time they are ordered by, saga and bus records."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from relaybus.eventstore.ids import new_event_id, uuid7_ms
from relaybus.sagas.events import SagaStarted, StepStarted, dedup_key, record_id
from relaybus.tasks.bus.events import derived_id, derived_record_id
from relaybus.tasks.runtime.context import SENT_AT_HEADER, new_id, propagate_ids
from relaybus.tasks.runtime.recording import records

AT = 1_796_000_000_123
DEADLINE = datetime(2026, 12, 4, tzinfo=UTC)
TASK = SimpleNamespace(name="agents.asker", spec=SimpleNamespace(name="asker", start_records=None))


def _request(headers: dict[str, Any], *, on_request: bool = False, task_id: str = "task-1") -> Any:
    # Celery moves a message's own headers onto the request (``on_request``); a stand-in has them in ``headers``.
    extra = {SENT_AT_HEADER: headers[SENT_AT_HEADER]} if on_request and SENT_AT_HEADER in headers else {}
    return SimpleNamespace(
        id=task_id, retries=0, delivery_info={"routing_key": "agents.asker", "priority": 2}, hostname="w@h",
        headers={k: v for k, v in headers.items() if not (on_request and k == SENT_AT_HEADER)},
        x_correlation_id=None, x_causation_id=None, **extra,
    )  # fmt: skip


def test_a_message_with_its_sent_time_gets_ids_of_that_millisecond_the_same_on_each_delivery() -> None:
    headers = {"x_correlation_id": "wf-1", SENT_AT_HEADER: AT}
    first = records.started(TASK, _request(headers), [], {}, "h")
    again = records.started(TASK, _request(headers, on_request=True), [], {}, "h")
    assert [e.event_id for e in first] == [e.event_id for e in again]
    assert {uuid7_ms(e.event_id) for e in first} == {AT}  # task.received, task.started (no task.sent: no "task")
    end = records.succeeded(TASK, _request(headers), {"ok": 1}, 0.1, "h")
    assert end.event_id == records.ended(TASK, _request(headers, on_request=True), "task.revoked", "h", {}).event_id
    assert uuid7_ms(end.event_id) == AT


def test_the_publisher_and_the_worker_derive_the_same_task_sent_id() -> None:
    headers = {"task": "agents.asker", "id": "task-1", "retries": 0, "x_correlation_id": "wf-1", SENT_AT_HEADER: AT}
    published = records.sent(headers, [[], {}, {}], "agents.asker", 2, "client")
    assert published is not None and uuid7_ms(published.event_id) == AT
    rebuilt = records.started(TASK, _request(headers, on_request=True), [], {}, "w")
    assert rebuilt[0].type == "task.sent" and rebuilt[0].event_id == published.event_id


def test_a_message_without_a_sent_time_keeps_the_uuid5_ids_of_before() -> None:
    # An older client, a message in flight at the upgrade: its ids match what its first delivery recorded.
    started = records.started(TASK, _request({"x_correlation_id": "wf-1"}), [], {}, "h")[-1]
    assert started.event_id == str(uuid.uuid5(records._NAMESPACE, "task-1:started:0:0:0"))
    assert records.event_id("task-1", "started", "0:0:0") == started.event_id


def test_a_time_ordered_task_id_orders_its_records_whatever_the_message_carries() -> None:
    task_id = new_event_id()
    with_header = records.started(TASK, _request({SENT_AT_HEADER: AT}, task_id=task_id), [], {}, "h")[-1]
    without = records.started(TASK, _request({}, task_id=task_id), [], {}, "h")[-1]
    assert with_header.event_id == without.event_id
    assert uuid7_ms(with_header.event_id) == uuid7_ms(task_id)


def test_raw_message_records_use_the_sent_time_too() -> None:
    headers = {"id": "task-1", "task": "agents.asker", SENT_AT_HEADER: str(AT)}
    assert uuid7_ms(records.redelivered(headers, "agents.asker", 2, "h").event_id) == AT
    refused = records.refused(headers, "agents.asker", "too_large", None, "h", body_digest="d" * 64)
    assert uuid7_ms(refused.event_id) == AT
    assert uuid7_ms(records.redelivered({"id": "task-1"}, "agents.asker", 2, "h").event_id) is None


def test_a_publish_stamps_the_sent_time_once_and_a_retry_keeps_it() -> None:
    before = time.time_ns() // 1_000_000
    headers: dict[str, Any] = {"id": str(uuid.uuid4()), "x_correlation_id": "given-by-caller"}
    propagate_ids(headers=headers)
    assert before <= headers[SENT_AT_HEADER] <= time.time_ns() // 1_000_000
    retry = {**headers, "retries": 1}
    propagate_ids(headers=retry)
    assert retry[SENT_AT_HEADER] == headers[SENT_AT_HEADER]


def test_a_workflow_with_a_time_ordered_correlation_id_gives_every_message_its_time() -> None:
    correlation = new_id()
    assert uuid7_ms(correlation) is not None  # new_id makes them time-ordered
    for task_id in (str(uuid.uuid4()), derived_id("flow", "k", 0)):
        headers: dict[str, Any] = {"id": task_id, "x_correlation_id": correlation}
        propagate_ids(headers=headers)
        assert headers[SENT_AT_HEADER] == uuid7_ms(correlation)


def test_a_chosen_task_id_under_a_caller_chosen_correlation_gets_no_clock_time() -> None:
    # Another publisher may send the same task id later (a saga's sweep, the caller again): a clock would differ.
    for task_id in (derived_id("saga", "step"), "order-42-step-1"):
        headers: dict[str, Any] = {"id": task_id, "x_correlation_id": "order-42"}
        propagate_ids(headers=headers)
        assert SENT_AT_HEADER not in headers


def test_saga_events_of_a_time_ordered_saga_id_get_time_ordered_ids_others_keep_their_key() -> None:
    saga_id = new_id()
    started = StepStarted(saga_id=saga_id, step="s", member="s", attempt=1, data={}, deadline=DEADLINE)
    assert uuid7_ms(record_id(started)) == uuid7_ms(saga_id)
    assert record_id(started) == record_id(started.model_copy())
    assert record_id(SagaStarted(saga_id=saga_id, saga="x", data={})) != record_id(started)
    given = StepStarted(saga_id="order-42", step="s", member="s", attempt=1, data={}, deadline=DEADLINE)
    assert record_id(given) == dedup_key(given)


def test_bus_record_ids_follow_a_time_ordered_origin_or_stay_as_before() -> None:
    envelope_id = new_event_id()
    assert uuid7_ms(derived_record_id(envelope_id, "h", "delivered")) == uuid7_ms(envelope_id)
    assert derived_record_id("task-1", "t.x", 1) == derived_id("task-1", "t.x", 1)
    assert uuid7_ms(derived_record_id("task-1", "t.x", 1, at_ms=AT)) == AT
