"""The foundation against the real RabbitMQ and Redis, with real worker processes (never eager mode)."""

from __future__ import annotations

import json
import pickle
import uuid

import pytest
from celery import chain, chord

from relaybus.eventstore import open_store
from relaybus.tasks.errors import InvalidInput
from relaybus.tasks.runtime.context import CORRELATION_HEADER, workflow_context
from tests.harness import celery_headers, queue_depth, raw_publish, read_queue, redis_list, wait_for

pytestmark = pytest.mark.integration


def key() -> str:
    return f"test:{uuid.uuid4().hex}"


def test_urgent_task_overtakes_a_backlog_of_low_priority_work(app, start_worker, redis_client):
    k = key()
    probe = app.tasks["agents.probe"]
    for i in range(300):
        probe.apply_async(kwargs={"key": k, "label": f"low-{i}"}, priority="low")
    probe.apply_async(kwargs={"key": k, "label": "urgent"}, priority="urgent")
    queue = f"{app.conf.relaybus_runtime.namespace}.probe"
    assert queue_depth(app, queue) == 301

    start_worker("probe", concurrency=1)
    wait_for(lambda: any(n["label"] == "urgent" for n in redis_list(redis_client, k)), 60, what="the urgent task")
    started = [n["label"] for n in redis_list(redis_client, k) if n["event"] == "start"]
    assert "urgent" in started[:3], f"urgent ran at position {started.index('urgent') + 1}: {started[:5]}"


def test_transient_failure_retries_twice_then_lands_in_the_dead_letter_queue_with_its_reason(
    app, start_worker, redis_client
):
    k = key()
    start_worker("flaky")
    with workflow_context() as correlation_id:
        app.tasks["agents.flaky"].apply_async(kwargs={"key": k})
    dlq = f"{app.conf.relaybus_runtime.namespace}.flaky.dlq"
    wait_for(lambda: queue_depth(app, dlq) == 1, 60, what="the dead-lettered message")
    runs = redis_list(redis_client, k)
    assert [r["attempt"] for r in runs] == [1, 2, 3]

    (message,) = read_queue(app, dlq)
    headers = message.headers
    assert headers["x_error_type"] == "TransientError"
    assert "upstream unavailable (attempt 3)" in headers["x_error_message"]
    assert headers["x_attempts"] == 3
    assert headers["x_dead_letter_reason"] == "retries-exhausted"
    assert headers["x_original_queue"] == f"{app.conf.relaybus_runtime.namespace}.flaky"
    assert headers[CORRELATION_HEADER] == correlation_id
    assert json.loads(message.body)[1] == {"key": k}
    assert len(redis_list(redis_client, k)) == 3, "a dead-lettered task must not run again"


def test_invalid_payload_and_undecodable_bodies_are_dead_lettered_without_retries_and_the_worker_goes_on(
    app, start_worker, redis_client
):
    ns = app.conf.relaybus_runtime.namespace
    queue, dlq = f"{ns}.probe", f"{ns}.probe.dlq"
    start_worker("probe")
    invalid, garbage, pickled = (celery_headers("agents.probe") for _ in range(3))
    unknown = celery_headers("agents.nonexistent")
    raw_publish(app, queue, json.dumps([[], {"label": "no key"}, {}]), content_type="application/json",
                headers=invalid)
    raw_publish(app, queue, b"\x00not json{", content_type="application/json", headers=garbage)
    raw_publish(app, queue, pickle.dumps(([], {"key": "x"}, {})), content_type="application/x-python-serialize",
                content_encoding="binary", headers=pickled)
    raw_publish(app, queue, json.dumps([[], {}, {}]), content_type="application/json", headers=unknown)
    k = key()
    app.tasks["agents.probe"].apply_async(kwargs={"key": k, "label": "after"})

    wait_for(lambda: any(n["event"] == "done" for n in redis_list(redis_client, k)), 60, what="the good task")
    wait_for(lambda: queue_depth(app, dlq) == 4, 30, what="four dead letters")
    letters = {m.headers["id"]: m.headers for m in read_queue(app, dlq)}
    assert set(letters) == {invalid["id"], garbage["id"], pickled["id"], unknown["id"]}

    assert letters[invalid["id"]]["x_dead_letter_reason"] == "permanent-error"
    assert letters[invalid["id"]]["x_error_type"] == "InvalidInput"
    assert "key" in letters[invalid["id"]]["x_error_message"]
    assert letters[invalid["id"]]["x_attempts"] == 1, "invalid input must not be retried"
    assert letters[garbage["id"]]["x_dead_letter_reason"] == "undecodable-message"
    assert "cannot decode the application/json body" in letters[garbage["id"]]["x_error_message"]
    assert letters[pickled["id"]]["x_dead_letter_reason"] == "disallowed-content-type"
    assert "pickle" in letters[pickled["id"]]["x_error_message"]
    for bad in (garbage, pickled, unknown):
        assert letters[bad["id"]]["x_original_queue"] == queue
    assert letters[unknown["id"]]["x_dead_letter_reason"] == "unknown-task"
    assert "agents.nonexistent" in letters[unknown["id"]]["x_error_message"]
    assert not any(n["label"] == "no key" for n in redis_list(redis_client, k))


