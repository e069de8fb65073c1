"""Every transition is recorded and every workflow ends, at the edges (issue 13, rows 2, 3, 5, 6, 9 and the
redelivery limit), on the private services with a real worker.

Each test starts the one-step pipeline ``edgy-one`` (tests/edge_agents.py), whose agent misbehaves as its
input asks, and checks three things: how the workflow ended (read from the client's handle), what the event
log holds for it, and where its message went (the dead-letter queue, with its reason). Before issue 13 each
of these ended with a task acked as FAILURE and nothing recorded, or a workflow left running.
"""

from __future__ import annotations

import json
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from relaybus.eventstore import EventStore, RecordedEvent
from relaybus.eventstore.storable import restore
from relaybus.tasks.errors import InvalidInput
from relaybus.tasks.pipelines.client import PipelineHandle, start
from relaybus.tasks.pipelines.registry import start_task_id
from relaybus.tasks.runtime.context import CORRELATION_HEADER
from relaybus.tasks.runtime.deadletter import REASON_HEADER
from relaybus.tasks.runtime.system import SystemTask
from relaybus.tasks.runtime.task import AgentTask
from tests.chaos import figures
from tests.chaos.audit import audit
from tests.chaos.conftest import Scale
from tests.chaos.figures import Figures
from tests.chaos.services import PrivatePostgres, PrivateRabbitMQ, PrivateRedis
from tests.chaos.system import edge_system
from tests.edge_agents import HARD_LIMIT_S
from tests.harness import (
    Worker,
    celery_headers,
    delete_namespace,
    queue_depth,
    raw_publish,
    read_queue,
    wait_for,
)
from tests.services import REDIS_URL

MAX_REDELIVERIES = 3


class Edge:
    def __init__(self, app: Any, store: EventStore, worker: Worker, namespace: str) -> None:
        self.app = app
        self.store = store
        self.worker = worker
        self.namespace = namespace
        self.notes = redis.Redis.from_url(REDIS_URL)
        self._letters: dict[str, list[Any]] = {}

    def run(self, correlation_id: str | None = None, **inp: Any) -> tuple[PipelineHandle, str]:
        key = f"edge-{uuid.uuid4().hex[:12]}"
        return start("edgy-one", {"key": key, **inp}, app=self.app, correlation_id=correlation_id), key

    def runs(self, key: str, event: str = "start") -> int:
        return sum(1 for raw in self.notes.lrange(key, 0, -1) if json.loads(raw)["event"] == event)

    def events(self, correlation_id: str, type_: str | None = None) -> list[RecordedEvent]:
        return [e for e in self.store.by_correlation(correlation_id) if type_ is None or e.type == type_]

    def edgy_event(self, correlation_id: str, type_: str) -> RecordedEvent:
        found = [e for e in self.events(correlation_id, type_) if e.agent == "edgy"]
        assert found, f"no {type_} of agents.edgy in {[e.type for e in self.events(correlation_id)]}"
        return found[-1]

    def letters(self, agent: str = "edgy") -> list[Any]:
        """Every dead letter taken off ``agent``'s DLQ so far: reading takes them off the queue, so they are kept
        here, and a letter one test reads early is still there for the test it belongs to."""
        self._letters.setdefault(agent, []).extend(read_queue(self.app, f"{self.namespace}.{agent}.dlq"))
        return list(self._letters[agent])

    def letters_of(self, task_id: str, agent: str = "edgy") -> list[Any]:
        """The dead letters of ``task_id``, once the first is in: its record is committed before it is published
        (no ack without the record), so a test that saw the record can read the queue before the letter is in."""
        def found() -> list[Any]:
            return [m for m in self.letters(agent) if m.headers["id"] == task_id]

        wait_for(found, 60, 0.1, f"the dead letter of {task_id}")
        return found()

    def assert_worker_alive(self) -> None:
        assert self.worker.proc.poll() is None, self.worker.log()[-3000:]


@pytest.fixture(scope="module")
def edge(
    rabbitmq: PrivateRabbitMQ, redis_server: PrivateRedis, postgres: PrivatePostgres,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Edge]:
    tmp: Path = tmp_path_factory.mktemp("edges")
    settings, app, store = edge_system(
        tmp, rabbitmq.url, redis_server.url, postgres.url, max_redeliveries=MAX_REDELIVERIES, max_retries=1
    )
    worker = Worker(settings, ("system", "edgy", "probe"), tmp, concurrency=2, name="edge")
    try:
        worker.wait_ready(app, timeout=90)
        yield Edge(app, store, worker, settings.namespace)
    finally:
        worker.stop()
        delete_namespace(app)
        store.close()
        app.close()


# -- row 2: values and ids the database cannot hold ------------------------------------------------------


