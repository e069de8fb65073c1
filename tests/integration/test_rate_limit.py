"""Global LLM rate limits across worker processes (issue 18, part 2).

Two workers of two pool processes each (four processes, two main processes as on two hosts) call a local
OpenAI-compatible server under a limit of 4 requests per second; the server timestamps every request it gets.
The limit holds in every window the server saw, every task completes on its first attempt (deferrals use no
retry), urgent work gets the reserved share at once, and ``relaybus stats`` shows the waits. A pipeline whose
steps are deferred completes; a limiter whose Redis is away defers its calls until it is back, losing nothing.
"""

from __future__ import annotations

import os
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from celery import Celery

from relaybus.eventstore import EventStore, open_store
from relaybus.settings import Settings
from relaybus.tasks.agents.pipeline_models import ResearchRequest
from relaybus.tasks.llm import RateLimit
from relaybus.tasks.pipelines.client import start
from tests.fake_openai import FakeOpenAI, Reply, chat_completion, serving
from tests.harness import ROOT, delete_namespace, make_app, make_settings, wait_for
from tests.integration.system import running_system, system_settings

pytestmark = pytest.mark.timeout(120)

LIMIT = 4
PERIOD_S = 1.0
NORMAL_TASKS = 12


def most_in_any_window(times: list[float], period_s: float) -> int:
    """The most requests in any window ``[t, t + period_s)``: every maximal window starts at a request."""
    ordered = sorted(times)
    best, end = 0, 0
    for first, at in enumerate(ordered):
        while end < len(ordered) and ordered[end] < at + period_s:
            end += 1
        best = max(best, end - first)
    return best


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    yield from serving(Reply(body=chat_completion(text="ok", model="fake-model", usage=(9, 1))))


def arrivals_at(fake: FakeOpenAI) -> list[tuple[float, str]]:
    """When each chat completion reached the server (monotonic seconds), and the question it asked."""
    return [(r.arrived, r.body["messages"][-1]["content"]) for r in fake.received]


@pytest.fixture
def settings(tmp_path: Path, broker_url: str, redis_url: str, fake_openai: FakeOpenAI) -> Settings:
    return make_settings(
        tmp_path, broker_url, redis_url,
        extra_modules=("tests.limited_agents",), extra_agents=("asker",),
        llm_provider="openai", llm_base_url=fake_openai.base_url, llm_model="fake-model",
        llm_rate_limits={"openai/fake-model": RateLimit(requests=LIMIT, period_s=PERIOD_S)},
        llm_rate_limit_urgent_reserve=0.25,
    )


@contextmanager
def limited_agent(
    tmp_path: Path, broker_url: str, redis_url: str, fake: FakeOpenAI, start_worker: Any, agent: str,
    limit: RateLimit, **overrides: Any,
) -> Iterator[tuple[Celery, EventStore]]:
    """A namespace whose ``agent`` calls the fake server under ``limit``, one worker serving it; its app and log."""
    settings = make_settings(
        tmp_path, broker_url, redis_url,
        extra_modules=("tests.limited_agents",), extra_agents=(agent,),
        llm_provider="openai", llm_base_url=fake.base_url, llm_model="fake-model",
        llm_rate_limits={"openai/fake-model": limit}, **overrides,
    )
    app = make_app(settings)
    store = open_store(settings.eventstore_url)
    try:
        with app.connection_for_write() as conn:
            app.conf.relaybus_topology.declare(conn)
        start_worker(agent, settings=settings, wait=False).wait_ready(app)
        yield app, store
    finally:
        store.close()
        delete_namespace(app)
        app.close()