def test_one_correlation_id_reaches_every_task_of_a_chain_chord_and_callback_and_survives_a_retry(
    app, start_worker, redis_client
):
    k = key()
    start_worker("probe", concurrency=2)
    probe = app.tasks["agents.probe"]
    with workflow_context(correlation_id="corr-" + uuid.uuid4().hex) as correlation_id:
        workflow = chain(
            probe.s(key=k, label="first"),
            chord(
                [probe.s(key=k, label="member-a", fail_first=1), probe.s(key=k, label="member-b")],
                probe.s(key=k, label="callback"),
            ),
        )
        result = workflow.apply_async()
    assert result.get(timeout=60)["label"] == "callback"
    notes = redis_list(redis_client, k)
    assert {n["label"] for n in notes} == {"first", "member-a", "member-b", "callback"}
    assert {n["correlation_id"] for n in notes} == {correlation_id}
    retried = [n for n in notes if n["label"] == "member-a" and n["event"] == "start"]
    assert [n["attempt"] for n in retried] == [1, 2]
    first_id = next(n["task_id"] for n in notes if n["label"] == "first")
    members = {n["task_id"] for n in notes if n["label"].startswith("member")}
    assert {n["causation_id"] for n in notes if n["label"].startswith("member")} == {first_id}
    assert next(n["causation_id"] for n in notes if n["label"] == "callback") in members


def test_a_missing_field_is_refused_in_the_caller_and_nothing_reaches_the_broker(app):
    queue = f"{app.conf.relaybus_runtime.namespace}.probe"
    probe = app.tasks["agents.probe"]
    probe.apply_async(kwargs={"key": "k"})  # declares the queue and puts one good message
    with pytest.raises(InvalidInput) as excinfo:
        probe.apply_async(kwargs={"label": "no key"})
    assert "key" in str(excinfo.value)
    assert excinfo.value.errors[0]["loc"] == ("key",)
    assert queue_depth(app, queue) == 1


def test_a_worker_killed_mid_task_has_its_message_redelivered_to_another_worker(app, start_worker, redis_client):
    k = key()
    first = start_worker("probe", concurrency=1)
    app.tasks["agents.probe"].apply_async(kwargs={"key": k, "label": "long", "sleep_s": 3})
    started = wait_for(lambda: [n for n in redis_list(redis_client, k) if n["event"] == "start"], 30,
                       what="the task to start")
    start_worker("probe", concurrency=1)
    first.kill()
    done = wait_for(lambda: [n for n in redis_list(redis_client, k) if n["event"] == "done"], 60,
                    what="the redelivered task to finish")
    assert done[0]["task_id"] == started[0]["task_id"]
    assert done[0]["pid"] != started[0]["pid"]


