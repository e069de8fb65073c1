"""A revoke outlives the workers: kept in Redis, loaded by every worker that starts (tasks.runtime.revokes).

Celery keeps revoked ids in worker memory only, so a revoke broadcast while no worker runs, or followed by a
restart of every worker (these workers run without mingle, as a fleet restarted at once would), used to let
the task run. Real RabbitMQ, Redis, worker processes and the event log.
"""

from __future__ import annotations

import time
import uuid

import pytest
from celery import Celery
from celery.worker import state

import relaybus
from relaybus.eventstore import open_store
from relaybus.settings import Settings
from relaybus.tasks.runtime.context import workflow_context
from relaybus.tasks.runtime.revokes import KEY_PREFIX, keep, kept_revokes
from tests.harness import redis_list, wait_for

pytestmark = pytest.mark.integration


def _types(settings: Settings, correlation_id: str, task_id: str) -> list[str]:
    store = open_store(settings.eventstore_url)
    try:
        return [e.type for e in store.by_correlation(correlation_id) if e.task_id == task_id]
    finally:
        store.close()


def _started(redis_client, key: str, label: str) -> list[dict]:
    return [n for n in redis_list(redis_client, key) if n["label"] == label and n["event"] == "start"]


def test_a_revoke_sent_while_no_worker_runs_stops_the_task_when_a_worker_starts(
    app: Celery, settings: Settings, start_worker, redis_client
) -> None:
    probe = app.tasks["agents.probe"]
    key = f"test:{uuid.uuid4().hex}"
    with workflow_context() as correlation_id:
        revoked = probe.apply_async(kwargs={"key": key, "label": "revoked"})
        after = probe.apply_async(kwargs={"key": key, "label": "after"})
    try:
        assert relaybus.revoke(revoked.id, app=app) == [revoked.id]
        assert kept_revokes(app) == [revoked.id]

        start_worker("probe")
        assert after.get(timeout=60)["label"] == "after"  # the queue was worked through
        wait_for(lambda: "task.revoked" in _types(settings, correlation_id, revoked.id), 30, 0.1,
                 "the revoke to be recorded")
        assert _started(redis_client, key, "revoked") == []
        assert "task.succeeded" not in _types(settings, correlation_id, revoked.id)
    finally:
        redis_client.delete(key, KEY_PREFIX + settings.namespace)


def test_a_revoke_heard_by_a_worker_holds_after_every_worker_restarts(
    app: Celery, settings: Settings, start_worker, redis_client
) -> None:
    probe = app.tasks["agents.probe"]
    key = f"test:{uuid.uuid4().hex}"
    first = start_worker("probe")
    with workflow_context() as correlation_id:
        held = probe.apply_async(kwargs={"key": key, "label": "held"}, countdown=8)
    try:
        # Celery's own revoke, as Flower or AsyncResult.revoke() sends it: the worker that hears it keeps it.
        app.control.revoke(held.id)
        wait_for(lambda: held.id in kept_revokes(app), 20, 0.05, "the worker to keep the revoke")
        first.stop()  # the held message goes back to its queue; the worker's memory of the revoke is gone

        start_worker("probe")
        wait_for(lambda: "task.revoked" in _types(settings, correlation_id, held.id), 60, 0.2,
                 "the restarted worker to refuse the held task")
        assert _started(redis_client, key, "held") == []
        assert "task.succeeded" not in _types(settings, correlation_id, held.id)
    finally:
        redis_client.delete(key, KEY_PREFIX + settings.namespace)


def test_kept_revokes_expire_with_celerys_revoke_expiry(app: Celery, settings: Settings, redis_client) -> None:
    try:
        assert keep(app, ["old"], now=1000.0)
        assert keep(app, ["new"])
        assert kept_revokes(app) == ["new"]  # "old" expired at 1000 + REVOKE_EXPIRES, long ago
        assert redis_client.zcard(KEY_PREFIX + settings.namespace) == 1  # and was removed by the second keep
        score = redis_client.zscore(KEY_PREFIX + settings.namespace, "new")
        assert score == pytest.approx(time.time() + state.REVOKE_EXPIRES, abs=60)
    finally:
        redis_client.delete(KEY_PREFIX + settings.namespace)
