"""Edge: the worker dies after a task's failure for good was recorded and dead-lettered, before the ack.

The broker delivers the message again. The task must not run again (its side effects would repeat and its
failure would be dead-lettered twice), nor record a second start; its failure path is taken with the recorded
error and reason (tasks.runtime.redelivery): the pipeline fails once, naming the first error, and the
dead-letter queue holds the task once. Real worker processes on the private RabbitMQ, Redis and PostgreSQL;
the whole first worker is SIGKILLed as the failure is about to be stored (``permanent_exit_after_record``).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import redis

from relaybus.tasks.pipelines.client import start
from relaybus.tasks.runtime.deadletter import REASON_HEADER
from tests.chaos.audit import audit
from tests.chaos.services import PrivatePostgres, PrivateRabbitMQ, PrivateRedis
from tests.chaos.system import edge_system
from tests.harness import Worker, delete_namespace, read_letters_of, redis_list, wait_for
from tests.services import REDIS_URL

pytestmark = pytest.mark.timeout(240)


def test_a_task_redelivered_after_its_failure_was_recorded_is_not_run_or_dead_lettered_again(
    rabbitmq: PrivateRabbitMQ, redis_server: PrivateRedis, postgres: PrivatePostgres, tmp_path: Path,
) -> None:
    settings, app, store = edge_system(tmp_path, rabbitmq.url, redis_server.url, postgres.url)
    notes = redis.Redis.from_url(REDIS_URL)  # where the test agents note their runs (tests.agents.note)
    key = f"after-failure-{uuid.uuid4().hex[:12]}"
    first = Worker(settings, ("system", "edgy"), tmp_path, concurrency=2, name="dies")
    second = None
    try:
        first.wait_ready(app, timeout=90)
        handle = start("edgy-one", {"key": key, "mode": "permanent_exit_after_record"}, app=app)
        wait_for(lambda: first.proc.poll() is not None, 60, 0.1, "the first worker to be killed after the failure")
        assert notes.get(f"{key}:died") == b"1"
        task_id = next(e.task_id for e in store.by_correlation(handle.id)
                       if e.type == "task.failed" and e.agent == "edgy")

        second = Worker(settings, ("system", "edgy"), tmp_path, concurrency=2, name="after")
        second.wait_ready(app, timeout=90)
        outcome = handle.wait(120)
        assert outcome.status == "failed", outcome
        wait_for(lambda: store.find(task_id=task_id, type="task.redelivered"), 60, 0.1, "the redelivery's record")

        runs = [n for n in redis_list(notes, key) if n["event"] == "start"]
        assert len(runs) == 1, f"the body ran {len(runs)} times"
        types = [e.type for e in store.find(task_id=task_id)]
        assert types.count("task.started") == 1 and types.count("task.failed") == 1, types
        assert types.count("task.dead_lettered") == 1, types
        failed = next(e for e in store.find(task_id=task_id) if e.type == "task.failed")
        assert failed.payload["error_type"] == "PermanentError", failed.payload
        assert len([e for e in store.by_correlation(handle.id) if e.type == "pipeline.failed"]) == 1
        letters = [m for m in read_letters_of(app, f"{settings.namespace}.edgy.dlq", [task_id])
                   if m.headers.get("id") == task_id]
        assert len(letters) == 1, f"{len(letters)} dead letters of {task_id}"
        assert letters[0].headers.get(REASON_HEADER) == "permanent-error", letters[0].headers
        findings = audit(store, [handle.id], agent_tasks={"agents.edgy"})
        assert not findings.missing and findings.reruns_after_terminal == 0, findings
        assert second.proc.poll() is None, second.log()[-3000:]
    finally:
        for worker in (first, second):
            if worker is not None:
                worker.stop()
        delete_namespace(app)
        notes.delete(key, f"{key}:died")
        store.close()
        app.close()
