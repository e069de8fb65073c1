"""Edge: the disk fills while a task's large output is being stored by claim check.

The event log (SQLite) lives on a small tmpfs filled until only a few hundred KB are left: enough for the
task's small records, not for its 1.5 MB output. The output cannot be stored, so the task must not be acked
with a reference to it (no ``task.succeeded``, no result naming a payload that is not there): it is
dead-lettered once, with the disk's error as its reason, and nothing is lost: once space is freed, the dead
letter requeued runs and its output is stored and read back whole. A caller whose large input the full disk
cannot store is told (``PayloadUnstorable``) and nothing is sent.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from relaybus.dlq import requeue
from relaybus.eventstore import PayloadRef, open_store
from relaybus.eventstore.payloads import is_ref
from relaybus.tasks.errors import PayloadUnstorable
from relaybus.tasks.runtime.deadletter import ERROR_MESSAGE_HEADER, REASON_HEADER
from tests.chaos.services import PrivateRabbitMQ, PrivateRedis
from tests.harness import Worker, delete_namespace, make_app, make_settings, queue_depth, read_queue, wait_for

pytestmark = pytest.mark.timeout(180)

OUTPUT_BYTES = 1_500_000
SPARE_BYTES = 512 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    assert done.returncode == 0, f"cannot mount a small tmpfs for the full-disk test: {done.stderr.strip()}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_leaving(folder: Path, spare: int) -> Path:
    """Fill the filesystem to the last byte, then free ``spare`` bytes of it."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
        os.ftruncate(fd, max(os.fstat(fd).st_size - spare, 0))
    finally:
        os.close(fd)
    return filler


def test_an_output_the_full_disk_cannot_store_is_dead_lettered_not_acked_with_a_dangling_reference(
    rabbitmq: PrivateRabbitMQ, redis_server: PrivateRedis, small_disk: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{small_disk / 'events.sqlite'}"
    settings = make_settings(
        tmp_path,
        rabbitmq.url,
        redis_server.url,
        eventstore_url=url,
        extra_modules=("tests.agents", "tests.limited_agents", "tests.edges_definitions"),
        extra_agents=("probe", "asker", "edgebig"),
        payload_inline_max_bytes=16 * 1024,
        max_payload_bytes=4 * 1024 * 1024,
    )
    open_store(url, create=True).close()  # the schema, while there is room
    app = make_app(settings)
    with app.connection_for_write() as conn:
        app.conf.relaybus_topology.declare(conn)
    worker = Worker(
        settings,
        ("edgebig",),
        tmp_path,
        concurrency=1,
        name="claimcheck-full",
        extra_env={"RELAYBUS_TEST_REDIS_URL": redis_server.url},
    )
    notes = redis.Redis.from_url(redis_server.url)
    store = open_store(url)
    try:
        worker.wait_ready(app, timeout=90)
        filler = fill_leaving(small_disk, SPARE_BYTES)
        key = f"big-{uuid.uuid4().hex[:8]}"
        # A caller's large input cannot be stored either: the caller is told, and nothing is sent naming it.
        with pytest.raises(PayloadUnstorable, match="payload-unstored"):
            app.tasks["agents.probe"].apply_async(kwargs={"key": key, "label": "y" * OUTPUT_BYTES})
        assert queue_depth(app, f"{settings.namespace}.probe") == 0
        result = app.tasks["agents.edgebig"].apply_async(kwargs={"key": key, "size": OUTPUT_BYTES})

        letters: list[Any] = []
        dlq = f"{settings.namespace}.edgebig.dlq"
        wait_for(lambda: letters.extend(read_queue(app, dlq)) or letters, 60, 0.2, "the task's dead letter")
        assert [m.headers["id"] for m in letters] == [result.id]
        print(f"\ndead-lettered: {letters[0].headers[REASON_HEADER]}: {letters[0].headers[ERROR_MESSAGE_HEADER]}")
        assert letters[0].headers[REASON_HEADER] == "payload-unstored", letters[0].headers
        assert "StoreDiskError" in letters[0].headers[ERROR_MESSAGE_HEADER]  # the disk is full, as SQLite says it
        runs = [n for n in notes.lrange(key, 0, -1) if b'"start"' in n]
        assert len(runs) == 1, f"the agent ran {len(runs)} times"
        types = [e.type for e in store.find(task_id=result.id, limit=100)]
        assert "task.succeeded" not in types, types
        meta = app.backend.get_task_meta(result.id)
        assert meta["status"] != "SUCCESS", meta

        # Space freed, the dead letter requeued: it runs again, and its output is stored and read back whole.
        os.remove(filler)
        with app.connection_for_write() as conn:  # read_queue took the letter off: give it back to its DLQ
            producer = conn.Producer()
            producer.publish(
                letters[0].body,
                routing_key=dlq,
                headers=letters[0].headers,
                content_type=letters[0].content_type,
                content_encoding=letters[0].content_encoding,
                serializer=None,
                delivery_mode=2,
                exchange="",
            )
        assert [d.task_id for d in requeue(app, task_id=result.id)] == [result.id]
        succeeded = wait_for(
            lambda: store.find(type="task.succeeded", task_id=result.id, limit=1),
            60,
            0.2,
            "the requeued task's success",
        )[0]
        output = succeeded.payload.get("output") or succeeded.payload
        refs = [v for v in output.values() if is_ref(v)] if isinstance(output, dict) else []
        stored = store.get_payload(PayloadRef.model_validate(refs[0])) if refs else output.get("blob")
        assert stored == "x" * OUTPUT_BYTES
    finally:
        worker.stop()
        store.close()
        delete_namespace(app)
        app.close()
