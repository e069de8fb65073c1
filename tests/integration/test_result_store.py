"""What relaybus's Redis result backend stores, in one round trip (tasks.runtime.chords, results): a success is
never overwritten, a failure stored by id keeps its first reason, and every store is published to waiting
clients with its expiry, as Celery's own store does."""

from __future__ import annotations

import json
import time
import uuid

from celery import Celery, states
from celery.app.task import Context

from relaybus.tasks.runtime.context import TRACK_STARTED_HEADER
from relaybus.tasks.runtime.results import TASK_RESULT_EXPIRES_S
from tests.harness import wait_for


def _own(task_id: str) -> Context:
    return Context(id=task_id, task="agents.probe", delivery_info={})


def test_a_stored_success_is_never_overwritten(app: Celery) -> None:
    backend, task_id = app.backend, str(uuid.uuid4())
    backend.store_result(task_id, {"pid": 1}, states.STARTED, request=_own(task_id))
    assert backend.get_state(task_id) == states.STARTED
    backend.store_result(task_id, {"n": 1}, states.SUCCESS, request=_own(task_id))
    backend.store_result(task_id, {"pid": 2}, states.STARTED, request=_own(task_id))  # a redelivered copy
    backend.store_result(task_id, ValueError("late"), states.FAILURE)  # failed by id, later
    assert backend.get_task_meta(task_id)["status"] == states.SUCCESS
    assert backend.get_result(task_id) == {"n": 1}
    ttl = backend.client.ttl(backend.get_key_for_task(task_id))
    assert 0 < ttl <= TASK_RESULT_EXPIRES_S


def test_a_failure_stored_by_id_keeps_its_first_reason_and_the_task_own_failure_replaces_it(app: Celery) -> None:
    backend, task_id = app.backend, str(uuid.uuid4())
    backend.store_result(task_id, ValueError("first"), states.FAILURE)
    backend.store_result(task_id, ValueError("second"), states.FAILURE)
    assert "first" in str(backend.get_result(task_id))
    backend.store_result(task_id, ValueError("own"), states.FAILURE, request=_own(task_id))
    assert "own" in str(backend.get_result(task_id))


def test_every_store_is_published_to_waiting_clients(app: Celery) -> None:
    backend, task_id = app.backend, str(uuid.uuid4())
    key = backend.get_key_for_task(task_id)
    pubsub = backend.client.pubsub()
    pubsub.subscribe(key)
    try:
        wait_for(lambda: pubsub.get_message(timeout=0.1) is not None, 5, 0.01, "the subscription")
        backend.store_result(task_id, {"n": 7}, states.SUCCESS, request=_own(task_id))
        message = wait_for(lambda: pubsub.get_message(timeout=0.1), 5, 0.01, "the published result")
        assert b'"status": "SUCCESS"' in message["data"] and b'"n": 7' in message["data"]
    finally:
        pubsub.close()


def test_an_agent_task_stores_no_started_state_unless_its_message_asks_as_a_pipeline_entry_does(
    app: Celery, start_worker, redis_client
) -> None:
    """The log's ``task.started`` is the record; Redis gets ``STARTED`` only for a message carrying
    TRACK_STARTED_HEADER (a pipeline's entry task, which ``PipelineHandle.status`` reads)."""
    start_worker("probe")
    probe = app.tasks["agents.probe"]
    states_seen = {}
    for asks in (False, True):
        key = f"started-state:{uuid.uuid4().hex}"
        release = time.time() + 30
        result = probe.apply_async(kwargs={"key": key, "until": release},
                                   headers={TRACK_STARTED_HEADER: True} if asks else None)
        # The body has begun (Celery stores STARTED before it): what Redis holds for the task now.
        wait_for(lambda key=key: any(json.loads(n)["event"] == "start" for n in redis_client.lrange(key, 0, -1)),
                 30, 0.05, "the probe's body to start")
        states_seen[asks] = app.backend.get_state(result.id)
        assert not result.ready()
        app.control.revoke(result.id, terminate=True)  # no need to wait out the sleep
        wait_for(lambda result=result: result.state in (states.REVOKED, states.FAILURE), 30, 0.1, "the revoke")
    assert states_seen == {False: states.PENDING, True: states.STARTED}
