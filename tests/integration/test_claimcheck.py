"""Large payloads by reference (tasks.runtime.claimcheck), with real workers, RabbitMQ, Redis and both databases.

What the broker carried is observed, not assumed: the test runs in a vhost of its own with RabbitMQ's firehose
on, and a queue bound to the firehose gets a copy of every message published there (task messages, events,
dead letters, Celery's own), whoever published it; the largest body is measured off it. Redis is read
back for every task of the workflow (``celery-task-meta-<id>``) and the pipeline's outcome.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from celery import Celery
from kombu import Exchange, Queue
from sqlalchemy import create_engine, text

from relaybus.eventstore import PayloadRef, open_store
from relaybus.eventstore.payloads import is_ref, refs_in
from relaybus.settings import Settings
from relaybus.tasks.runtime.claimcheck import store_config
from relaybus.tasks.runtime.config import runtime_config
from relaybus.tasks.runtime.deadletter import ERROR_MESSAGE_HEADER, REASON_HEADER
from tests.claimcheck_agents import CLAIMCHECK_AGENTS, big, shout
from tests.harness import ROOT, TEST_AGENTS, Worker, make_settings, read_queue, wait_for
from tests.services import unavailable

pytestmark = pytest.mark.timeout(240)

BROKER_LIMIT = 64 * 1024
DOCUMENT = "lorem ipsum dolor sit amet " * 780_000  # 21 MB


@pytest.fixture
def traced_vhost(broker_url: str) -> Iterator[str]:
    """A RabbitMQ vhost of the test's own with the firehose on (``rabbitmqctl trace_on``): RabbitMQ copies every
    message published in it, to any exchange (Celery publishes task messages to the default exchange, which
    no queue can be bound to), to ``amq.rabbitmq.trace``. Its own vhost, so no other test's traffic is traced."""
    if shutil.which("rabbitmqctl") is None:
        unavailable("rabbitmqctl is not installed: the firehose cannot be turned on")
    vhost = f"cc-{uuid.uuid4().hex[:10]}"

    def ctl(*args: str) -> None:
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)

    try:
        ctl("add_vhost", vhost)
    except (subprocess.CalledProcessError, OSError) as exc:
        unavailable(f"rabbitmqctl cannot manage the broker here: {exc}")
    try:
        ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        ctl("trace_on", "-p", vhost)
        yield broker_url.rstrip("/") + "/" + vhost
    finally:
        ctl("delete_vhost", vhost)


@pytest.fixture
def settings(tmp_path: Path, traced_vhost: str, redis_url: str, eventstore_url: str) -> Settings:
    return make_settings(
        tmp_path, traced_vhost, redis_url, eventstore_url=eventstore_url, max_payload_bytes=32 * 1024 * 1024,
        extra_modules=("tests.agents", "tests.claimcheck_agents"), extra_agents=TEST_AGENTS + CLAIMCHECK_AGENTS,
    )


@pytest.fixture
def tap(app: Celery) -> str:
    """A queue getting a copy of every message published in the test's vhost (the firehose's ``publish.#``)."""
    queue = Queue("firehose-tap", exchange=Exchange("amq.rabbitmq.trace", "topic", durable=True, passive=True),
                  routing_key="publish.#", durable=False)
    with app.connection_for_write() as conn:
        queue(conn.default_channel).declare()
    return queue.name


def published(app: Celery, queue: str) -> list[tuple[int, str]]:
    """``(body size in bytes, "exchange routing-keys")`` of every message the firehose copied."""
    sizes = []
    for m in read_queue(app, queue, limit=10_000):
        headers = m.headers or {}
        where = f"{headers.get('exchange_name') or '(default)'} {','.join(map(str, headers.get('routing_keys', [])))}"
        sizes.append((len(m.body if isinstance(m.body, bytes) else m.body.encode()), where))
    return sizes


def redis_sizes(client: redis_lib.Redis, keys: list[str]) -> dict[str, int]:
    return {key: int(client.strlen(key)) for key in keys if client.exists(key)}


