"""Edge: the worker dies after a task's success was recorded (its result stored, or not yet), before the ack.

The broker delivers the message again. The task must not run again (its side effects would repeat: an LLM
call paid twice), nor record a second start that no end follows; what follows it is sent again under the
same ids and the pipeline completes once (tasks.runtime.redelivery): the result comes from the result
backend, or, when the worker died before storing it, from the task's ``task.succeeded`` record. Real worker
processes on the private RabbitMQ, Redis and PostgreSQL; the whole first worker is SIGKILLed from inside the
task's postrun (``exit_after_success``) or as its result is about to be stored (``exit_after_record``).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import redis

from relaybus.eventstore import EventStore
from relaybus.tasks.pipelines.client import start
from relaybus.tasks.pipelines.registry import FAIL_TASK
from tests.chaos.audit import audit
from tests.chaos.services import PrivatePostgres, PrivateRabbitMQ, PrivateRedis
from tests.chaos.system import edge_system
from tests.edge_agents import KILL_AT_FAIL_RESULT
from tests.harness import Worker, delete_namespace, redis_list, wait_for
from tests.services import REDIS_URL

pytestmark = pytest.mark.timeout(240)


@pytest.mark.parametrize("mode", ["exit_after_success", "exit_after_record"])
def test_a_task_redelivered_after_its_success_was_recorded_does_not_run_again(
    rabbitmq: PrivateRabbitMQ, redis_server: PrivateRedis, postgres: PrivatePostgres, tmp_path: Path, mode: str,
) -> None:
    settings, app, store = edge_system(tmp_path, rabbitmq.url, redis_server.url, postgres.url)
    notes = redis.Redis.from_url(REDIS_URL)  # where the test agents note their runs (tests.agents.note)
    key = f"after-success-{uuid.uuid4().hex[:12]}"
    first = Worker(settings, ("system", "edgy"), tmp_path, concurrency=2, name="dies")
    second = None
    try:
        first.wait_ready(app, timeout=90)
        handle = start("edgy-one", {"key": key, "mode": mode}, app=app)
        wait_for(lambda: first.proc.poll() is not None, 60, 0.1, "the first worker to be killed after the success")
        assert notes.get(f"{key}:died") == b"1"
        task_id = next(e.task_id for e in store.by_correlation(handle.id)
                       if e.type == "task.succeeded" and e.agent == "edgy")

        second = Worker(settings, ("system", "edgy"), tmp_path, concurrency=2, name="after")
        second.wait_ready(app, timeout=90)
        outcome = handle.wait(120)
        assert outcome.status == "completed", outcome
        wait_for(lambda: store.find(task_id=task_id, type="task.redelivered"), 60, 0.1, "the redelivery's record")

        runs = [n for n in redis_list(notes, key) if n["event"] == "start"]
        assert len(runs) == 1, f"the body ran {len(runs)} times"
        types = [e.type for e in store.find(task_id=task_id)]
        assert types.count("task.started") == 1 and types.count("task.succeeded") == 1, types
        assert len([e for e in store.by_correlation(handle.id) if e.type == "pipeline.completed"]) == 1
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


def test_a_system_task_redelivered_after_its_success_was_recorded_does_not_run_again(
    rabbitmq: PrivateRabbitMQ, redis_server: PrivateRedis, postgres: PrivatePostgres, tmp_path: Path,
) -> None:
    """The same for relaybus's own tasks: the pipeline's failure callback (``pipelines.fail``) dies after its
    success was recorded, before its result was stored. Run again, it recorded a second start that no end
    followed (its end shares the first one's id)."""
    settings, app, store = edge_system(tmp_path, rabbitmq.url, redis_server.url, postgres.url)
    notes = redis.Redis.from_url(REDIS_URL)
    key = f"system-after-success-{uuid.uuid4().hex[:12]}"
    notes.set(KILL_AT_FAIL_RESULT, "edgy-one")
    first = Worker(settings, ("system", "edgy"), tmp_path, concurrency=2, name="dies")
    second = None
    try:
        first.wait_ready(app, timeout=90)
        handle = start("edgy-one", {"key": key, "mode": "permanent"}, app=app)
        wait_for(lambda: first.proc.poll() is not None, 60, 0.1, "the worker to be killed in pipelines.fail")
        assert notes.get(KILL_AT_FAIL_RESULT) is None  # taken: the kill happened where the test asked
        fail_id = next(e.task_id for e in store.by_correlation(handle.id)
                       if e.type == "task.succeeded" and _name(store, e.task_id) == FAIL_TASK)

        second = Worker(settings, ("system", "edgy"), tmp_path, concurrency=2, name="after")
        second.wait_ready(app, timeout=90)
        outcome = handle.wait(120)
        assert outcome.status == "failed", outcome
        wait_for(lambda: store.find(task_id=fail_id, type="task.redelivered"), 60, 0.1, "the redelivery's record")
        types = [e.type for e in store.find(task_id=fail_id)]
        assert types.count("task.started") == 1 and types.count("task.succeeded") == 1, types
        assert len([e for e in store.by_correlation(handle.id) if e.type == "pipeline.failed"]) == 1
        findings = audit(store, [handle.id], agent_tasks={"agents.edgy", FAIL_TASK})
        assert not findings.missing and findings.reruns_after_terminal == 0, findings
        assert second.proc.poll() is None, second.log()[-3000:]
    finally:
        notes.delete(KILL_AT_FAIL_RESULT)
        for worker in (first, second):
            if worker is not None:
                worker.stop()
        delete_namespace(app)
        notes.delete(key)
        store.close()
        app.close()


def _name(store: EventStore, task_id: str | None) -> str:
    """The task name its ``task.sent`` gives."""
    sent = store.find(task_id=task_id, type="task.sent", limit=1) if task_id else []
    return str(sent[0].payload.get("task", "")) if sent else ""
