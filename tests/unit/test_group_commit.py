"""Group commit (tasks.runtime.recording.group) on real databases: concurrent callers share transactions,
one caller's unstorable record fails that caller only, and an unavailable store is waited for until each
caller's own deadline."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from relaybus.eventstore import EventStore, EventStoreError, NewEvent, StoreUnavailable, migrations, open_store
from relaybus.tasks.runtime.recording.group import GroupCommitter
from tests.services import require_postgres


def _records(task: str, n: int = 3) -> list[NewEvent]:
    return [
        NewEvent(stream_id=f"task-{task}", correlation_id=f"wf-{task}", type=f"test.step{i}", task_id=task)
        for i in range(n)
    ]


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[EventStore]:
    store = open_store(f"sqlite:///{tmp_path / 'events.sqlite'}", create=True)
    yield store
    store.close()


@pytest.fixture
def postgres_store() -> Iterator[EventStore]:
    url = require_postgres()
    schema = f"gc_{uuid.uuid4().hex[:10]}"
    migrations.upgrade(url, schema=schema)
    store = open_store(f"{url}?options=-csearch_path%3D{schema}")
    yield store
    store.close()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_concurrent_callers_share_transactions_and_every_record_is_durable_when_commit_returns(
    db: str, request: pytest.FixtureRequest
) -> None:
    store: EventStore = request.getfixturevalue(f"{db}_store")
    committer = GroupCommitter(store)
    tasks = [uuid.uuid4().hex for _ in range(16 * 8)]
    errors: list[BaseException] = []
    durable_on_return: list[bool] = []

    def caller(mine: list[str]) -> None:
        try:
            for task in mine:
                committer.commit(_records(task), time.monotonic() + 30)
                # Durable when commit returns: another connection reads it at once.
                durable_on_return.append(len(store.find(task_id=task, limit=10)) == 3)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=caller, args=(tasks[i::16],)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert durable_on_return == [True] * len(tasks)
    assert committer.requests == len(tasks)
    assert committer.batches < len(tasks), "16 concurrent callers never shared a transaction"
    streams = {f"task-{t}" for t in tasks}
    stored = [e for e in store.read_all() if e.stream_id in streams]
    assert len(stored) == 3 * len(tasks)
    for task in tasks:  # each caller's records in its order, versions 1..3 of its stream
        mine = [e for e in stored if e.task_id == task]
        assert [e.type for e in mine] == ["test.step0", "test.step1", "test.step2"]
        assert [e.version for e in mine] == [1, 2, 3]
    assert store.verify().ok


def test_a_record_the_database_refuses_fails_its_own_caller_only(postgres_store: EventStore) -> None:
    committer = GroupCommitter(postgres_store)
    good, bad = uuid.uuid4().hex, uuid.uuid4().hex
    refused = [NewEvent(stream_id=f"task-{bad}", type="test.step0", task_id=bad, agent="nul\x00agent")]
    outcome: dict[str, BaseException | None] = {}
    barrier = threading.Barrier(2)

    def call(name: str, events: list[NewEvent]) -> None:
        barrier.wait()
        try:
            committer.commit(events, time.monotonic() + 30)
            outcome[name] = None
        except BaseException as error:
            outcome[name] = error

    threads = [
        threading.Thread(target=call, args=("good", _records(good))),
        threading.Thread(target=call, args=("bad", refused)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert outcome["good"] is None
    assert isinstance(outcome["bad"], EventStoreError), outcome["bad"]
    assert "0x00" in str(outcome["bad"]) or "NUL" in str(outcome["bad"]), outcome["bad"]
    assert len(postgres_store.find(task_id=good, limit=10)) == 3
    assert postgres_store.find(task_id=bad, limit=10) == []


def test_an_unavailable_store_is_waited_for_until_each_callers_own_deadline() -> None:
    # Nothing listens on port 1: every attempt fails as a database that is away does.
    store = open_store("postgresql+psycopg://postgres@127.0.0.1:1/test")
    committer = GroupCommitter(store)
    ended: dict[str, float] = {}
    began = time.monotonic()

    def call(name: str, wait_s: float) -> None:
        try:
            committer.commit(_records(name), began + wait_s)
        except StoreUnavailable:
            ended[name] = time.monotonic() - began

    threads = [threading.Thread(target=call, args=(n, w)) for n, w in (("short", 0.5), ("long", 2.5))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert set(ended) == {"short", "long"}, "each caller gets StoreUnavailable"
    assert 0.5 <= ended["short"] < 2.0, ended
    assert 2.5 <= ended["long"] < 6.0, ended
    store.close()


def test_the_host_writer_refuses_a_connection_from_another_user(tmp_path: Path) -> None:
    import os
    import subprocess

    from relaybus.tasks.runtime.config import RuntimeConfig
    from relaybus.tasks.runtime.recording.hostwriter import HostWriter, HostWriterClient, WriterGone

    if os.getuid() != 0:
        pytest.skip("needs root to connect as another user")  # CI runs as root here
    config = RuntimeConfig(eventstore_url=f"sqlite:///{tmp_path / 'events.sqlite'}")
    open_store(config.eventstore_url, create=True).close()
    writer = HostWriter(config)
    try:
        # As nobody (uid 65534): connected, then closed without an answer, and nothing written.
        probe = (
            "import socket,sys\n"
            "try:\n"
            " s=socket.socket(socket.AF_UNIX,socket.SOCK_STREAM);s.connect('\\0'+sys.argv[1])\n"
            " s.sendall(b'\\0\\0\\0\\2{}');print('answered' if s.recv(10) else 'closed')\n"
            "except OSError: print('closed')"
        )
        out = subprocess.run(  # the system's Python: nobody may not run the venv's
            ["/usr/bin/python3", "-c", probe, writer.address], user=65534, capture_output=True, text=True, timeout=20
        )
        assert out.stdout.strip() == "closed", out
        # As this user: answered.
        client = HostWriterClient(writer.address)
        client.append(_records("mine"), 5.0)
        store = open_store(config.eventstore_url)
        assert len(store.find(task_id="mine", limit=10)) == 3
        store.close()
        writer.proc.kill()
        writer.proc.wait(10)
        with pytest.raises(WriterGone):
            client.append(_records("after"), 1.0)
    finally:
        writer.stop()