def test_values_the_database_cannot_hold_are_recorded_escaped_and_restorable(edge: Edge) -> None:
    nan, _ = edge.run(mode="nan")
    text, _ = edge.run(mode="surrogate_out")
    broken, _ = edge.run(mode="surrogate_error")

    assert nan.wait(60).status == "completed"
    output = edge.edgy_event(nan.id, "task.succeeded").payload["output"]
    assert output["value"] == {"$float": "nan"} and math.isnan(restore(output)["value"])

    # Text no message can carry is refused where the agent returns it, naming the field.
    outcome = text.wait(60)
    assert outcome.status == "failed" and "cannot encode (a lone surrogate) at output.text" in (outcome.reason or "")

    outcome = broken.wait(60)
    assert outcome.status == "failed" and "upstream sent bytes that are not UTF-8" in (outcome.reason or "")
    failed = edge.edgy_event(broken.id, "task.failed")
    assert failed.payload["error_type"] == "PermanentError"
    assert "\\udcff" in failed.payload["error_message"]["$unicode_escape"]  # stored escaped
    assert restore(failed.payload)["error_message"].endswith(b"ok-\xff".decode("utf-8", "surrogateescape"))
    assert edge.edgy_event(broken.id, "task.dead_lettered").payload["reason"] == "permanent-error"
    letters = edge.letters_of(failed.task_id)
    assert len(letters) == 1 and letters[0].headers[REASON_HEADER] == "permanent-error"
    edge.assert_worker_alive()


@pytest.mark.parametrize(
    "bad", ["c" * 300, "nul\x00inside", "lone-\udcff-surrogate"], ids=["300-chars", "nul", "surrogate"]
)
def test_ids_the_event_log_cannot_hold_are_refused_before_anything_is_sent(edge: Edge, bad: str) -> None:
    probe = edge.app.tasks["agents.probe"]
    before = queue_depth(edge.app, f"{edge.namespace}.probe")
    with pytest.raises(InvalidInput, match="correlation_id"):
        probe.apply_async(kwargs={"key": "never"}, headers={CORRELATION_HEADER: bad})
    with pytest.raises(InvalidInput, match="task_id"):
        probe.apply_async(kwargs={"key": "never"}, task_id=bad)
    with pytest.raises(InvalidInput, match="correlation_id"):
        start("edgy-one", {"key": "never"}, correlation_id=bad, app=edge.app)
    assert queue_depth(edge.app, f"{edge.namespace}.probe") == before
    assert queue_depth(edge.app, f"{edge.namespace}.system") == 0


def test_a_message_with_ids_or_retries_the_log_cannot_hold_is_dead_lettered_and_recorded(edge: Edge) -> None:
    """A publisher that bypasses the client: the worker's consumer refuses what the log could not record."""
    queue = f"{edge.namespace}.probe"
    bad = {
        "long-correlation": celery_headers("agents.probe", **{CORRELATION_HEADER: "c" * 300}),
        "nul-correlation": celery_headers("agents.probe", **{CORRELATION_HEADER: "a\x00b"}),
        "huge-retries": celery_headers("agents.probe", retries=2**40),
    }
    for headers in bad.values():
        raw_publish(edge.app, queue, json.dumps([[], {"key": "never"}, {}]), content_type="application/json",
                    headers=headers)
    by_id = {h["id"]: edge.letters_of(h["id"], "probe")[0] for h in bad.values()}
    for name, headers in bad.items():
        letter = by_id[headers["id"]]
        assert letter.headers[REASON_HEADER] == "invalid-task-message", name
        recorded = edge.store.find(task_id=headers["id"], type="task.dead_lettered")
        assert len(recorded) == 1 and recorded[0].payload["reason"] == "invalid-task-message", name
    edge.assert_worker_alive()


# -- row 3: the store away while a task with a soft time limit runs ------------------------------------------


def test_the_store_away_past_the_soft_limit_requeues_the_task_which_then_completes(
    edge: Edge, postgres: PrivatePostgres
) -> None:
    handle, key = edge.run(sleep_s=1.0)
    wait_for(lambda: edge.runs(key) >= 1, 60, 0.05, "the edgy task to start")
    postgres.stop()
    try:
        # The recorder may wait until shortly before the 6 s soft limit, then the message is requeued
        # and runs again; with the store still away, again.
        wait_for(lambda: edge.runs(key) >= 2, 60, 0.2, "the task to be requeued and run again")
    finally:
        postgres.start()
    assert handle.wait(120).status == "completed"
    succeeded = edge.edgy_event(handle.id, "task.succeeded")
    assert succeeded.payload["output"] == {"value": 1.0, "text": "fine"}
    assert edge.events(handle.id, "task.failed") == []
    assert [m for m in edge.letters() if m.headers.get(CORRELATION_HEADER) == handle.id] == []
    edge.assert_worker_alive()


