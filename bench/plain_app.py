"""The baselines of the throughput benchmark: plain Celery apps, no relaybus, as a user would configure them.

``RELAYBUS_BENCH_PLAIN=defaults``: ``Celery(broker=...)`` and nothing else (early ack, prefetch 4 per
process, no publisher confirms, no result backend, no task events): what a user picks instead of relaybus.

``RELAYBUS_BENCH_PLAIN=guarantees``: plain Celery configured for what relaybus promises before any of its own
code runs: late ack (a crashed worker's message is redelivered), a lost pool process's message rejected back
to the queue, prefetch 1 (priorities can overtake), persistent messages, publisher confirms, results in
Redis, and task events for Flower (the worker runs with ``-E``).

``celery -A bench.plain_app worker ...``: the worker reads the same variables as the publisher.
"""

from __future__ import annotations

import os
import time

from celery import Celery

from bench.marks import mark

MODE = os.environ.get("RELAYBUS_BENCH_PLAIN", "defaults")
BROKER = os.environ.get("RELAYBUS_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
BACKEND = os.environ.get("RELAYBUS_RESULT_BACKEND", "redis://127.0.0.1:6379/0")


def create(mode: str = MODE, broker: str = BROKER) -> Celery:
    """A plain Celery app in ``mode`` (module docstring), with the one baseline task."""
    app = Celery("bench_plain", broker=broker, set_as_current=False)
    if mode == "guarantees":
        app.conf.update(
            result_backend=BACKEND,
            task_acks_late=True,
            task_reject_on_worker_lost=True,
            worker_prefetch_multiplier=1,
            task_default_delivery_mode="persistent",
            broker_transport_options={"confirm_publish": True},
            worker_send_task_events=True,
            task_send_sent_event=True,
            result_expires=3600,
        )
    elif mode != "defaults":
        raise ValueError(f"RELAYBUS_BENCH_PLAIN must be 'defaults' or 'guarantees', not {mode!r}")
    app.task(name="bench.plain_baseline")(plain_baseline)
    return app


def plain_baseline(key: str, n: int = 0, work_ms: float = 0.0) -> dict[str, int]:
    if work_ms:
        time.sleep(work_ms / 1000)
    mark(key)
    return {"n": n}


app = create()
