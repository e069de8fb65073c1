from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from celery import Celery
from sqlalchemy import create_engine, text

from relaybus.celery import topology_of
from relaybus.eventstore import migrations
from relaybus.settings import Settings
from tests.harness import Worker, delete_namespace, make_app, make_settings
from tests.integration.flower import Flower
from tests.services import require_postgres, require_rabbitmq, require_redis


@pytest.fixture
def broker_url() -> str:
    return require_rabbitmq()


@pytest.fixture
def redis_url() -> str:
    return require_redis()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis_lib.Redis]:
    client = redis_lib.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def settings(tmp_path: Path, broker_url: str, redis_url: str) -> Settings:
    return make_settings(tmp_path, broker_url, redis_url)


@pytest.fixture
def app(settings: Settings) -> Iterator[Celery]:
    app = make_app(settings)
    with app.connection_for_write() as conn:
        topology_of(app).declare(conn)  # as a deployment (or any worker's start) does
    yield app
    delete_namespace(app)
    app.close()


@pytest.fixture
def start_worker(settings: Settings, app: Celery, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(*agents: str, wait: bool = True, **kwargs: Any) -> Worker:
        worker = Worker(kwargs.pop("settings", settings), agents, tmp_path, **kwargs)
        started.append(worker)
        if wait:
            worker.wait_ready(app)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def eventstore_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An event log on each database: a SQLite file, then a PostgreSQL schema of its own (dropped after)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'events.sqlite'}"
        return
    url = require_postgres()
    schema = f"e2e_{uuid.uuid4().hex[:12]}"
    migrations.upgrade(url, schema=schema)
    yield f"{url}?options=-csearch_path%3D{schema}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture
def flower(settings: Settings, tmp_path: Path) -> Iterator[Flower]:
    """Flower on the test's settings (its module's ``settings`` fixture), stopped afterwards."""
    process = Flower(settings, tmp_path)
    try:
        yield process.wait_ready()
    finally:
        process.stop()