def test_the_events_lock_held_past_the_soft_limit_requeues_the_task_which_then_completes(edge: Edge) -> None:
    """Row 3's other case: the store is up, but the statement writing the task's records waits, on the events lock
    held by another session (an operator's LOCK, a long migration), past the task's soft time limit. The limit ends
    the wait (eventstore._insert.abandon: the statement cancelled, the connection dropped), the message is
    requeued, and the task runs again; once the lock is free it completes, recorded once, with no failure."""
    handle, key = edge.run(sleep_s=1.0)
    wait_for(lambda: edge.runs(key) >= 1, 60, 0.05, "the edgy task to start")
    with edge.store.engine.connect() as holder:
        holder.exec_driver_sql("LOCK TABLE events IN EXCLUSIVE MODE")
        try:
            wait_for(lambda: edge.runs(key) >= 2, 60, 0.2, "the task to be requeued and run again")
        finally:
            holder.rollback()
    assert handle.wait(120).status == "completed"
    assert len([e for e in edge.events(handle.id, "task.succeeded") if e.agent == "edgy"]) == 1
    assert edge.edgy_event(handle.id, "task.succeeded").payload["output"] == {"value": 1.0, "text": "fine"}
    assert edge.events(handle.id, "task.failed") == []
    assert [m for m in edge.letters() if m.headers.get(CORRELATION_HEADER) == handle.id] == []
    edge.assert_worker_alive()


# -- row 5: hard time limits and revokes ------------------------------------------------------------------------


def test_a_hard_time_limit_is_recorded_dead_lettered_and_fails_the_pipeline(edge: Edge) -> None:
    handle, key = edge.run(mode="swallow_soft_limit")
    outcome = handle.wait(HARD_LIMIT_S + 60)
    assert outcome.status == "failed" and "TimeLimitExceeded" in (outcome.reason or ""), outcome
    assert edge.runs(key, "soft-limit-swallowed") >= 1
    failed = edge.edgy_event(handle.id, "task.failed")
    assert failed.payload["error_type"] == "TimeLimitExceeded" and failed.payload["reason"] == "time-limit"
    assert edge.edgy_event(handle.id, "task.dead_lettered").payload["reason"] == "time-limit"
    letters = edge.letters_of(failed.task_id)
    assert len(letters) == 1 and letters[0].headers[REASON_HEADER] == "time-limit"
    edge.assert_worker_alive()


def _edgy_task_id(edge: Edge, handle: PipelineHandle) -> str:
    def sent() -> str | None:
        found = [e for e in edge.events(handle.id, "task.sent") if e.agent == "edgy"]
        return found[0].task_id if found else None

    task_id = wait_for(sent, 60, 0.05, "the edgy task to be sent")
    assert task_id is not None
    return task_id


def test_a_revoked_task_queued_or_running_is_recorded_and_fails_its_pipeline(edge: Edge) -> None:
    # Revoked before it is even sent: the worker keeps the id, and discards the task when it arrives.
    queued_id = str(uuid.uuid4())
    queued_task = start_task_id(queued_id)
    edge.app.control.revoke(queued_task)
    queued, queued_key = edge.run(correlation_id=queued_id)
    running, running_key = edge.run(sleep_s=30.0)
    running_task = _edgy_task_id(edge, running)
    wait_for(lambda: edge.runs(running_key) >= 1, 60, 0.05, "the long task to start")
    edge.app.control.revoke(running_task, terminate=True)

    for handle, task_id in ((queued, queued_task), (running, running_task)):
        outcome = handle.wait(60)
        assert outcome.status == "failed" and "revoked" in (outcome.reason or "").lower(), outcome
        revoked = edge.store.find(task_id=task_id, type="task.revoked")
        assert len(revoked) == 1, edge.events(handle.id)
    assert edge.runs(queued_key) == 0, "a task revoked while queued never runs"
    assert edge.store.find(task_id=running_task, type="task.revoked")[0].payload["terminated"] is True
    edge.assert_worker_alive()


# -- row 9: what the consumer dead-letters, and error callbacks, are recorded ---------------------------------


def test_a_message_the_consumer_dead_letters_is_recorded_with_its_reason(edge: Edge) -> None:
    correlation = f"undecodable-{uuid.uuid4().hex[:8]}"
    headers = celery_headers("agents.probe", **{CORRELATION_HEADER: correlation})
    raw_publish(edge.app, f"{edge.namespace}.probe", b"\x80\x81 not json", content_type="application/json",
                headers=headers)
    recorded = wait_for(lambda: edge.events(correlation, "task.dead_lettered"), 60, 0.1, "the dead letter's record")
    assert recorded[0].task_id == headers["id"] and recorded[0].payload["reason"] == "undecodable-message"
    assert [m.headers[REASON_HEADER] for m in edge.letters_of(headers["id"], "probe")] == ["undecodable-message"]


