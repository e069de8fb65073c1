"""Group commit in a real prefork worker (tasks.runtime.recording.hostwriter), on SQLite and PostgreSQL:
the pool processes' records share transactions, every transition is still recorded, and a host writer
SIGKILLed mid-run loses nothing: the pool processes write their records themselves from then on."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter

import pytest

from relaybus.eventstore import EventStore, open_store
from relaybus.tasks.runtime.context import workflow_context
from tests.harness import Worker, make_settings, wait_for

pytestmark = pytest.mark.integration

RECORDS = ("task.sent", "task.received", "task.started", "task.succeeded")


@pytest.fixture
def settings(tmp_path, broker_url, redis_url, eventstore_url):  # overrides conftest's: one per database
    return make_settings(tmp_path, broker_url, redis_url, eventstore_url=eventstore_url, group_commit=True)


def host_writers(worker: Worker) -> list[int]:
    """The worker main process's children that are its host writer."""
    pid = worker.proc.pid
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        children = [int(p) for p in f.read().split()]
    found = []
    for child in children:
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if b"recording.writer_process" in f.read():
                    found.append(child)
        except OSError:
            continue
    return found


def check_every_transition(store: EventStore, correlation_id: str, task_ids: list[str]) -> list[str]:
    events = store.by_correlation(correlation_id)
    by_task: dict[str, Counter[str]] = {t: Counter() for t in task_ids}
    for e in events:
        if e.task_id in by_task:
            by_task[e.task_id][e.type] += 1
    missing = [f"{t}: {dict(c)}" for t, c in by_task.items() if any(c[r] != 1 for r in RECORDS)]
    return missing


def run_probes(app, n: int, sleep_s: float) -> tuple[str, list[str]]:
    """``n`` probe tasks of one workflow, run to their end: (its correlation id, their task ids).

    The tasks a worker holds in the first seconds all wait for one instant and finish together, so their
    records reach the writer at once (without it, tasks finishing one at a time on a busy machine may each
    find the writer idle and never share a transaction); the rest run after it, ``sleep_s`` each."""
    probe = app.tasks["agents.probe"]
    together = time.time() + 3.0
    with workflow_context() as correlation_id:
        results = [
            probe.apply_async(kwargs={"key": f"gc:{uuid.uuid4().hex}", "sleep_s": sleep_s, "until": together})
            for _ in range(n)
        ]
    assert all(r.get(timeout=120)["value"] == 1 for r in results)
    return correlation_id, [r.id for r in results]


def check_grouped_and_whole(url: str, correlation_id: str, task_ids: list[str]) -> bool:
    """Every task has its records, in order, and the chain holds; returns whether some transaction carried
    several tasks' records."""
    store = open_store(url)
    try:
        wait_for(lambda: not check_every_transition(store, correlation_id, task_ids), 30, 0.2, "every record")
        events = store.by_correlation(correlation_id)
        succeeded = [e for e in events if e.type == "task.succeeded"]
        for task in task_ids:  # a task's start is never committed after its end
            mine = [e.type for e in events if e.task_id == task and e.type != "task.sent"]
            assert mine == ["task.received", "task.started", "task.succeeded"], mine
        assert store.verify().ok
        # One transaction stamps one recorded_at on all it writes: tasks that finished together share one.
        return len(Counter(e.recorded_at for e in succeeded)) < len(succeeded)
    finally:
        store.close()


def assert_grouped(app, url: str, n: int, sleep_s: float, who: str, rounds: int = 3) -> None:
    """Run ``n`` probes (whole and in order every time) until some of their records share a transaction: tasks
    released at one instant finish together unless the scheduler spreads them (a loaded CI machine), so a
    round without sharing is run again, up to ``rounds`` times."""
    for _ in range(rounds):
        correlation_id, task_ids = run_probes(app, n, sleep_s)
        if check_grouped_and_whole(url, correlation_id, task_ids):
            return
    raise AssertionError(f"no two {who}' records shared a transaction in {rounds} rounds")


def test_the_pool_processes_records_share_transactions_and_every_transition_is_recorded(app, settings, start_worker):
    worker = start_worker("probe", concurrency=4)
    assert len(host_writers(worker)) == 1, "a prefork worker with recording starts one host writer"
    assert_grouped(app, settings.eventstore_url, 80, 0.02, "pool processes")


def test_a_host_writer_killed_mid_run_loses_no_record_and_the_worker_goes_on(app, settings, start_worker):
    worker = start_worker("probe", concurrency=3)
    [writer] = host_writers(worker)
    probe = app.tasks["agents.probe"]
    with workflow_context() as correlation_id:
        first = [probe.apply_async(kwargs={"key": f"gc:{uuid.uuid4().hex}", "sleep_s": 0.05}) for _ in range(30)]
        wait_for(lambda: sum(r.ready() for r in first) >= 5, 60, 0.02, "the first tasks")
        os.kill(writer, signal.SIGKILL)  # tasks are running and finishing meanwhile
        rest = [probe.apply_async(kwargs={"key": f"gc:{uuid.uuid4().hex}", "sleep_s": 0.01}) for _ in range(30)]
    for r in first + rest:
        assert r.get(timeout=120)["value"] == 1
    assert worker.proc.poll() is None, "the worker goes on without its host writer"
    assert "the host writer did not answer" in worker.log()

    store = open_store(settings.eventstore_url)
    try:
        task_ids = [r.id for r in first + rest]
        wait_for(lambda: not check_every_transition(store, correlation_id, task_ids), 30, 0.2, "every record")
        assert check_every_transition(store, correlation_id, task_ids) == []
        assert store.verify().ok
    finally:
        store.close()


def test_without_group_commit_no_host_writer_starts(app, settings, start_worker):
    worker = start_worker("probe", concurrency=2, settings=settings.model_copy(update={"group_commit": False}))
    assert host_writers(worker) == []
    assert app.tasks["agents.probe"].apply_async(kwargs={"key": "gc:off"}).get(timeout=60)["value"] == 1


def test_a_threads_pool_groups_its_tasks_records_in_its_own_process(app, settings, start_worker):
    worker = start_worker("probe", concurrency=8, pool="threads")
    assert host_writers(worker) == [], "threads share the worker's own process: no host writer"
    assert_grouped(app, settings.eventstore_url, 80, 0.05, "threads")