def test_four_workers_never_exceed_the_limit_in_any_window_and_stats_show_the_waits(
    settings: Settings, app: Celery, start_worker: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    first = start_worker("asker", concurrency=2, wait=False)
    second = start_worker("asker", concurrency=2, wait=False)
    first.wait_ready(app)
    second.wait_ready(app)
    task = app.tasks["agents.asker"]

    normal = [task.apply_async(kwargs={"text": f"normal {i}"}, priority="high") for i in range(NORMAL_TASKS)]
    store = open_store(settings.eventstore_url)
    try:
        # Once normal work is being deferred (it has used its 3 of 4), an urgent call still goes at once.
        wait_for(lambda: store.find(type="task.deferred", limit=1), 30, 0.05, "a first deferral")
        urgent = task.apply_async(kwargs={"text": "urgent"}, priority="urgent")
        results = [r.get(timeout=60) for r in [*normal, urgent]]

        assert all(r["attempt"] == 1 for r in results), "a deferral must not use a retry"
        arrivals = [at for at, _ in arrivals_at(fake_openai)]
        assert len(arrivals) == NORMAL_TASKS + 1, "each task called the provider once"
        observed = most_in_any_window(arrivals, PERIOD_S)
        ordered = sorted(arrivals)
        tightest = min(b - a for a, b in zip(ordered, ordered[LIMIT:], strict=False))
        print(f"\nlimit {LIMIT} per {PERIOD_S:g} s; observed max {observed} in any {PERIOD_S:g} s window over "
              f"{len(arrivals)} requests in {max(arrivals) - min(arrivals):.2f} s; request i+{LIMIT} came at least "
              f"{tightest:.3f} s after request i")
        assert observed <= LIMIT, [round(at - min(arrivals), 4) for at in sorted(arrivals)]

        deferred = store.find(type="task.deferred", limit=1000)
        assert deferred, "12 calls at 3 a second cannot all have gone at once"
        assert {e.task_id for e in deferred} <= {r.id for r in normal}, "the urgent call waited"
        for event in deferred:
            assert event.payload["reason"] == "rate-limited" and event.payload["limit"] == "requests"
            assert 0 <= event.payload["wait_s"] <= PERIOD_S * (NORMAL_TASKS / (LIMIT - 1) + 1)
            assert event.priority == 2
        started = store.find(type="task.started", agent="asker", limit=1000)
        assert len(started) == NORMAL_TASKS + 1 + len(deferred), "each deferral is followed by a run of its own"
        assert {e.priority for e in started if e.task_id != urgent.id} == {2}, "the deferred copies keep priority"
        succeeded = store.find(type="task.succeeded", agent="asker", limit=1000)
        assert sorted(e.task_id for e in succeeded) == sorted(r.id for r in [*normal, urgent])
    finally:
        store.close()

    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT)}
    shown = subprocess.run([sys.executable, "-m", "relaybus.cli", "stats"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    print(shown.stdout)
    waits_table = shown.stdout.split("llm usage")[0]  # the tables after it (tokens and cost) name the model too
    waits = [line for line in waits_table.splitlines() if "fake-model" in line]
    assert len(waits) == 1 and "asker" in waits[0] and "openai" in waits[0]
    assert f" {len(deferred)} " in waits[0], waits[0]


def test_a_pipeline_whose_agents_are_deferred_completes_with_its_chord_and_chain_intact(
    tmp_path: Path, broker_url: str, redis_url: str
) -> None:
    offline = {"offline/offline-echo": RateLimit(requests=2, period_s=PERIOD_S)}
    settings = system_settings(tmp_path, broker_url, redis_url, llm_rate_limits=offline)
    agents = ("system", "intake", "planner", "writer", "reviewer", "publisher", "auditor")
    with running_system(settings, tmp_path, [(agents, 2), (("researcher",), 2)]) as system:
        handle = start("research", ResearchRequest(request="Compare retries, sagas and chords for agents"),
                       app=system.app)
        try:
            handle.wait(60)
        except TimeoutError:
            raise AssertionError(f"pipeline {handle.id} hung\n{system.logs()}") from None
        assert handle.status() == "completed", system.logs()
        events = wait_for(lambda: (ev := handle.events()) and any(e.type == "pipeline.completed" for e in ev) and ev,
                          30, what="the outcome record")
        deferred = [e for e in events if e.type == "task.deferred"]
        assert deferred, "two calls a second for a pipeline of several LLM calls must defer some"
        succeeded = {e.task_id for e in events if e.type == "task.succeeded"}
        assert {e.task_id for e in deferred} <= succeeded, "every deferred step ran again and succeeded"
        assert all(e.attempt == 1 for e in events if e.type == "task.succeeded" and e.task_id in
                   {d.task_id for d in deferred})


class LateRedis:
    """A port where Redis is not, until :meth:`open` forwards it to the real one (a Redis that comes back)."""

    def __init__(self, target: tuple[str, int]) -> None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()  # nobody listens there: connections are refused
        self.target = target
        self.server: Any = None

    def open(self) -> None:
        target = self.target

        class Forward(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                upstream = socket.create_connection(target)

                def pump(source: socket.socket, sink: socket.socket) -> None:
                    try:
                        while data := source.recv(65536):
                            sink.sendall(data)
                    except OSError:
                        pass
                    finally:
                        sink.close()

                threading.Thread(target=pump, args=(upstream, self.request), daemon=True).start()
                pump(self.request, upstream)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Forward)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def test_an_unreachable_limiter_defers_without_losing_the_task_or_a_retry_until_it_is_back(
    tmp_path: Path, broker_url: str, redis_url: str, fake_openai: FakeOpenAI, start_worker: Any
) -> None:
    address = urlsplit(redis_url)
    late = LateRedis((address.hostname or "127.0.0.1", address.port or 6379))
    try:
        with limited_agent(tmp_path, broker_url, redis_url, fake_openai, start_worker, "asker",
                           RateLimit(requests=LIMIT, period_s=PERIOD_S),
                           llm_rate_limit_redis_url=f"redis://127.0.0.1:{late.port}/0") as (app, store):
            result = app.tasks["agents.asker"].apply_async(kwargs={"text": "while the limiter is away"})

            def unavailable() -> list[Any]:
                found = store.find(type="task.deferred", task_id=result.id, limit=100)
                return found if len(found) >= 2 else []

            deferred = wait_for(unavailable, 30, 0.05, "two deferrals while the limiter is away")
            assert all(e.payload["reason"] == "limiter-unavailable" for e in deferred)
            assert arrivals_at(fake_openai) == [], "closed: nothing reaches the provider unlimited"
            late.open()
            assert result.get(timeout=30)["attempt"] == 1, "waiting for the limiter used no retry"
            assert len(arrivals_at(fake_openai)) == 1
            assert store.find(type="task.retried", task_id=result.id, limit=10) == []
    finally:
        late.close()


def test_an_agent_making_more_calls_than_a_window_allows_finishes_without_asking_twice(
    tmp_path: Path, broker_url: str, redis_url: str, fake_openai: FakeOpenAI, start_worker: Any
) -> None:
    with limited_agent(tmp_path, broker_url, redis_url, fake_openai, start_worker, "chatty",
                       RateLimit(requests=2, period_s=PERIOD_S), llm_rate_limit_urgent_reserve=0.0) as (app, store):
        result = app.tasks["agents.chatty"].apply_async(kwargs={"steps": 5})
        assert len(result.get(timeout=30)["answers"]) == 5
        asked = sorted(text for _, text in arrivals_at(fake_openai))
        assert asked == [f"step {i}" for i in range(5)], "each call reached the provider once"
        assert len(store.find(type="task.deferred", task_id=result.id, limit=100)) >= 2
        assert len(store.find(type="llm.completed", task_id=result.id, limit=100)) == 5, "and was recorded once"


def test_a_429_from_the_provider_defers_the_task_for_its_retry_after_without_a_retry(
    tmp_path: Path, broker_url: str, redis_url: str, fake_openai: FakeOpenAI, start_worker: Any
) -> None:
    """The provider's own limit is lower than the configured one: its 429 pauses the model for every worker for
    what ``Retry-After`` says, the task is deferred (not retried) and completes on its first attempt."""
    fake_openai.script(Reply(status=429, body={"error": {"message": "Rate limit reached", "type": "requests"}},
                             headers={"Retry-After": "2"}))
    with limited_agent(tmp_path, broker_url, redis_url, fake_openai, start_worker, "asker",
                       RateLimit(requests=100, period_s=PERIOD_S)) as (app, store):
        result = app.tasks["agents.asker"].apply_async(kwargs={"text": "met a 429"})
        assert result.get(timeout=30)["attempt"] == 1, "waiting out a 429 used no retry"
        arrivals = [at for at, _ in arrivals_at(fake_openai)]
        assert len(arrivals) == 2, "the call was sent again once, after the pause"
        assert arrivals[1] - arrivals[0] >= 1.9, f"the second call went {arrivals[1] - arrivals[0]:.2f} s later"
        deferred = store.find(type="task.deferred", task_id=result.id, limit=10)
        assert [e.payload["limit"] for e in deferred] == ["provider"]
        assert store.find(type="task.retried", task_id=result.id, limit=10) == []
