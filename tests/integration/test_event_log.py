"""The event log end to end: real workers on RabbitMQ record every transition, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any

import pytest
from celery import chain, chord
from sqlalchemy import text

from relaybus.eventstore import open_store
from relaybus.tasks.runtime.context import workflow_context
from tests.harness import make_settings, redis_list, wait_for

pytestmark = pytest.mark.integration

TERMINAL = {"task.succeeded", "task.failed", "task.dead_lettered", "task.revoked", "task.rejected"}


@pytest.fixture
def settings(tmp_path, broker_url, redis_url, eventstore_url):  # overrides conftest's: one per database
    return make_settings(tmp_path, broker_url, redis_url, eventstore_url=eventstore_url)


def test_a_chain_chord_and_callback_leave_a_complete_ordered_timeline_with_causation_links(
    app, settings, start_worker
):
    start_worker("probe", concurrency=2)
    probe = app.tasks["agents.probe"]
    k = f"test:{uuid.uuid4().hex}"
    with workflow_context() as correlation_id:
        result = chain(
            probe.s(key=k, label="first"),
            chord([probe.s(key=k, label="a", fail_first=1), probe.s(key=k, label="b")], probe.s(key=k, label="cb")),
        ).apply_async()
    assert result.get(timeout=60)["label"] == "cb"

    store = open_store(settings.eventstore_url)
    try:
        events = store.by_correlation(correlation_id)
        per_task: dict[str, list] = defaultdict(list)
        for e in events:
            if e.task_id:
                per_task[e.task_id].append(e)
        assert len(per_task) == 4
        labels = {}
        for task_id, evs in per_task.items():
            types = [e.type for e in evs]
            assert types[0] == "task.sent", types
            assert "task.started" in types
            assert sum(t in TERMINAL for t in types) == 1, types
            assert types[-1] == "task.succeeded", types
            labels[task_id] = evs[0].payload["input"]["kwargs"]["label"]
        by_label = {v: k for k, v in labels.items()}
        retried = [e.type for e in per_task[by_label["a"]]]
        assert retried.count("task.started") == 2 and "task.retried" in retried

        sent = {e.task_id: e for e in events if e.type == "task.sent"}
        assert sent[by_label["a"]].causation_id == by_label["first"]
        assert sent[by_label["b"]].causation_id == by_label["first"]
        assert sent[by_label["cb"]].causation_id in {by_label["a"], by_label["b"]}

        stream = store.read_stream(correlation_id)
        assert [e.version for e in stream] == list(range(1, len(stream) + 1)), "no gaps in the stream"
        positions = [e.position for e in events]
        assert positions == sorted(positions)

        store.projection.catch_up()
        live = store.projection.get(correlation_id)
        replayed = store.dry_run(correlation_id).state
        assert live is not None and replayed is not None
        assert replayed.model_dump(exclude={"last_position"}) == live.model_dump(exclude={"last_position"})
        assert live.status == "succeeded" and live.tasks_succeeded == 4
        assert store.verify().ok
    finally:
        store.close()


def test_a_worker_killed_mid_task_leaves_exactly_one_terminal_event_for_it(app, settings, start_worker, redis_client):
    k = f"test:{uuid.uuid4().hex}"
    first = start_worker("probe", concurrency=1)
    with workflow_context() as correlation_id:
        task_id = app.tasks["agents.probe"].apply_async(kwargs={"key": k, "label": "long", "sleep_s": 3}).id
    wait_for(lambda: redis_list(redis_client, k), 30, what="the task to start")
    store = open_store(settings.eventstore_url)
    # A start is written with the task's next record, or after 0.1 s of running: wait for it, so the
    # kill comes mid-task with the first attempt's start on record.
    wait_for(lambda: store.find(task_id=task_id, type="task.started", limit=10), 30, what="the start record")
    store.close()
    start_worker("probe", concurrency=1)
    first.kill()
    wait_for(lambda: any(n["event"] == "done" for n in redis_list(redis_client, k)), 60, what="the redelivery")

    store = open_store(settings.eventstore_url)
    try:
        def terminal():
            return [e for e in store.find(task_id=task_id, limit=100) if e.type in TERMINAL]

        wait_for(terminal, 30, what="the terminal event")
        types = [e.type for e in store.find(task_id=task_id, limit=100)]
        assert types.count("task.started") == 2, types
        assert [t for t in types if t in TERMINAL] == ["task.succeeded"], types
        assert store.timeline(correlation_id).steps[0].status == "succeeded"
    finally:
        store.close()


def test_an_api_key_argument_leaves_no_trace_in_the_event_log_or_the_worker_log(
    app, settings, start_worker, redis_client, tmp_path
):
    secret = f"sk-live-{uuid.uuid4().hex}"
    worker = start_worker("probe")
    k = f"test:{uuid.uuid4().hex}"
    with workflow_context() as correlation_id:
        app.tasks["agents.probe"].apply_async(kwargs={"key": k, "label": "s", "api_key": secret})
    wait_for(lambda: any(n["event"] == "done" for n in redis_list(redis_client, k)), 60, what="the task")
    store = open_store(settings.eventstore_url)
    try:
        # The task's body marks "done" in Redis before its terminal event is written: wait for that.
        def succeeded() -> list[Any] | None:
            evs = store.by_correlation(correlation_id)
            return evs if any(e.type == "task.succeeded" for e in evs) else None

        events = wait_for(succeeded, 30, what="task.succeeded in the log")
        sent = next(e for e in events if e.type == "task.sent")
        assert sent.payload["input"]["kwargs"]["api_key"] == "[REDACTED]"
        if settings.eventstore_url.startswith("sqlite"):
            raw = b"".join(p.read_bytes() for p in tmp_path.glob("events.sqlite*"))
        else:
            with store.engine.connect() as conn:
                raw = "".join(str(row) for row in conn.execute(text("SELECT * FROM events"))).encode()
        assert secret.encode() not in raw
        assert secret not in worker.log()
    finally:
        store.close()


def test_a_deterministic_replay_with_the_provider_switched_off_reproduces_the_recorded_outputs(
    app, settings, start_worker
):
    first_worker = start_worker("intake")
    request = "How do sagas undo the steps that completed?"
    with workflow_context() as original:
        first = app.tasks["agents.intake"].apply_async(kwargs={"request": request}).get(timeout=60)
    first_worker.stop()

    # The same queues, served now by a worker whose provider cannot be reached: any real call fails.
    switched_off = settings.model_copy(update={"llm_provider": "openai", "llm_base_url": "http://127.0.0.1:9/v1",
                                               "llm_model": "none", "max_retries": 0})
    start_worker("intake", settings=switched_off, name="replayer")
    with workflow_context():
        control = app.tasks["agents.intake"].apply_async(kwargs={"request": request})
    with pytest.raises(Exception, match=r"ProviderUnavailable|unreachable|connect|refused"):
        control.get(timeout=60)

    with workflow_context(llm_replay_of=original) as replayed:
        again = app.tasks["agents.intake"].apply_async(kwargs={"request": request})
    assert again.get(timeout=60) == first

    store = open_store(settings.eventstore_url)
    try:
        assert store.diff(original, replayed).identical
        assert any(e.type == "llm.completed" for e in store.by_correlation(replayed))
    finally:
        store.close()


def test_diff_reports_the_first_step_where_two_real_runs_part(app, settings, start_worker):
    start_worker("intake")
    intake = app.tasks["agents.intake"]
    with workflow_context() as a:
        intake.apply_async(kwargs={"request": "What is a dead-letter queue?"}).get(timeout=60)
    with workflow_context() as b:
        intake.apply_async(kwargs={"request": "What is a dead-letter queue?"}).get(timeout=60)
    with workflow_context() as c:
        intake.apply_async(kwargs={"request": "What is a saga?"}).get(timeout=60)
    store = open_store(settings.eventstore_url)
    try:
        assert store.diff(a, b).identical
        difference = store.diff(a, c).first_difference
        assert difference is not None and difference.agent == "intake" and difference.field == "input"
    finally:
        store.close()


def test_task_sent_is_recorded_for_the_publishing_app_from_any_thread(app, settings):
    """Celery's current app is per thread; a publish from another thread (a Django request thread, a
    thread pool) must still record ``task.sent`` in this app's log, not in the fallback app's."""
    import threading

    probe = app.tasks["agents.probe"]
    sent: list[str] = []
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            sent.append(probe.apply_async(kwargs={"key": f"test:{uuid.uuid4().hex}"}).id)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=publish)
    thread.start()
    thread.join(timeout=30)
    assert not errors and len(sent) == 1, errors
    store = open_store(settings.eventstore_url)
    try:
        recorded = wait_for(lambda: store.find(type="task.sent", task_id=sent[0], limit=5), 10,
                            what="task.sent of the message published from another thread")
        assert len(recorded) == 1 and recorded[0].payload["task"] == "agents.probe"
    finally:
        store.close()
