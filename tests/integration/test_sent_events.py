"""A sender's ``task-sent`` events reach the event exchange (Flower, ``celery events``) on a connection of its own
without publisher confirms, so that a send waits for one confirm, the task's; they are published by a thread of
the process, gathered for ``events_batch_s`` into one ``task.multi`` message, and what is still buffered goes out
when the process exits or a pool process shuts down (tasks.runtime.sentevents)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery, chain
from kombu import Exchange, Queue

from relaybus.settings import Settings
from relaybus.tasks.runtime.sentevents import flush_sent_events
from tests.harness import ROOT, Worker, make_app, wait_for

Messages = list[tuple[str, list[dict[str, Any]]]]


@contextmanager
def sent_events(app: Celery) -> Iterator[Callable[[], Messages]]:
    """A queue on the event exchange for ``task-sent`` events, alone or in a batch; yields a function returning
    the messages read so far as (routing key, events)."""
    exchange = Exchange(app.conf.event_exchange, type="topic")
    seen: Messages = []
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        queue = Queue(f"test-sent-{uuid.uuid4().hex[:8]}", exchange=exchange, routing_key="task.sent", durable=False,
                      auto_delete=False)(channel)
        queue.declare()
        queue.bind_to(exchange, routing_key="task.multi")

        def read() -> Messages:
            while (message := queue.get(no_ack=True)) is not None:
                body = message.decode()
                events = body if isinstance(body, list) else [body]
                seen.append((message.delivery_info["routing_key"], [e for e in events if e["type"] == "task-sent"]))
            return seen

        try:
            yield read
        finally:
            queue.delete()


def _sent_ids(messages: Messages) -> set[str]:
    return {e["uuid"] for _, events in messages for e in events}


def test_task_sent_events_are_published_unconfirmed_beside_the_confirmed_task(app: Celery) -> None:
    task_id = str(uuid.uuid4())
    with sent_events(app) as read:
        app.tasks["agents.probe"].apply_async(kwargs={"key": "sent-events"}, task_id=task_id)
        wait_for(lambda: task_id in _sent_ids(read()), 15, 0.05, "the task-sent event")
        (event,) = [e for _, events in read() for e in events if e["uuid"] == task_id]
    assert event["type"] == "task-sent"
    assert "sent-events" in event["kwargs"], "the redacted reprs the message carries"

    unconfirmed = app.amqp._event_dispatcher._unconfirmed
    assert unconfirmed._connection is not None, "published through relaybus's event connection"
    assert unconfirmed._connection.transport_options.get("confirm_publish") is False
    with app.producer_or_acquire() as producer:
        assert producer.connection is not unconfirmed._connection
        assert producer.connection.transport_options.get("confirm_publish") is True, "tasks stay confirmed"


def test_the_sends_of_one_batch_interval_go_out_as_one_message(settings: Settings, app: Celery) -> None:
    batched = make_app(settings.model_copy(update={"events_batch_s": 5.0}))  # longer than the test
    try:
        with sent_events(app) as read:
            ids = [batched.tasks["agents.probe"].apply_async(kwargs={"key": f"b{i}"}).id for i in range(5)]
            flush_sent_events()  # what a process's exit does
            wait_for(lambda: set(ids) <= _sent_ids(read()), 15, 0.05, "the five task-sent events")
            messages = read()
    finally:
        batched.close()
    assert [(key, [e["uuid"] for e in events]) for key, events in messages] == [("task.multi", ids)]


def test_a_process_that_exits_right_after_sending_still_publishes_its_task_sent_events(
    settings: Settings, app: Celery
) -> None:
    script = (
        "import sys\n"
        "from tests.harness import make_app\n"
        "from relaybus.settings import Settings\n"
        "app = make_app(Settings())\n"
        "for i in range(3):\n"
        "    print(app.tasks['agents.probe'].apply_async(kwargs={'key': f'exit{i}'}).id)\n"
    )
    env = {**settings.model_copy(update={"events_batch_s": 5.0}).to_env(), "PYTHONPATH": str(ROOT)}
    with sent_events(app) as read:
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        ids = set(done.stdout.split())
        assert len(ids) == 3
        # Published at its exit, not 5 s later by a thread that no longer exists.
        wait_for(lambda: ids <= _sent_ids(read()), 15, 0.05, "the exited sender's task-sent events")


def test_a_pool_process_publishes_the_task_sent_events_it_buffered_when_its_worker_shuts_down(
    settings: Settings, app: Celery, start_worker: Callable[..., Worker]
) -> None:
    worker = start_worker("probe", settings=settings.model_copy(update={"events_batch_s": 5.0}))
    probe = app.tasks["agents.probe"]
    with sent_events(app) as read:
        result = chain(probe.s(key="pool-sent", label="first"), probe.s(key="pool-sent", label="second")).apply_async()
        assert result.get(timeout=60)["label"] == "second"
        worker.stop()  # the pool process sent the second step; its event is still in its buffer
        wait_for(lambda: result.id in _sent_ids(read()), 15, 0.05, "the second step's task-sent event")


def test_a_process_forked_while_its_parent_publishes_events_publishes_its_own(app: Celery) -> None:
    """A fork copies locks as they are: one held by the parent's publishing thread at that moment must not
    leave the child (a pool process) unable to publish, ever."""
    unconfirmed = app.amqp._event_dispatcher._unconfirmed
    with sent_events(app) as read:
        task_id = str(uuid.uuid4())
        with unconfirmed._io, unconfirmed._lock:  # as the parent's thread holds them mid-publish
            pid = os.fork()
            if pid == 0:  # the child: send a task, publish its event, leave
                code = 1
                try:
                    app.tasks["agents.probe"].apply_async(kwargs={"key": "forked"}, task_id=task_id)
                    flush_sent_events()
                    code = 0
                finally:
                    os._exit(code)
        deadline = time.monotonic() + 30
        while (waited := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        if waited == (0, 0):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child hung on a lock its parent held")
        assert os.waitstatus_to_exitcode(waited[1]) == 0
        wait_for(lambda: task_id in _sent_ids(read()), 15, 0.05, "the forked child's task-sent event")
