"""Real worker processes and per-test broker namespaces for the integration tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from celery import Celery
from kombu import Connection

from relaybus.celery import create_app, topology_of
from relaybus.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
TEST_AGENTS = ("probe", "flaky")
T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> T:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition!r} (last value: {last!r})")


def make_settings(tmp_path: Path, broker_url: str, redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "broker_url": broker_url,
        "result_backend": redis_url,
        "eventstore_url": f"sqlite:///{tmp_path / 'events.sqlite'}",
        "namespace": f"t{uuid.uuid4().hex[:10]}",
        "retry_backoff_s": 0.05,
        "retry_backoff_max_s": 1.0,
        "extra_modules": ("tests.agents",),
        "extra_agents": TEST_AGENTS,
        # Sweeps run when a test runs them (tests/integration/test_worker_sweeps.py: sent by the workers).
        "worker_sweeps": False,
    }
    values.update(overrides)
    return Settings(**values)


def make_app(settings: Settings) -> Celery:
    app = create_app(settings)
    app.loader.import_default_modules()
    app.set_current()
    return app


class Worker:
    """A real ``celery worker`` process (prefork pool) consuming some agent queues."""

    def __init__(self, settings: Settings, agents: tuple[str, ...], log_dir: Path, *,
                 concurrency: int = 1, name: str | None = None, pool: str = "prefork",
                 extra_env: dict[str, str] | None = None, mingle_and_gossip: bool = False) -> None:
        self.settings = settings
        self.agents = agents
        self.name = name or f"w{uuid.uuid4().hex[:6]}"
        self.queues = [f"{settings.namespace}.{a}" for a in agents]
        self.log_path = log_dir / f"{self.name}.log"
        env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT), **(extra_env or {})}
        cmd = [sys.executable, "-m", "celery", "-A", "relaybus", "worker", "-Q", ",".join(self.queues),
               "-c", str(concurrency), "-P", pool, "-n", f"{self.name}@%h", "-l", "INFO"]
        if not mingle_and_gossip:
            cmd += ["--without-mingle", "--without-gossip"]
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, app: Celery, timeout: float = 60.0) -> Worker:
        def consuming() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited early:\n{self.log()[-4000:]}")
            return all(consumer_count(app, q) > 0 for q in self.queues)

        wait_for(consuming, timeout, 0.1, f"worker {self.name} to consume {self.queues}")
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group: the main process and its pool children."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
            except ProcessLookupError:
                pass
        self._log.close()


def consumer_count(app: Celery, queue: str) -> int:
    with app.connection_for_read() as conn:
        try:
            _, _, consumers = conn.default_channel.queue_declare(queue=queue, passive=True)
        except Exception:
            return 0
        return int(consumers)


def queue_depth(app: Celery, queue: str) -> int:
    with app.connection_for_read() as conn:
        try:
            _, messages, _ = conn.default_channel.queue_declare(queue=queue, passive=True)
        except Exception:
            return -1
        return int(messages)


def read_queue(app: Celery, queue: str, limit: int = 1000) -> list[Any]:
    """Take up to ``limit`` messages off ``queue`` (acknowledged), as kombu messages."""
    out: list[Any] = []
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        while len(out) < limit:
            raw = channel.basic_get(queue, no_ack=False)
            if raw is None:
                break
            message = channel.message_to_python(raw)
            message.ack()
            out.append(message)
    return out


def read_letters_of(app: Celery, queue: str, task_ids: Iterable[str], timeout: float = 60.0) -> list[Any]:
    """Every message taken off ``queue`` (a DLQ) until one of each of ``task_ids`` is among them. A dead letter's
    record is committed before the letter is published (no ack without the record): a test that waited on the
    record must still wait for the letter."""
    wanted = set(task_ids)
    taken: list[Any] = []

    def all_in() -> bool:
        taken.extend(read_queue(app, queue))
        return wanted <= {m.headers.get("id") for m in taken}

    wait_for(all_in, timeout, 0.1, f"the dead letters of {sorted(wanted)} in {queue}")
    return taken


def delete_namespace(app: Celery) -> None:
    """Delete the test's queues and exchanges, its subscribers' event queues among them."""
    with app.connection_for_write() as conn:
        topology_of(app).delete(conn)


def redis_list(redis_client: Any, key: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in redis_client.lrange(key, 0, -1)]


@contextmanager
def workers(*ws: Worker) -> Iterator[tuple[Worker, ...]]:
    try:
        yield ws
    finally:
        for w in ws:
            w.stop()


def raw_publish(app: Celery, queue: str, body: bytes | str, *, content_type: str, headers: dict[str, Any],
                content_encoding: str = "utf-8") -> None:
    with Connection(app.conf.broker_url) as conn:
        producer = conn.Producer()
        producer.publish(body, exchange=topology_of(app).namespace, routing_key=queue, headers=headers,
                         content_type=content_type, content_encoding=content_encoding, serializer=None,
                         delivery_mode=2)


def celery_headers(task: str, **extra: Any) -> dict[str, Any]:
    """Headers of a protocol-2 task message for ``task``, as Celery would write them, for raw publishing."""
    task_id = str(uuid.uuid4())
    return {
        "lang": "py", "task": task, "id": task_id, "root_id": task_id, "parent_id": None, "group": None,
        "retries": 0, "eta": None, "expires": None, "timelimit": [None, None], "argsrepr": "", "kwargsrepr": "",
        "origin": "test", "ignore_result": False, **extra,
    }
