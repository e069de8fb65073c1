"""Derived event ids on real workers: time-ordered by the message's sent time, and still one record per
transition when the broker delivers the message again (on SQLite and PostgreSQL)."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest
from celery import chain

from relaybus.eventstore import open_store
from relaybus.eventstore.ids import uuid7_ms
from relaybus.tasks.runtime.context import workflow_context
from tests.harness import make_settings, redis_list, wait_for

pytestmark = pytest.mark.integration

TERMINAL = {"task.succeeded", "task.failed", "task.dead_lettered", "task.revoked", "task.rejected"}


@pytest.fixture
def settings(tmp_path, broker_url, redis_url, eventstore_url):  # overrides conftest's: one per database
    return make_settings(tmp_path, broker_url, redis_url, eventstore_url=eventstore_url)


def test_a_twice_redelivered_task_records_each_transition_once_under_its_sent_time(
    app, settings, start_worker, redis_client
):
    k = f"test:{uuid.uuid4().hex}"
    first = start_worker("probe", concurrency=1)
    with workflow_context() as correlation_id:
        task_id = app.tasks["agents.probe"].apply_async(kwargs={"key": k, "label": "long", "sleep_s": 4}).id
    sent_ms = uuid7_ms(correlation_id)  # a new workflow's id is time-ordered: its messages carry that time
    assert sent_ms is not None
    store = open_store(settings.eventstore_url)
    try:

        def started(n: int) -> bool:
            return len(store.find(task_id=task_id, type="task.started", limit=10)) >= n

        # Kill the worker mid-task (its start on record), then kill the one the broker redelivered to: the
        # third delivery is a redelivery like the second, so its records have the second's ids.
        wait_for(lambda: started(1), 30, what="the first start record")
        second = start_worker("probe", concurrency=1)
        first.kill()
        wait_for(lambda: started(2), 60, what="the redelivery's start record")
        start_worker("probe", concurrency=1)
        second.kill()
        wait_for(lambda: any(n["event"] == "done" for n in redis_list(redis_client, k)), 60, what="the last delivery")

        def terminal():
            return [e for e in store.find(task_id=task_id, limit=100) if e.type in TERMINAL]

        wait_for(terminal, 30, what="the terminal record")
        events = store.find(task_id=task_id, limit=100)
        types = Counter(e.type for e in events)
        assert types["task.sent"] == 1, types  # the publisher's, and each delivery's rebuilt copy: one id
        assert types["task.received"] == types["task.started"] == 2, types  # first delivery; the redeliveries
        assert [e.type for e in events if e.type in TERMINAL] == ["task.succeeded"], types
        assert types["task.redelivered"] >= 1, types
        assert {uuid7_ms(e.event_id) for e in events} == {sent_ms}, [e.event_id for e in events]
        assert store.verify().ok
    finally:
        store.close()


def test_under_a_caller_chosen_correlation_a_chain_is_ordered_by_its_first_send(app, settings, start_worker):
    start_worker("probe", concurrency=2)
    probe = app.tasks["agents.probe"]
    k = f"test:{uuid.uuid4().hex}"
    before = time.time_ns() // 1_000_000
    with workflow_context(correlation_id=f"order-{uuid.uuid4().hex}") as correlation_id:
        result = chain(probe.s(key=k, label="first"), probe.s(key=k, label="second")).apply_async()
    after = time.time_ns() // 1_000_000
    assert result.get(timeout=60)["label"] == "second"
    store = open_store(settings.eventstore_url)
    try:

        def both_ended():
            events = store.by_correlation(correlation_id)
            return events if sum(e.type == "task.succeeded" for e in events) == 2 else None

        events = wait_for(both_ended, 30, what="both steps' task.succeeded")
        assert Counter(e.type for e in events)["task.sent"] == 2
        # The second step is sent by the first, and inherits its sent time: one millisecond for the chain.
        times = {uuid7_ms(e.event_id) for e in events}
        assert len(times) == 1, [e.event_id for e in events]
        assert before <= times.pop() <= after
    finally:
        store.close()
