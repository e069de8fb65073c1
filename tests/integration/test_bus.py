"""The event bus against real RabbitMQ and Redis, with one worker per subscriber (never eager mode)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relaybus.tasks.bus.bus import event_queue_name, publish, send_envelope
from relaybus.tasks.bus.events import EventEnvelope
from relaybus.tasks.bus.records import EVENT_DELIVERED, EVENT_PUBLISHED
from relaybus.tasks.runtime.context import workflow_context
from tests.harness import ROOT, Worker, queue_depth, read_queue, redis_list, wait_for
from tests.integration.system import System, running_system, system_settings
from tests.services import require_rabbitmq, require_redis
from tests.subscribers import ProbeObserved

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    broker, redis = require_rabbitmq(), require_redis()
    tmp: Path = tmp_path_factory.mktemp("bus")
    settings = system_settings(tmp, broker, redis)
    with running_system(settings, tmp, [(("auditor",), 1), (("archivist",), 1)]) as running:
        yield running


def key() -> str:
    return f"test:bus:{uuid.uuid4().hex}"


def probe_envelope(k: str, *, type_: str = "probe.observed", version: int = 2, **data: Any) -> EventEnvelope:
    return EventEnvelope(
        event_id=str(uuid.uuid4()), type=type_, version=version, correlation_id=f"corr-{uuid.uuid4().hex}",
        data={"key": k, **data},
    )


def events_of(system: System, correlation_id: str) -> list[Any]:
    from relaybus.eventstore import open_store

    store = open_store(system.settings.eventstore_url)
    try:
        return list(store.by_correlation(correlation_id))
    finally:
        store.close()


def test_an_event_reaches_each_subscriber_once_with_its_correlation_and_the_event_id_as_causation(
    system, redis_client
):
    k = key()
    with workflow_context() as correlation_id:
        envelope = publish(ProbeObserved(key=k, name="first", source="test"), app=system.app)
    notes = wait_for(lambda: len(redis_list(redis_client, k)) >= 2 and redis_list(redis_client, k), 30,
                     what="both subscribers")
    assert sorted(n["handler"] for n in notes) == ["archivist", "auditor"]
    for n in notes:
        assert n["correlation_id"] == correlation_id
        assert n["causation_id"] == envelope.event_id
        assert n["data"] == {"key": k, "name": "first", "source": "test", "fail": False}
    assert len({n["task_id"] for n in notes}) == 2

    log = wait_for(lambda: [e for e in events_of(system, correlation_id) if e.type == EVENT_DELIVERED][1:]
                   and events_of(system, correlation_id), 30, what="both deliveries in the log")
    published = [e for e in log if e.type == EVENT_PUBLISHED]
    delivered = [e for e in log if e.type == EVENT_DELIVERED]
    assert [e.event_id for e in published] == [envelope.event_id]
    assert published[0].payload["event_type"] == "probe.observed"
    assert {e.agent for e in delivered} == {"auditor", "archivist"}
    assert {e.causation_id for e in delivered} == {envelope.event_id}


def test_an_old_version_is_upcast_before_the_handler_sees_it(system, redis_client):
    k = key()
    old = probe_envelope(k, version=1, name="legacy")
    send_envelope(system.app, old)
    notes = wait_for(lambda: len(redis_list(redis_client, k)) >= 2 and redis_list(redis_client, k), 30,
                     what="the upcast event")
    assert {n["data"]["source"] for n in notes} == {"upcast-from-v1"}
    assert {n["data"]["name"] for n in notes} == {"legacy"}


def test_unknown_types_unsupported_versions_and_invalid_events_are_dead_lettered_with_their_reason(
    system, redis_client
):
    ns = system.namespace
    dlq = event_queue_name(ns, "auditor") + ".dlq"
    k = key()
    unknown = probe_envelope(k, type_="probe.unheard", name="x")
    too_new = probe_envelope(k, version=9, name="x")
    invalid = probe_envelope(k, version=2, source="no name")
    for envelope in (unknown, too_new, invalid):
        send_envelope(system.app, envelope)
    with system.app.producer_or_acquire() as producer:  # not even an envelope
        producer.publish(b"{not json", exchange=f"{ns}.events", routing_key="probe.garbled",
                         content_type="application/json", content_encoding="utf-8", serializer=None,
                         headers={"x_event_type": "probe.garbled"})
    after = ProbeObserved(key=k, name="after", source="test")
    publish(after, app=system.app)

    wait_for(lambda: any(n["data"]["name"] == "after" for n in redis_list(redis_client, k)), 30,
             what="the good event after the bad ones")
    wait_for(lambda: queue_depth(system.app, dlq) == 4, 30, what="four dead-lettered events")
    # The operator sees them where they see every dead letter, named by event id, and left in place.
    env = {**os.environ, **system.settings.to_env(), "PYTHONPATH": str(ROOT)}
    shown = subprocess.run([sys.executable, "-m", "relaybus.cli", "dlq", "list", "--agents", "auditor", "--json"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    listed = {d["task_id"]: d for d in json.loads(shown.stdout) if d["dlq"] == dlq}
    assert {unknown.event_id, too_new.event_id, invalid.event_id} <= set(listed), listed
    assert listed[unknown.event_id]["reason"] == "unknown-event-type"
    status = subprocess.run([sys.executable, "-m", "relaybus.cli", "status", "--json"], env=env, capture_output=True,
                            text=True, timeout=120)
    [row] = [r for r in json.loads(status.stdout) if r["kind"] == "events" and r["agent"] == "auditor"]
    assert row["dead_letter_depth"] == 4, row
    letters = read_queue(system.app, dlq)
    by_id = {m.headers.get("x_event_id", "garbled"): m.headers for m in letters}
    assert by_id[unknown.event_id]["x_dead_letter_reason"] == "unknown-event-type"
    assert "probe.unheard" in by_id[unknown.event_id]["x_error_message"]
    assert by_id[too_new.event_id]["x_dead_letter_reason"] == "unsupported-event-version"
    assert "v9 is newer than this code (v2)" in by_id[too_new.event_id]["x_error_message"]
    assert by_id[invalid.event_id]["x_dead_letter_reason"] == "invalid-event"
    assert "name" in by_id[invalid.event_id]["x_error_message"]
    assert by_id["garbled"]["x_dead_letter_reason"] == "invalid-event"
    for headers in by_id.values():
        assert headers["x_original_queue"] == event_queue_name(ns, "auditor")
    assert not any(n["data"]["name"] in ("x", "no name") for n in redis_list(redis_client, k))

    recorded = wait_for(lambda: [e for e in events_of(system, unknown.correlation_id)
                                 if e.type == "event.dead_lettered"], 30, what="the dead letter in the log")
    assert recorded[0].payload["reason"] == "unknown-event-type"


def test_the_same_event_delivered_twice_is_handled_once(system, redis_client):
    k = key()
    envelope = probe_envelope(k, name="twice", source="test")
    send_envelope(system.app, envelope)
    send_envelope(system.app, envelope)
    # The auditor's worker runs one task at a time, in queue order: once the sentinel is handled,
    # so is the duplicate before it.
    send_envelope(system.app, probe_envelope(k, name="sentinel", source="test"))
    wait_for(lambda: [n for n in redis_list(redis_client, k) if n["handler"] == "auditor"
                      and n["data"]["name"] == "sentinel"], 30, what="the sentinel")
    handled = [n["data"]["name"] for n in redis_list(redis_client, k) if n["handler"] == "auditor"]
    assert handled == ["twice", "sentinel"]


def test_a_failing_handler_is_dead_lettered_for_its_subscriber_and_the_others_still_get_the_event(
    system, redis_client
):
    k = key()
    envelope = publish(ProbeObserved(key=k, name="refused", source="test", fail=True), app=system.app)
    dlq = f"{system.namespace}.auditor.dlq"
    wait_for(lambda: queue_depth(system.app, dlq) >= 1, 30, what="the failed handler's dead letter")
    (letter,) = [m for m in read_queue(system.app, dlq) if m.headers.get("x_causation_id") == envelope.event_id]
    assert letter.headers["x_dead_letter_reason"] == "permanent-error"
    assert "handler refused refused" in letter.headers["x_error_message"]
    assert letter.headers["task"] == "events.auditor.audit_probe"
    assert json.loads(letter.body)[1]["event"]["event_id"] == envelope.event_id
    notes = wait_for(lambda: redis_list(redis_client, k), 30, what="the archivist")
    assert [n["handler"] for n in notes] == ["archivist"]


def test_events_published_before_any_subscriber_worker_runs_wait_in_its_queue(tmp_path, redis_client):
    broker, redis = require_rabbitmq(), require_redis()
    settings = system_settings(tmp_path, broker, redis)
    k = key()
    with running_system(settings, tmp_path, []) as idle:  # declares the subscriptions, starts no worker
        publish(ProbeObserved(key=k, name="early", source="test"), app=idle.app)
        assert queue_depth(idle.app, event_queue_name(idle.namespace, "auditor")) == 1
        idle.workers.append(Worker(settings, ("auditor",), tmp_path).wait_ready(idle.app))
        notes = wait_for(lambda: redis_list(redis_client, k), 30, what="the early event")
    assert [n["data"]["name"] for n in notes] == ["early"]