def test_a_20mb_document_goes_through_steps_and_an_event_by_reference(
    app: Celery, settings: Settings, start_worker: Callable[..., Worker], tap: str, redis_client: redis_lib.Redis,
) -> None:
    start_worker("system", *CLAIMCHECK_AGENTS)
    started = time.monotonic()
    handle = big.start({"title": "big", "document": DOCUMENT}, app=app)
    outcome = handle.wait(timeout=150)
    assert outcome.status == "completed", outcome.reason
    output = handle.result()
    elapsed = time.monotonic() - started
    assert output["document"] == DOCUMENT.upper()  # the agents saw it whole, as did the client
    assert output["sha256"] == hashlib.sha256(DOCUMENT.upper().encode()).hexdigest()

    messages = published(app, tap)
    largest, routing_key = max(messages)
    events = handle.events()
    task_ids = sorted({e.task_id for e in events if e.task_id})
    stored = redis_sizes(redis_client, [f"celery-task-meta-{t}" for t in task_ids] + [f"celery-task-meta-{handle.id}"])
    print(f"\n[claimcheck] {len(DOCUMENT):,} bytes through the pipeline in {elapsed:.1f} s "
          f"({settings.eventstore_url.split(':')[0]}): {len(messages)} broker messages, the largest {largest:,} bytes "
          f"(to {routing_key}); {len(stored)} Redis results, the largest {max(stored.values()):,} bytes")
    ns = settings.namespace
    seen = {where for _, where in messages}  # the task messages (default exchange) and the events were all seen
    for where in (f"(default) {ns}.system", f"(default) {ns}.ccshout", f"(default) {ns}.cccheck",
                  f"(default) {ns}.ccfinal", f"{ns}.events cc.document.checked", f"{ns}.events pipeline.completed"):
        assert where in seen, (where, seen)
    assert largest < BROKER_LIMIT
    assert max(stored.values()) < BROKER_LIMIT

    # The event log carries references where the messages did, and they verify, payloads included.
    types = {e.type for e in events}
    assert {"pipeline.started", "task.sent", "task.succeeded", "event.published", "pipeline.completed"} <= types
    assert max(len(json.dumps(e.payload)) for e in events) < BROKER_LIMIT
    completed = next(e for e in events if e.type == "pipeline.completed")
    assert is_ref(completed.payload["output"]["document"])
    sent = next(e for e in events if e.type == "task.sent" and e.payload["task"] == "agents.ccshout")
    assert refs_in(sent.payload["input"])
    # The advance hop travelled inside the first step's message (its chain): its run went by reference there.
    advance = next(e for e in events if e.type == "task.sent" and e.payload["task"] == "pipelines.cc-big.advance")
    assert is_ref(advance.payload["input"]["kwargs"]["run"]["document"])
    store = open_store(settings.eventstore_url, config=store_config(runtime_config(app)))
    try:
        assert store.get_payload(PayloadRef.model_validate(completed.payload["output"]["document"])) == DOCUMENT.upper()
        report = store.verify()
        assert report.ok and report.payloads_checked >= 2, report
    finally:
        store.close()


def _tamper(url: str, sql: str, digest: str) -> None:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.begin() as conn:
            conn.execute(text(sql), {"d": digest})
    finally:
        engine.dispose()


def _verify_cli(settings: Settings) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "relaybus.cli", "verify"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


TAMPERING = {
    "payload-altered": ("UPDATE payloads SET body = '\"forged\"' WHERE digest = :d", "no longer gives its digest"),
    "payload-missing": ("DELETE FROM payloads WHERE digest = :d", "it is not stored"),
}


def test_an_altered_or_a_missing_payload_is_dead_lettered_naming_it_and_verify_reports_it(
    app: Celery, settings: Settings, start_worker: Callable[..., Worker]
) -> None:
    store = open_store(settings.eventstore_url, config=store_config(runtime_config(app)))
    try:
        sent: dict[str, tuple[str, str]] = {}  # reason -> (task id, ref)
        for reason, (sql, _) in TAMPERING.items():
            document = f"a document over the inline limit, to be {reason} " * 3000  # ~150 KB: by reference
            result = shout.apply_async(kwargs={"title": reason, "document": document})
            record = wait_for(lambda r=result: [e for e in store.find(task_id=r.id) if e.type == "task.sent"], 10)[0]
            (ref,) = refs_in(record.payload["input"])
            _tamper(settings.eventstore_url, sql, ref.removeprefix("sha256:"))  # before any worker reads it
            sent[reason] = (result.id, ref)

        worker = start_worker("ccshout")
        dlq = f"{settings.namespace}.ccshout.dlq"
        letters: list[Any] = []
        wait_for(lambda: letters.extend(read_queue(app, dlq)) or len(letters) >= 2, 30, what=f"2 dead letters in {dlq}")
        by_task = {m.headers["id"]: m.headers for m in letters}
        for reason, (task_id, ref) in sent.items():
            headers = by_task[task_id]
            assert headers[REASON_HEADER] == reason
            message = headers[ERROR_MESSAGE_HEADER]
            assert ref in message and "'ccshout'" in message and task_id in message, message
            dead = [e for e in store.find(task_id=task_id) if e.type == "task.dead_lettered"]
            assert dead[0].payload["reason"] == reason and ref in dead[0].payload["error_message"]
            assert not [e for e in store.find(task_id=task_id) if e.type == "task.retried"]  # permanent: no retry

        # The worker keeps running: the next large document goes through.
        ok = shout.apply_async(kwargs={"title": "ok", "document": "fine " * 30_000})
        assert wait_for(lambda: [e for e in store.find(task_id=ok.id) if e.type == "task.succeeded"], 30)
        assert worker.proc.poll() is None

        verified = _verify_cli(settings)
        print(f"\n[claimcheck] relaybus verify (exit {verified.returncode}):\n{verified.stderr.strip()}")
        assert verified.returncode == 1, verified.stdout + verified.stderr
        for reason, (_, ref) in sent.items():
            assert f"PAYLOAD: payload {ref}" in verified.stderr and TAMPERING[reason][1] in verified.stderr
    finally:
        store.close()