def test_every_task_of_a_failed_pipeline_ends_in_its_timeline_error_callbacks_too(edge: Edge) -> None:
    handle, _ = edge.run(mode="permanent")
    assert handle.wait(60).status == "failed"

    def all_ended() -> list[Any] | None:
        steps = edge.store.timeline(handle.id).steps
        return steps if steps and all(s.status not in ("sent", "received", "started") for s in steps) else None

    steps = wait_for(all_ended, 60, 0.2, "every task of the failed pipeline to end")
    assert {s.agent for s in steps} >= {"edgy", "system"}


# -- the redelivery limit -----------------------------------------------------------------------------------------


def test_a_message_that_kills_its_worker_every_time_stops_at_the_redelivery_limit(edge: Edge) -> None:
    handle, key = edge.run(mode="exit")
    outcome = handle.wait(180)
    assert outcome.status == "failed" and "redelivery" in (outcome.reason or "").lower(), outcome
    assert edge.runs(key) == MAX_REDELIVERIES + 1, "the first delivery and each allowed redelivery ran once"
    task_id = edge.edgy_event(handle.id, "task.dead_lettered").task_id
    assert len(edge.store.find(task_id=task_id, type="task.redelivered")) == MAX_REDELIVERIES + 1
    letters = edge.letters_of(task_id)
    assert len(letters) == 1 and letters[0].headers[REASON_HEADER] == "redelivery-limit"
    edge.assert_worker_alive()


# -- all of it at once ---------------------------------------------------------------------------------------------

#: Mode -> (share of the workload, how its workflow must end).
MIXED: dict[str, tuple[float, str]] = {
    "ok": (0.30, "completed"),
    "nan": (0.10, "completed"),
    "permanent": (0.15, "failed"),
    "surrogate_error": (0.10, "failed"),
    "surrogate_out": (0.10, "failed"),
    "exit": (0.10, "failed"),
    "swallow_soft_limit": (0.05, "failed"),
    "revoke": (0.10, "failed"),
}


def test_a_mixed_workload_of_edges_ends_every_workflow_as_its_input_asks(edge: Edge, scale: Scale) -> None:
    """Every edge above at once, interleaved on one worker: each workflow ends as its mode asks, and the
    audit of the log finds every task ended (no missing transition) and nothing recorded twice."""
    began = time.monotonic()
    rng = random.Random(13)
    modes = rng.choices(list(MIXED), weights=[share for share, _ in MIXED.values()], k=scale.edge_workflows)
    runs: list[tuple[PipelineHandle, str]] = []
    for mode in modes:
        if mode == "revoke":
            pipeline_id = str(uuid.uuid4())
            edge.app.control.revoke(start_task_id(pipeline_id))
            runs.append((edge.run(correlation_id=pipeline_id)[0], mode))
        else:
            runs.append((edge.run(mode=mode)[0], mode))
    ends: dict[str, str] = {}
    deadline = time.monotonic() + scale.deadline_s
    for handle, _ in runs:
        ends[handle.id] = handle.wait(max(1.0, deadline - time.monotonic())).status
    wrong = [f"{h.id} ({mode}) ended {ends[h.id]}, expected {MIXED[mode][1]}" for h, mode in runs
             if ends[h.id] != MIXED[mode][1]]
    agent_tasks = {n for n, t in edge.app.tasks.items() if isinstance(t, AgentTask | SystemTask)}
    ids = [h.id for h, _ in runs]
    findings = audit(edge.store, ids, agent_tasks=agent_tasks)
    settle = time.monotonic() + 30  # the log may trail the last outcome by a record or two
    while findings.missing and time.monotonic() < settle:
        time.sleep(0.5)
        findings = audit(edge.store, ids, agent_tasks=agent_tasks)
    figures.record(Figures(
        test="edges mixed (time limits, revokes, crash loops, unstorable values)", pipelines=len(runs),
        events_checked=findings.events_checked, tasks_checked=findings.tasks_checked,
        duplicates=len(findings.duplicates), missing_transitions=len(findings.missing),
        redeliveries_after_terminal=findings.reruns_after_terminal, ended=dict(Counter(ends.values())),
        seconds=time.monotonic() - began,
    ))
    assert not wrong, "\n".join(wrong[:12])
    assert not findings.missing, "\n".join(findings.missing[:12])
    assert not findings.duplicates, "\n".join(findings.duplicates[:12])
    edge.assert_worker_alive()
