"""Secrets planted in a workflow reach no sink in clear: the one redaction (relaybus.eventstore.redaction) at work.

Real RabbitMQ, Redis and PostgreSQL, a real prefork worker and a real Flower. Five secrets:

* ``input``: an input field under a sensitive key (``api_key``);
* ``output``: a nested output field (``account.credentials.token``);
* ``exception``: the message of the error a call fails with (``password=…``), which dead-letters it;
* ``prompt``: an ``sk-…`` key in free text the agent puts in its LLM prompt (the offline provider echoes it);
* ``db-password``: the event store URL's password (``celery inspect conf``, Flower's worker Config tab).

Every sink is read whole and searched, case-insensitively: the event log (every table of its schema), the
dead-letter queue's headers and body, every Redis key of the result backend's database, the worker's log,
Flower's API and ``inspect conf``. Where cleartext stays, by design: the message in flight (the task needs
its real input) and, for the same reason, the dead-lettered copy of a call's input (``dlq requeue`` runs it
again). The table is printed (``pytest -rA`` shows it).
"""

from __future__ import annotations

import hashlib
import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from celery import Celery, signals
from sqlalchemy import create_engine, text

from relaybus.dlq import peek
from relaybus.eventstore import migrations
from relaybus.settings import Settings
from relaybus.tasks.runtime.redacting import REPR_MAX_CHARS
from tests.harness import TEST_AGENTS, make_settings, read_queue, wait_for
from tests.integration.flower import Flower
from tests.services import require_postgres

pytestmark = pytest.mark.integration

MASK = "[REDACTED]"
RESULTS_DB = 11  # a Redis database of this test's own: every key in it is read
IN_CLEAR_BY_DESIGN = {("in-flight message body", "input"), ("in-flight message body", "prompt"),
                      ("dlq body", "input")}


@pytest.fixture
def secrets() -> dict[str, str]:
    tag = uuid.uuid4().hex[:12]
    planted = f"in-{tag}-Key"
    return {
        "input": planted,
        "output": planted[::-1],  # the agent returns it reversed, nested in its output
        "exception": hashlib.sha256(planted.encode()).hexdigest()[:24],  # the agent's error quotes it
        "prompt": f"sk-prompt{tag}{uuid.uuid4().hex[:8]}",
        "db-password": f"pgpw{tag}",
    }


@pytest.fixture
def eventstore_url(secrets: dict[str, str]) -> Iterator[str]:
    """A PostgreSQL schema of its own, reached with a password in its URL (the server trusts local users, so
    any password connects: the test needs one in the configuration, not a check of it)."""
    url = require_postgres()
    schema = f"sinks_{uuid.uuid4().hex[:12]}"
    migrations.upgrade(url, schema=schema)
    with_password = url.replace("://postgres@", f"://postgres:{secrets['db-password']}@", 1)
    assert with_password != url, f"expected a postgres user in {url}"
    yield f"{with_password}?options=-csearch_path%3D{schema}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture(params=[False, True], ids=["text-logs", "json-logs"])
