"""celery-saga 0.1.1, the peer of the saga benchmark: the same four no-op steps, driven the same way.

Never imports relaybus: relaybus's publish signals are process-wide, and would tax the peer's
publishes. Its worker and its client each run in a process of their own, configured by environment:

* ``CSAGA_QUEUE`` its queue (and direct exchange), ``CSAGA_PREFIX`` its Redis key prefix (its state
  store: one JSON document per saga), ``CSAGA_BROKER``, ``CSAGA_REDIS``;
* ``CSAGA_MATCHED=1``: relaybus's delivery guarantees (late ack, prefetch 1, persistent messages,
  publisher confirms); otherwise Celery's defaults (early ack, prefetch 4, persistent, no confirms).

Worker: ``celery -A bench.saga_peer worker -Q $CSAGA_QUEUE``. Client:
``python -m bench.saga_peer drive --sagas N --alone M`` prints the figures as JSON, measured as
:mod:`bench.saga_bench` measures relaybus: durations from the store's own timestamps (``created_at``
to the terminal ``updated_at``; the failed step's ``completed_at`` to ``compensated``), starts per second
from the client's clock.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime
from typing import Any

from celery import Celery
from celery_saga import PermanentFailure, Saga
from celery_saga.backends.redis import RedisSagaBackend
from celery_saga.executor import set_default_backend

QUEUE = os.environ.get("CSAGA_QUEUE", "csaga")
PREFIX = os.environ.get("CSAGA_PREFIX", "csaga:")
MATCHED = os.environ.get("CSAGA_MATCHED") == "1"
BROKER = os.environ.get("CSAGA_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
REDIS = os.environ.get("CSAGA_REDIS", "redis://127.0.0.1:6379/0")
STEPS = ("one", "two", "three", "four")
TERMINAL = ("completed", "compensated", "failed")

app = Celery("csaga", broker=BROKER)
app.conf.update(
    task_default_queue=QUEUE,
    task_serializer="json",
    accept_content=["json"],
    worker_enable_remote_control=False,  # no pidbox exchange or queue left behind
    worker_hijack_root_logger=False,
)
if MATCHED:
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_delivery_mode="persistent",
        broker_transport_options={"confirm_publish": True},
    )


class _Backend(RedisSagaBackend):  # type: ignore[misc]
    PREFIX = PREFIX


backend = _Backend(url=REDIS)
set_default_backend(backend)


def _make_step(name: str, last: bool) -> Any:
    def run(**context: Any) -> dict[str, Any]:
        if last and context.get("fail"):
            raise PermanentFailure(f"step {name} fails, as asked")
        return {"n": context.get("n", 0)}

    run.__name__ = f"step_{name}"
    return app.task(name=f"csaga.step.{name}")(run)


def _make_undo(name: str) -> Any:
    def run(compensation_data: Any = None) -> dict[str, Any]:
        return {"undone": False}

    run.__name__ = f"undo_{name}"
    return app.task(name=f"csaga.undo.{name}")(run)


SAGA = Saga("bench_noop_saga")
for _i, _name in enumerate(STEPS):
    SAGA.add_step(_make_step(_name, _i == len(STEPS) - 1), compensate=_make_undo(_name))


# -- the client --------------------------------------------------------------------------------------


def _at(text: str | None) -> datetime:
    assert text is not None
    return datetime.fromisoformat(text)


def _ms(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds() * 1000


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, as bench.saga_bench computes it."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


#: How often the driver looks for ended sagas: alone, and under load. The times come from each saga's own record,
#: never from when the driver noticed it ended, so this only sets how much the looking itself loads the machine
#: (relaybus's two queries every 2 ms slowed its PostgreSQL sagas by a fifth). bench.saga_bench uses the same.
POLL_ALONE_S = 0.02
POLL_LOADED_S = 0.02


def _start(fail: bool) -> str:
    app.set_current()
    return str(SAGA.run(n=1, fail=fail).saga_id)


def _wait(ids: list[str], timeout: float, interval: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    ended: dict[str, dict[str, Any]] = {}
    client = backend._client
    while len(ended) < len(ids):
        pending = [i for i in ids if i not in ended]
        for saga_id, raw in zip(pending, client.mget([backend._key(i) for i in pending]), strict=True):
            if raw is not None:
                doc = json.loads(raw)
                if doc["status"] in TERMINAL:
                    ended[saga_id] = doc
        if len(ended) < len(ids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(ids) - len(ended)} celery-saga sagas did not end in {timeout}s")
            time.sleep(interval)
    return ended


def _times(doc: dict[str, Any], fail: bool) -> tuple[float, float | None]:
    total = _ms(_at(doc["created_at"]), _at(doc["updated_at"]))
    if not fail:
        return total, None
    (failed,) = [s for s in doc["steps"] if s["status"] == "failed"]
    return total, _ms(_at(failed["completed_at"]), _at(doc["updated_at"]))


def _check(doc: dict[str, Any], fail: bool) -> None:
    want = "compensated" if fail else "completed"
    if doc["status"] != want:
        raise AssertionError(f"celery-saga saga {doc['saga_id']} ended {doc['status']}, expected {want}")


def alone(count: int, *, fail: bool) -> dict[str, float]:
    totals, recoveries = [], []
    for _ in range(count):
        saga_id = _start(fail)
        doc = _wait([saga_id], 60, POLL_ALONE_S)[saga_id]
        _check(doc, fail)
        total, recovery = _times(doc, fail)
        totals.append(total)
        if recovery is not None:
            recoveries.append(recovery)
    figures = {"p50_ms": percentile(totals, 50), "p95_ms": percentile(totals, 95)}
    if fail:
        figures |= {
            "failure_to_compensated_p50_ms": percentile(recoveries, 50),
            "failure_to_compensated_p95_ms": percentile(recoveries, 95),
        }
    return figures


def loaded(n: int, *, fail: bool) -> dict[str, float]:
    began = time.perf_counter()
    ids = [_start(fail) for _ in range(n)]
    starting = time.perf_counter() - began
    docs = _wait(ids, 300, POLL_LOADED_S)
    for doc in docs.values():
        _check(doc, fail)
    first = min(_at(d["created_at"]) for d in docs.values())
    last = max(_at(d["updated_at"]) for d in docs.values())
    return {
        "sagas": n,
        "sagas_per_s": n / (last - first).total_seconds(),
        "starts_per_s": n / starting,
        "loaded_p50_ms": statistics.median(_times(d, fail)[0] for d in docs.values()),
    }


def drive(n: int, count: int) -> dict[str, Any]:
    """One round: success under load, alone; failure under load, alone."""
    return {
        "success": loaded(n, fail=False) | alone(count, fail=False),
        "compensation": loaded(n, fail=True) | alone(count, fail=True),
    }


def cleanup() -> int:
    """Delete every Redis key under the prefix; the bench deletes the queue and exchange."""
    client = backend._client
    keys = list(client.scan_iter(match=f"{PREFIX}*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])
    return len(keys)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.saga_peer")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("drive", help="measure one round; prints JSON")
    run.add_argument("--sagas", type=int, default=50)
    run.add_argument("--alone", type=int, default=20)
    sub.add_parser("cleanup", help="delete the Redis keys under CSAGA_PREFIX")
    args = parser.parse_args()
    if args.command == "drive":
        json.dump(drive(args.sagas, args.alone), sys.stdout)
    else:
        json.dump({"deleted_keys": cleanup()}, sys.stdout)


if __name__ == "__main__":
    main()
