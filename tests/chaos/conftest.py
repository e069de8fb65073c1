"""Private services for the chaos tests, the short/long switch, and the figures printed at the end.

The private RabbitMQ, Redis and PostgreSQL live for the whole session (booting RabbitMQ takes
seconds) and are the only services these tests ever stop or restart. Each test gets its own broker
namespace, PostgreSQL schema and workers (:func:`system`), and leaves the services running, so the
next test starts from a healthy system whatever the previous one did to it.

``RELAYBUS_CHAOS=long`` switches every chaos test to its long version: larger workloads, more kills
and restarts, a longer timeout, and the ``slow`` marker (``-m "not slow"`` leaves them out).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from relaybus.eventstore import EventStore, open_store
from relaybus.settings import Settings
from relaybus.tasks.llm import RateLimit
from tests.chaos import figures
from tests.chaos.services import PrivatePostgres, PrivateRabbitMQ, PrivateRedis, ServiceUnavailable
from tests.chaos.system import ChaosSystem, chaos_settings, chaos_system, new_schema
from tests.fake_openai import FakeOpenAI, Reply, chat_completion, serving
from tests.harness import Worker, delete_namespace, make_app, make_settings
from tests.services import IN_CI

LONG = os.environ.get("RELAYBUS_CHAOS", "short").lower() == "long"


@dataclass(frozen=True)
class Scale:
    """How much each chaos test does."""

    name: str
    kill_pipelines: int
    kill_sagas: int
    kill_pace_s: float
    fault_pipelines: int
    fault_sagas: int
    broker_restarts: int
    deadline_s: float
    #: Workflows of the mixed edge workload (tests/chaos/test_recording_edges.py).
    edge_workflows: int


SHORT = Scale(
    "short",
    kill_pipelines=24,
    kill_sagas=8,
    kill_pace_s=0.4,
    fault_pipelines=24,
    fault_sagas=6,
    broker_restarts=1,
    deadline_s=150,
    edge_workflows=24,
)
LONG_SCALE = Scale(
    "long",
    kill_pipelines=300,
    kill_sagas=100,
    kill_pace_s=0.3,
    fault_pipelines=100,
    fault_sagas=30,
    broker_restarts=3,
    deadline_s=1200,
    edge_workflows=240,
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here not in item.path.parents:
            continue
        item.add_marker(pytest.mark.integration)
        if LONG:
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.timeout(3600))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not figures.RECORDED:
        return
    terminalreporter.section(f"chaos figures ({'long' if LONG else 'short'} run)")
    for f in figures.RECORDED:
        terminalreporter.write_line(f.line())
    terminalreporter.write_line(figures.totals())
    figures.write_report()


@pytest.fixture(scope="session")
def scale() -> Scale:
    return LONG_SCALE if LONG else SHORT


def _private(factory: Any) -> Any:
    try:
        return factory().start()
    except ServiceUnavailable as exc:
        if IN_CI:
            pytest.fail(f"cannot start a private service for the chaos tests: {exc} (CI=true)", pytrace=False)
        pytest.skip(f"cannot start a private service for the chaos tests: {exc}")


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[PrivateRabbitMQ]:
    service = _private(PrivateRabbitMQ)
    yield service
    service.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[PrivateRedis]:
    service = _private(PrivateRedis)
    yield service
    service.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PrivatePostgres]:
    service = _private(PrivatePostgres)
    yield service
    service.close()


@pytest.fixture
def private_system(
    rabbitmq: PrivateRabbitMQ, redis_server: PrivateRedis, postgres: PrivatePostgres, tmp_path: Path
) -> Iterator[Callable[[int], ChaosSystem]]:
    """Starts ``n`` workers serving every agent on the private services, with an event log of their own;
    stopped (and their namespace deleted) after the test."""
    with ExitStack() as stack:

        def start(workers: int, **overrides: Any) -> ChaosSystem:
            settings = chaos_settings(tmp_path, rabbitmq.url, redis_server.url, new_schema(postgres.url), **overrides)
            return stack.enter_context(chaos_system(settings, tmp_path, workers=workers))

        yield start


@pytest.fixture
def system(private_system: Callable[[int], ChaosSystem]) -> ChaosSystem:
    """Three workers serving every agent, on the private services."""
    return private_system(3)


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A local OpenAI-compatible server answering every call ``ok`` (9 + 1 tokens); it keeps what it received."""
    yield from serving(Reply(body=chat_completion(text="ok", model="fake-model", usage=(9, 1))))


@dataclass(frozen=True)
class RateLimited:
    """Workers whose ``asker`` agent (tests.limited_agents) calls :func:`fake_openai` under a rate limit."""

    settings: Settings
    app: Celery
    store: EventStore
    worker: Worker


#: The :func:`rate_limited` fixture's starter.
StartRateLimited = Callable[..., RateLimited]


@pytest.fixture
def rate_limited(
    rabbitmq: PrivateRabbitMQ, redis_server: PrivateRedis, postgres: PrivatePostgres, fake_openai: FakeOpenAI,
    tmp_path: Path,
) -> Iterator[StartRateLimited]:
    """Starts (and waits for) a worker serving ``queues`` on the private services, an event log of its own, the
    fake OpenAI server allowing one call per ``window_s`` (no urgent reserve); ``overrides`` go to the settings.
    Stopped, its store closed and its namespace deleted after the test."""
    with ExitStack() as stack:

        def start(
            *, window_s: float, queues: tuple[str, ...], concurrency: int, name: str,
            extra_modules: tuple[str, ...] = (), **overrides: Any,
        ) -> RateLimited:
            settings = make_settings(
                tmp_path, rabbitmq.url, redis_server.url, eventstore_url=new_schema(postgres.url),
                extra_modules=("tests.agents", "tests.limited_agents", *extra_modules), extra_agents=("probe", "asker"),
                llm_provider="openai", llm_base_url=fake_openai.base_url, llm_model="fake-model",
                llm_rate_limits={"openai/fake-model": RateLimit(requests=1, period_s=window_s)},
                llm_rate_limit_urgent_reserve=0.0, **overrides,
            )
            app = make_app(settings)
            stack.callback(app.close)
            stack.callback(delete_namespace, app)
            store = open_store(settings.eventstore_url)
            stack.callback(store.close)
            with app.connection_for_write() as conn:
                app.conf.relaybus_topology.declare(conn)
            worker = Worker(settings, queues, tmp_path, concurrency=concurrency, name=name)
            stack.callback(worker.stop)
            worker.wait_ready(app, timeout=90)
            return RateLimited(settings, app, store, worker)

        yield start
