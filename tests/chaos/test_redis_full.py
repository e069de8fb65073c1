"""Redis at its memory limit (``noeviction``): every pipeline ends, none hangs, and the workers live on.

The private Redis gets a ``maxmemory`` a little above what it holds once two workers have run a pipeline,
then more pipelines are started than fit. Redis starts refusing writes part of the way through. Every
pipeline must end within the deadline: completed, or failed with a reason that says
``result-backend-unavailable`` (a chord that could not count a member, a chord that could not be
started). Then the limit is lifted and new pipelines complete again: nothing is left broken.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from celery import states
from celery.app.task import Context
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError

from relaybus.tasks.agents.pipeline_models import ResearchRequest
from relaybus.tasks.pipelines.client import start
from relaybus.tasks.runtime.context import new_id
from relaybus.tasks.runtime.results import PAST_LIMIT_EXPIRES_S, REFUSED, ResultBackendUnavailable
from tests.chaos.services import PrivateRedis
from tests.chaos.system import ChaosSystem, Workflow, wait_for_ends, why
from tests.harness import make_app, make_settings

#: Room left above what Redis holds once the workers are warm: a few pipelines' worth.
HEADROOM_BYTES = 256 * 1024
PIPELINES = 40
DEADLINE_S = 150.0


@pytest.fixture
def two_workers(private_system: Callable[[int], ChaosSystem]) -> ChaosSystem:
    return private_system(2)


@pytest.fixture
def redis_client(redis_server: PrivateRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.config_set("maxmemory", 0)  # the private Redis serves the rest of the session
    client.flushall()


def start_pipelines(system: ChaosSystem, n: int, *, topics: int = 3) -> list[Workflow]:
    started = []
    for i in range(n):
        pipeline_id = new_id()
        request = ResearchRequest(request=f"Compare retries, sagas and chords for tenant {i}", max_topics=topics)
        start("research", request, correlation_id=pipeline_id, app=system.app)
        started.append(Workflow("pipeline", pipeline_id, "completed"))
    return started


def timelines(system: ChaosSystem, workflows: list[Workflow]) -> str:
    """What the event log holds of each pipeline that has not ended."""
    lines = []
    for w in workflows:
        events = list(system.store.by_correlation(w.id))
        if any(e.type in ("pipeline.completed", "pipeline.failed") for e in events):
            continue
        lines.append(f"pipeline {w.id}:")
        lines += [f"  {e.type} {e.agent} {e.task_id} {str(e.payload)[:160]}" for e in events]
    return "\n".join(lines)


def refused_writes(client: redis.Redis) -> int:
    stats = client.info("errorstats")
    return int(stats.get("errorstat_OOM", {}).get("count", 0))


def test_pipelines_end_when_redis_refuses_writes_and_complete_once_it_has_room(
    two_workers: ChaosSystem, redis_client: redis.Redis
) -> None:
    system = two_workers
    warm = start_pipelines(system, 2)
    assert set(wait_for_ends(system, warm, DEADLINE_S).values()) == {"completed"}
    limit = int(redis_client.info("memory")["used_memory"]) + HEADROOM_BYTES
    redis_client.config_set("maxmemory-policy", "noeviction")
    redis_client.config_set("maxmemory", limit)

    began = time.monotonic()
    workflows = start_pipelines(system, PIPELINES)
    try:
        ended = wait_for_ends(system, workflows, DEADLINE_S)
    except AssertionError as hung:
        raise AssertionError(f"{str(hung)[:400]}\n{timelines(system, workflows)}") from None
    took = time.monotonic() - began

    reasons = {w.id: why(system, w) for w in workflows if ended[w.id] == "failed"}
    wrong = {pid: reason for pid, reason in reasons.items() if REFUSED not in reason}
    print(
        f"\nRedis limit {limit:,} B: {dict(Counter(ended.values()))} in {took:.0f}s, "
        f"{refused_writes(redis_client)} writes refused; reasons: {Counter(reasons.values()).most_common(3)}"
    )
    assert refused_writes(redis_client) > 0, "Redis never refused a write: the test did not test anything"
    assert reasons, "no pipeline failed, although Redis refused writes"
    assert not wrong, f"failed without saying the result backend refused writes: {wrong}"
    dead = [w.name for w in system.workers if w.proc.poll() is not None]
    assert not dead, f"workers died: {dead}\n{system.logs()}"

    redis_client.config_set("maxmemory", 0)
    after = start_pipelines(system, 3)
    assert set(wait_for_ends(system, after, DEADLINE_S).values()) == {"completed"}


def test_a_refused_write_is_answered_at_once_not_retried_for_two_minutes(
    redis_server: PrivateRedis, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """``result_backend_always_retry`` retries connection errors for about two minutes; a full Redis is not
    one. A task's own state is skipped, a chord that cannot be sized fails its starter, and an outcome
    (stored by id alone: someone waits on it) is written past the limit, for an hour."""
    app = make_app(make_settings(tmp_path, "amqp://guest:guest@127.0.0.1:1//", redis_server.url))
    backend = app.backend
    assert app.conf.result_backend_always_retry
    assert not backend.exception_safe_to_retry(OutOfMemoryError("command not allowed when used memory"))
    assert backend.exception_safe_to_retry(RedisConnectionError("Connection refused"))
    redis_client.config_set("maxmemory", 1)
    began = time.monotonic()
    try:
        backend.store_result("a-step", {"n": 1}, states.SUCCESS, request=Context(id="a-step"))
        backend.set(b"relaybus-done-a-step", "1")
        with pytest.raises(ResultBackendUnavailable, match=f"^{REFUSED}: "):
            backend.set_chord_size("a-chord", 2)
        backend.store_result("a-pipeline", {"status": "failed"}, states.SUCCESS)
    finally:
        redis_client.config_set("maxmemory", 0)
        app.close()
    assert time.monotonic() - began < 5, "a refused write was retried"
    assert redis_client.get(backend.get_key_for_task("a-step")) is None
    assert 0 < redis_client.ttl(backend.get_key_for_task("a-pipeline")) <= PAST_LIMIT_EXPIRES_S