def test_an_agent_that_rejects_its_message_is_dead_lettered_once_with_the_reason(app, settings, start_worker):
    """Celery's ``Reject(reason, requeue=False)`` from an agent: one dead letter, relaybus's, saying why (the
    broker's dead-letter exchange used to add a second copy without a reason: a redrive of both ran it twice), and
    the task's end recorded as a failure that was dead-lettered."""
    worker = start_worker("probe")
    with workflow_context() as correlation_id:
        task_id = app.tasks["agents.probe"].apply_async(kwargs={"key": key(), "reject": "not for me"}).id
    ns = app.conf.relaybus_runtime.namespace
    dlq = f"{ns}.probe.dlq"
    store = open_store(settings.eventstore_url)
    try:
        def ended() -> list[str] | None:
            types = [e.type for e in store.by_correlation(correlation_id) if e.task_id == task_id]
            return types if "task.dead_lettered" in types else None

        types = wait_for(ended, 60, what="the rejected task's end")
        assert types[-2:] == ["task.failed", "task.dead_lettered"] and "task.rejected" not in types
        (dead,) = [e for e in store.by_correlation(correlation_id) if e.type == "task.dead_lettered"]
        assert (dead.payload["reason"], dead.payload["error_type"], dead.payload["error_message"]) == (
            "rejected", "Rejected", "not for me")
    finally:
        store.close()
    worker.stop()  # a warm shutdown: the message is settled (acknowledged, or rejected into the DLX) before it ends
    (message,) = read_queue(app, dlq)
    assert "x-death" not in message.headers
    assert (message.headers["x_dead_letter_reason"], message.headers["x_error_message"]) == ("rejected", "not for me")


def test_an_agent_that_gives_its_message_back_runs_again_and_nothing_is_dead_lettered(
    app, settings, start_worker, redis_client
):
    """``Reject(requeue=True)`` from an agent puts the message back in its queue: it runs again and succeeds; it is
    not dead-lettered on the way (it was: the agent runtime took the Reject for a permanent error, dead-lettered it,
    and the redelivery Celery's requeue made was refused as a task that had failed before). The run that gave it
    back is in the log: its start and ``task.deferred``, reason ``requeued`` (it left no record before)."""
    k = key()
    worker = start_worker("probe")
    with workflow_context() as correlation_id:
        result = app.tasks["agents.probe"].apply_async(kwargs={"key": k, "give_back_once": True, "label": "back"})
    assert result.get(timeout=60)["label"] == "back"
    worker.stop()
    ns = app.conf.relaybus_runtime.namespace
    assert queue_depth(app, f"{ns}.probe.dlq") == 0
    assert [n["event"] for n in redis_list(redis_client, k)] == ["start", "start", "done"]
    store = open_store(settings.eventstore_url)
    try:
        events = [e for e in store.by_correlation(correlation_id) if e.task_id == result.id]
        assert [e.type for e in events] == ["task.sent", "task.received", "task.started", "task.deferred",
                                            "task.redelivered", "task.received", "task.started", "task.succeeded"]
        given_back = events[3].payload
        assert (given_back["reason"], given_back["error_type"], given_back["error_message"]) == (
            "requeued", "Reject", "not now")
        assert store.rate_limit_waits() == [], "a give-back is no rate limit's wait"
    finally:
        store.close()


def test_an_agent_that_always_gives_its_message_back_stops_at_the_redelivery_limit(
    app, settings, start_worker, redis_client
):
    """Each give-back is a redelivery the worker's consumer counts: past ``RELAYBUS_MAX_REDELIVERIES`` the message is
    dead-lettered (reason ``redelivery-limit``) and its task failed, instead of running for ever."""
    limit = 2
    k = key()
    start_worker("probe", settings=settings.model_copy(update={"max_redeliveries": limit}))
    with workflow_context() as correlation_id:
        result = app.tasks["agents.probe"].apply_async(kwargs={"key": k, "give_back": True})
    with pytest.raises(Exception, match="over the limit of 2"):
        result.get(timeout=60)
    store = open_store(settings.eventstore_url)
    try:
        types = [e.type for e in store.by_correlation(correlation_id) if e.task_id == result.id]
        assert types.count("task.redelivered") == limit + 1 and types[-1] == "task.dead_lettered", types
        assert "task.deferred" in types, "the runs that gave it back are recorded"
        (dead,) = [e for e in store.by_correlation(correlation_id) if e.type == "task.dead_lettered"]
        assert dead.payload["reason"] == "redelivery-limit"
    finally:
        store.close()
    assert [n["event"] for n in redis_list(redis_client, k)] == ["start"] * (limit + 1)