def log_json(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def payload_inline_max_bytes() -> int:
    return int(Settings.model_fields["payload_inline_max_bytes"].default)


@pytest.fixture
def settings(
    tmp_path: Path, broker_url: str, redis_url: str, eventstore_url: str, log_json: bool, payload_inline_max_bytes: int
) -> Settings:
    results = f"{redis_url.rsplit('/', 1)[0]}/{RESULTS_DB}"
    return make_settings(tmp_path, broker_url, results, eventstore_url=eventstore_url,
                         extra_modules=("tests.agents", "tests.secret_agents"),
                         extra_agents=(*TEST_AGENTS, "vault"), log_json=log_json,
                         payload_inline_max_bytes=payload_inline_max_bytes)


@pytest.fixture
def published() -> Iterator[list[dict[str, Any]]]:
    """Every task message this process publishes, as it went to the broker (headers and body)."""
    seen: list[dict[str, Any]] = []

    def keep(body: Any = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
        seen.append({"headers": dict(headers or {}), "body": json.dumps(body, default=str)})

    signals.after_task_publish.connect(keep, weak=False, dispatch_uid="test.secret_sinks")
    yield seen
    signals.after_task_publish.disconnect(dispatch_uid="test.secret_sinks")


def event_log_text(url: str) -> str:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            tables = conn.execute(text("SELECT table_name FROM information_schema.tables "
                                       "WHERE table_schema = current_schema()")).scalars().all()
            assert "events" in tables, tables
            rows = [str(tuple(row)) for table in tables for row in conn.execute(text(f'SELECT * FROM "{table}"'))]
    finally:
        engine.dispose()
    return "\n".join(rows)


def redis_text(client: redis_lib.Redis) -> str:
    """Every key of the database and its whole value, whatever its type."""
    out: list[str] = []
    for key in client.scan_iter(count=500):
        kind = client.type(key).decode()
        value: Any
        if kind == "string":
            value = client.get(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "stream":
            value = client.xrange(key)
        else:
            value = kind
        out.append(f"{key!r}: {value!r}")
    return "\n".join(out)


def table(found: dict[str, dict[str, bool]], secrets: dict[str, str]) -> str:
    names = list(secrets)
    width = max(len(s) for s in found) + 2
    lines = ["sink".ljust(width) + " | ".join(n.ljust(11) for n in names)]
    for sink, row in found.items():
        cells = []
        for name in names:
            cell = ("CLEAR" + ("*" if (sink, name) in IN_CLEAR_BY_DESIGN else "!")) if row[name] else "masked"
            cells.append(cell.ljust(11))
        lines.append(sink.ljust(width) + " | ".join(cells))
    lines.append("CLEAR* = cleartext by design (the task's own input, in its message); CLEAR! = a leak")
    return "\n".join(lines)


def test_secrets_in_input_output_error_and_prompt_reach_no_sink_in_clear(
    app: Celery, start_worker: Any, flower: Flower, settings: Settings, secrets: dict[str, str],
    published: list[dict[str, Any]],
) -> None:
    worker = start_worker("vault")
    hostname = f"{worker.name}@{socket.gethostname()}"
    wait_for(lambda: flower.get("/api/workers", status=1).get(hostname), 60, 0.5, f"Flower to see {hostname}")

    vault = app.tasks["agents.vault"]
    call = {"api_key": secrets["input"], "topic": f"The service key is {secrets['prompt']} for the billing API"}
    ok = vault.apply_async(kwargs=call)
    by_name = app.send_task("agents.vault", kwargs=call)  # a call by name: no AgentTask.apply_async on the way
    failing = vault.apply_async(kwargs={"api_key": secrets["input"], "topic": "nothing", "fail": True})

    # The agent received the real key (its output says how long it was), and the caller reads a usable result.
    for result in (ok, by_name):
        output = result.get(timeout=60)
        assert output["key_length"] == len(secrets["input"])
        assert output["account"] == {"owner": "ops", "credentials": MASK}
        assert output["summary"].startswith("summariser:") and MASK in output["summary"]
    dlq = f"{settings.namespace}.vault.dlq"
    shown = wait_for(lambda: peek(app, ["vault"]), 60, 0.2, f"the failing call in {dlq}")  # relaybus dlq list/show
    dead = read_queue(app, dlq)
    assert len(dead) == 1 and dead[0].headers["x_dead_letter_reason"] == "permanent-error"
    assert "password=[REDACTED]" in dead[0].headers["x_error_message"]

    ids = {ok.id: "SUCCESS", by_name.id: "SUCCESS", failing.id: "FAILURE"}

    def flower_saw_the_ends() -> dict[str, Any]:
        tasks: dict[str, Any] = flower.get("/api/tasks", limit=1000)
        done = all(tasks.get(tid, {}).get("state") == state for tid, state in ids.items())
        return tasks if done else {}

    flower_tasks = wait_for(flower_saw_the_ends, 60, 0.5, "Flower to see the three calls end")
    flower_infos = [flower.get(f"/api/task/info/{tid}") for tid in ids]
    assert flower_infos[2]["exception"] and "password=[REDACTED]" in flower_infos[2]["exception"]
    flower_workers = wait_for(lambda: flower.get("/api/workers", refresh=1).get(hostname), 60, 0.5, "worker conf")
    assert flower_workers.get("conf"), "Flower's worker Config tab is empty: nothing was checked"
    conf = wait_for(lambda: app.control.inspect(destination=[hostname], timeout=5).conf(), 30, 0.5, "inspect conf")
    assert "relaybus_runtime" in conf[hostname]
    worker.stop()  # its log is complete

    ours = [m for m in published if m["headers"].get("id") in ids]
    assert len(ours) == 3
    sinks = {
        "in-flight message body": "\n".join(m["body"] for m in ours),
        "argsrepr/kwargsrepr": "\n".join(f"{m['headers']['argsrepr']} {m['headers']['kwargsrepr']}" for m in ours),
        "event log": event_log_text(settings.eventstore_url),
        "dlq headers": json.dumps(dead[0].headers, default=str),
        "dlq body": dead[0].body.decode() if isinstance(dead[0].body, bytes) else str(dead[0].body),
        "relaybus dlq show": json.dumps([letter.model_dump() for letter in shown]),
        "redis": redis_text(redis_lib.Redis.from_url(settings.result_backend)),
        "worker log": worker.log(),
        "flower /api/tasks": json.dumps({tid: flower_tasks[tid] for tid in ids}),
        "flower /api/task/info": json.dumps(flower_infos),
        "flower workers conf": json.dumps(flower_workers),
        "inspect conf": json.dumps(conf),
    }
    # Each sink was really read: the checks below would pass on empty text.
    assert "task.succeeded" in sinks["event log"] and "llm.completed" in sinks["event log"]
    assert "celery-task-meta-" + ok.id in sinks["redis"]
    assert "agents.vault" in sinks["worker log"] and "succeeded in" in sinks["worker log"]
    assert "password=[REDACTED]" in sinks["worker log"]  # the failure was logged, its message masked
    assert "relay" in sinks["inspect conf"] or "eventstore_url" in sinks["inspect conf"]

    found = {sink: {name: secret.lower() in body.lower() for name, secret in secrets.items()}
             for sink, body in sinks.items()}
    print("\nsink by secret (run with -rA to see this table)\n" + table(found, secrets))
    leaks = [(sink, name) for sink, row in found.items() for name, present in row.items()
             if present and (sink, name) not in IN_CLEAR_BY_DESIGN]
    assert not leaks, f"secrets in clear: {leaks}\n{table(found, secrets)}"
    # The message in flight must carry the real input, or the task could not work.
    assert found["in-flight message body"]["input"] and found["in-flight message body"]["prompt"]
    assert found["dlq body"]["input"]  # `dlq requeue` runs the call again with its real input


@pytest.mark.parametrize("log_json", [False])  # the logs' format is not what this one is about
@pytest.mark.parametrize("payload_inline_max_bytes", [0, 32 * 1024], ids=["inline", "by-reference"])
def test_an_input_of_200_kb_is_sent_with_bounded_reprs_and_runs(
    app: Celery, start_worker: Any, published: list[dict[str, Any]], payload_inline_max_bytes: int
) -> None:
    start_worker("probe")
    label = "x" * 200_000  # under max_payload_bytes (256 KB); its whole repr in a header failed with FrameError 501
    key = f"test:{uuid.uuid4().hex}"
    sent = [app.tasks["agents.probe"].apply_async(kwargs={"key": key, "label": label}),
            app.send_task("agents.probe", kwargs={"key": key, "label": label})]
    for result in sent:
        assert result.get(timeout=60)["label"] == label
    headers = [m["headers"] for m in published if m["headers"].get("id") in {r.id for r in sent}]
    assert len(headers) == 2
    for h in headers:
        assert len(h["kwargsrepr"]) < REPR_MAX_CHARS + 32, h["kwargsrepr"]
        if payload_inline_max_bytes:  # the label travels by reference (README, Large payloads)
            assert "'label': {'$ref': 'sha256:" in h["kwargsrepr"], h["kwargsrepr"]
        else:
            assert h["kwargsrepr"].endswith(" bytes)"), h["kwargsrepr"]
