"""What the claim check (tasks.runtime.claimcheck) costs: on every message, and for one large value.

* **Every message**: the size check of a typical task body (a 1 KB input and a chain of two signatures)
  with the claim check on (nothing is over the limit, nothing is stored) against off: what each publish pays.
* **A large value**: storing a 20 MB document (redact, canonical JSON, SHA-256, insert) and reading it back
  (select, SHA-256 check, JSON) in the event store, SQLite and PostgreSQL.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from relaybus.celery import create_app
from relaybus.eventstore import open_store
from relaybus.settings import Settings
from relaybus.tasks.runtime.claimcheck import offload_message, store_config
from relaybus.tasks.runtime.config import runtime_config

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _body() -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    step = {"task": "agents.writer", "args": [], "kwargs": {}, "options": {"task_id": "x"}, "subtask_type": None}
    advance = {"task": "pipelines.p.advance", "args": [], "kwargs": {"stage": 2, "run": {"request": "r" * 200}},
               "options": {"task_id": "y"}, "subtask_type": None}
    kwargs = {"request": "a question " * 50, "topics": [f"topic {i}" for i in range(20)], "max_topics": 3}
    return [], kwargs, {"callbacks": None, "errbacks": None, "chain": [advance, step], "chord": None}


def _per_message_us(app: Any, messages: int, rounds: int) -> float:
    body = _body()
    best = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(messages):
            offload_message(app, *body)
        best.append((time.perf_counter() - started) / messages * 1e6)
    return statistics.median(best)


def _large(url: str, schema: str | None, size_mb: int, rounds: int) -> dict[str, float]:
    config = runtime_config(create_app(Settings(broker_url="memory://", eventstore_url=url)))
    store = open_store(url, config=store_config(config), schema=schema, create=True)
    try:
        puts, gets = [], []
        for i in range(rounds):
            document = {"document": f"{i} " + "lorem ipsum dolor sit amet " * (size_mb * 1024 * 1024 // 27)}
            started = time.perf_counter()
            ref = store.put_payload(document)
            puts.append(time.perf_counter() - started)
            started = time.perf_counter()
            store.get_payload(ref)
            gets.append(time.perf_counter() - started)
        return {"put_ms": statistics.median(puts) * 1000, "get_ms": statistics.median(gets) * 1000,
                "mb": ref.size / 1e6}
    finally:
        store.close()


def run(messages: int = 20_000, rounds: int = 3, size_mb: int = 20, postgres: str | None = POSTGRES) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'events.sqlite'}"
        on = create_app(Settings(broker_url="memory://", eventstore_url=url))
        off = create_app(Settings(broker_url="memory://", eventstore_url=url, payload_inline_max_bytes=0))
        results: dict[str, Any] = {
            "messages": messages,
            "off_us": _per_message_us(off, messages, rounds),
            "on_us": _per_message_us(on, messages, rounds),
            "large": {"sqlite": _large(url, None, size_mb, rounds)},
        }
    if postgres is not None:
        schema = f"bench_cc_{uuid.uuid4().hex[:8]}"
        try:
            results["large"]["postgresql"] = _large(postgres, schema, size_mb, rounds)
        finally:
            engine = create_engine(postgres)
            with engine.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            engine.dispose()
    return results
