"""Deadlines hold without beat: workers that consume the system queue send the sweeps themselves.

Real RabbitMQ, Redis and two worker processes (both consume the system queue), no beat, no CLI sweep: a
pipeline that stops making progress is ended ``timed_out`` all the same, and the lease in Redis lets one
worker send each sweep per interval. The pipelines (``tests.deadline_pipelines``) have a 2 s deadline.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaybus.eventstore import open_store
from relaybus.tasks.pipelines.client import start
from relaybus.tasks.pipelines.deadline import SWEEP_TASK
from tests.harness import wait_for
from tests.integration.system import TEST_MODULES, System, running_system, system_settings
from tests.services import require_rabbitmq, require_redis

pytestmark = pytest.mark.integration

INTERVAL_S = 1.0


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    broker, redis = require_rabbitmq(), require_redis()
    tmp: Path = tmp_path_factory.mktemp("sweeps")
    settings = system_settings(tmp, broker, redis, extra_modules=(*TEST_MODULES, "tests.deadline_pipelines"),
                               worker_sweeps=True, workflow_sweep_interval_s=INTERVAL_S)
    with running_system(settings, tmp, [(("system", "probe"), 1), (("system", "probe"), 1)]) as running:
        yield running


def sweeps_sent(system: System) -> int:
    """How many workflow sweeps the workers have sent (their ``task.sent`` records)."""
    store = open_store(system.settings.eventstore_url)
    try:
        return sum(1 for e in store.read_all() if e.type == "task.sent" and e.payload.get("task") == SWEEP_TASK)
    finally:
        store.close()


def test_a_stalled_pipeline_is_timed_out_with_no_beat_and_one_worker_sends_each_sweep(system):
    stalled = start("deadline-stalls", {"key": f"sweeps:{uuid.uuid4().hex}"}, app=system.app)
    outcome = stalled.wait(60)  # nobody ran `relaybus sweep` and no beat runs
    assert outcome.status == "timed_out", outcome
    assert outcome.reason.startswith("no progress for 2 s"), outcome.reason

    # Two workers each try every second; the lease lets one of them send per interval.
    first = sweeps_sent(system)
    began = time.monotonic()
    wait_for(lambda: sweeps_sent(system) >= first + 6, 30, 0.2, "six more sweeps")
    sent, elapsed = sweeps_sent(system) - first, time.monotonic() - began
    assert sent <= elapsed / INTERVAL_S + 2, f"{sent} sweeps sent in {elapsed:.1f} s: the lease did not hold"
