"""What a finished pipeline leaves in Redis: bytes and keys per pipeline, and how long they stay.

N reference pipelines run to their end on a private Redis (flushed first) with one worker; then every key
is read back: its kind (from its name), ``MEMORY USAGE`` and TTL. The figures are printed (``-s``) and
the README's "Sizing Redis" quotes them. What the test holds: nothing a finished pipeline leaves is
kept longer than :data:`~relaybus.tasks.runtime.results.TASK_RESULT_EXPIRES_S` (an hour) except its outcome
(which a client blocks on) and its done-markers (a late redelivery must still find them); a chord keeps
only its registration and Celery's done-marker after its join, and those expire too.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import redis

from relaybus.tasks.agents.pipeline_models import ResearchRequest
from relaybus.tasks.pipelines.client import start
from relaybus.tasks.runtime.context import new_id
from relaybus.tasks.runtime.results import TASK_RESULT_EXPIRES_S
from tests.chaos.services import PrivateRedis
from tests.chaos.system import ChaosSystem, Workflow, wait_for_ends

PIPELINES = 30
#: Key kinds by name; chord keys end with their suffix (``.j`` results, ``.s`` size, ``.c`` claim...).
KINDS = (
    ("chord", re.compile(rb"^chord-unlock-.*|^celery-taskset-meta-.*\.[a-z]$")),
    ("group", re.compile(rb"^celery-taskset-meta-")),
    ("done-marker", re.compile(rb"^relaybus-done-")),
    ("task result", re.compile(rb"^celery-task-meta-")),
)


@dataclass
class Usage:
    """What ``n`` finished pipelines left in Redis."""

    n: int
    used_memory_delta: int
    dataset_delta: int
    keys: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)
    ttl_max: dict[str, int] = field(default_factory=dict)

    def per_pipeline(self) -> str:
        total_keys, total_bytes = sum(self.keys.values()), sum(self.bytes.values())
        lines = [
            f"{self.n} pipelines, per pipeline: MEMORY USAGE {total_bytes / self.n:,.0f} B in "
            f"{total_keys / self.n:.1f} keys; INFO used_memory_dataset +{self.dataset_delta / self.n:,.0f} B "
            f"(used_memory +{self.used_memory_delta / self.n:,.0f} B, with clients' buffers and scripts)"
        ]
        for kind in sorted(self.keys):
            lines.append(
                f"  {kind:<12} {self.keys[kind] / self.n:5.1f} keys {self.bytes[kind] / self.n:8,.0f} B"
                f"  longest TTL {self.ttl_max[kind]} s"
            )
        return "\n".join(lines)

    def long_lived(self, longer_than_s: int) -> dict[str, int]:
        """Kinds with a key that stays longer than ``longer_than_s`` (or forever: TTL -1)."""
        return {k: t for k, t in self.ttl_max.items() if t == -1 or t > longer_than_s}


def kind_of(key: bytes, pipeline_ids: set[bytes]) -> str:
    if key.removeprefix(b"celery-task-meta-") in pipeline_ids:
        return "outcome"
    for kind, pattern in KINDS:
        if pattern.match(key):
            return kind
    return "other"


def memory(client: redis.Redis) -> tuple[int, int]:
    info = client.info("memory")
    return int(info["used_memory"]), int(info["used_memory_dataset"])


def usage(client: redis.Redis, n: int, baseline: tuple[int, int], pipeline_ids: set[bytes]) -> Usage:
    used, dataset = memory(client)
    found = Usage(n, used - baseline[0], dataset - baseline[1])
    for key in client.scan_iter(count=1000):
        kind = kind_of(key, pipeline_ids)
        found.keys[kind] += 1
        found.bytes[kind] += int(client.memory_usage(key, samples=0) or 0)
        found.ttl_max[kind] = max(found.ttl_max.get(kind, -2), int(client.ttl(key)))
    return found


@pytest.fixture
def one_worker(private_system: Callable[[int], ChaosSystem]) -> ChaosSystem:
    return private_system(1)


def run_pipelines(system: ChaosSystem, n: int, deadline_s: float = 240) -> list[Workflow]:
    started = []
    for i in range(n):
        pipeline_id = new_id()
        request = ResearchRequest(request=f"Compare retries, sagas and chords for tenant {i}", max_topics=3)
        start("research", request, correlation_id=pipeline_id, app=system.app)
        started.append(Workflow("pipeline", pipeline_id, "completed"))
    ended = wait_for_ends(system, started, deadline_s)
    assert set(ended.values()) == {"completed"}, ended
    return started


def expire_now(client: redis.Redis, within_s: int) -> int:
    """Delete every key that expires within ``within_s``, as that much time would; how many there were."""
    doomed = [key for key in client.scan_iter(count=1000) if 0 <= int(client.ttl(key)) <= within_s]
    for chunk in range(0, len(doomed), 500):
        client.delete(*doomed[chunk : chunk + 500])
    return len(doomed)


def test_a_finished_pipeline_keeps_only_its_outcome_and_done_markers_for_long(
    one_worker: ChaosSystem, redis_server: PrivateRedis
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    baseline = memory(client)
    workflows = run_pipelines(one_worker, PIPELINES)
    one_worker.wait_idle()
    time.sleep(1.0)  # the last task's result is stored just after its outcome event is recorded
    ids = {w.id.encode() for w in workflows}
    ended = usage(client, PIPELINES, baseline, ids)
    expire_now(client, TASK_RESULT_EXPIRES_S)
    later = usage(client, PIPELINES, baseline, ids)
    print(f"\nRedis as {PIPELINES} pipelines end:\n{ended.per_pipeline()}")
    print(f"an hour later (the keys expiring within {TASK_RESULT_EXPIRES_S}s deleted):\n{later.per_pipeline()}")

    assert ended.keys["chord"] <= 2 * PIPELINES, f"chord bookkeeping left after the join: {ended.per_pipeline()}"
    long_lived = ended.long_lived(TASK_RESULT_EXPIRES_S)
    assert set(long_lived) <= {"outcome", "done-marker"}, f"kept longer than an hour: {long_lived}"
    assert set(later.keys) <= {"outcome", "done-marker"}, later.per_pipeline()
