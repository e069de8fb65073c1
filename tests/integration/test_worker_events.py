"""A worker's task events (Flower, ``celery events``) go out together, ``events_batch_s`` after the first
of them, as one ``task.multi`` message, and what is still waiting goes out when the worker shuts down
(tasks.runtime.consumer)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from relaybus.settings import Settings
from tests.harness import Worker, wait_for

WORKER_EVENTS = ("task-received", "task-started", "task-succeeded")


@contextmanager
def task_events(app: Celery) -> Iterator[Callable[[], list[tuple[str, list[dict[str, Any]]]]]]:
    """A queue on the event exchange for every task event; yields a function that returns the messages read so
    far, each as (routing key, its events)."""
    exchange = Exchange(app.conf.event_exchange, type="topic")
    seen: list[tuple[str, list[dict[str, Any]]]] = []
    with app.connection_for_read() as conn:
        queue = Queue(f"test-events-{uuid.uuid4().hex[:8]}", exchange=exchange, routing_key="task.#",
                      durable=False, auto_delete=False)(conn.default_channel)
        queue.declare()

        def read() -> list[tuple[str, list[dict[str, Any]]]]:
            while (message := queue.get(no_ack=True)) is not None:
                body = message.decode()
                seen.append((message.delivery_info["routing_key"], body if isinstance(body, list) else [body]))
            return seen

        try:
            yield read
        finally:
            queue.delete()


def _of_worker(messages: list[tuple[str, list[dict[str, Any]]]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The messages that hold the worker's events (the client's ``task-sent`` go one per message)."""
    return [(key, events) for key, events in messages if any(e["type"] in WORKER_EVENTS for e in events)]


def _types_by_task(messages: list[tuple[str, list[dict[str, Any]]]]) -> dict[str, set[str]]:
    types: dict[str, set[str]] = {}
    for _, events in messages:
        for event in events:
            types.setdefault(event["uuid"], set()).add(event["type"])
    return types


def test_events_waiting_for_their_batch_go_out_in_one_message_when_the_worker_shuts_down(
    settings: Settings, app: Celery, start_worker: Callable[..., Worker]
) -> None:
    # A batch far longer than the test: only the worker's shutdown publishes the events.
    worker = start_worker("probe", settings=settings.model_copy(update={"events_batch_s": 5.0}))
    with task_events(app) as read:
        sent = [app.tasks["agents.probe"].apply_async(kwargs={"key": f"batch-{i}", "value": i}) for i in range(3)]
        assert [r.get(timeout=60)["value"] for r in sent] == [1, 2, 3]
        worker.stop()
        ids = {r.id for r in sent}

        def all_events() -> bool:
            types = _types_by_task(_of_worker(read()))
            return all(types.get(i, set()) >= set(WORKER_EVENTS) for i in ids)

        wait_for(all_events, 20, 0.05, "the three tasks' events, published as the worker shut down")
        from_worker = _of_worker(read())
    assert [key for key, _ in from_worker] == ["task.multi"], (
        f"one message for the nine events: {[(k, [e['type'] for e in evs]) for k, evs in from_worker]}"
    )
    assert len(from_worker[0][1]) == 9


def test_a_running_worker_publishes_its_task_events_a_batch_interval_after_they_happen(
    app: Celery, start_worker: Callable[..., Worker]
) -> None:
    start_worker("probe")  # the default batch, 0.05 s
    with task_events(app) as read:
        result = app.tasks["agents.probe"].apply_async(kwargs={"key": "batched", "value": 1})
        assert result.get(timeout=60)["value"] == 2

        def succeeded() -> bool:
            return "task-succeeded" in _types_by_task(_of_worker(read())).get(result.id, set())

        wait_for(succeeded, 20, 0.05, "the task-succeeded event from the running worker")
        events = [e for _, evs in _of_worker(read()) for e in evs if e["uuid"] == result.id]
    assert [e["type"] for e in events] == list(WORKER_EVENTS), "each event once, in order"
