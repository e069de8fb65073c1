"""Deadlines hold without beat: a worker that consumes the system queue sends relaybus's sweeps itself.

Every workflow ends (completed, failed, compensated, timed out) only because the sweeps run: the workflow
sweep ends pipelines past their deadline, expires approvals; the saga sweep times out silent steps. Beat
schedules them (``beat_schedule`` in :mod:`project.celery`), but a deployment of workers alone — the usual
first deployment — left a stalled pipeline "running" forever. So every worker that consumes the system queue
(where the sweep tasks run) sends each sweep at its beat interval, from a thread of its main process (the
consumer's loop never waits on it). With a Redis result backend a lease per sweep (``SET NX PX``, 90 % of the
interval) lets one worker send it per interval, however many run; without one (the embedded mode) each such
worker sends it. A sweep is idempotent (the first outcome recorded wins), so one sent by beat as well costs
a second look, not a second outcome. ``RELAYBUS_WORKER_SWEEPS=false`` leaves the sweeps to beat alone.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Celery

from relaybus.tasks.runtime.backendredis import redis_client

logger = logging.getLogger("relaybus.worker")

#: The Redis key of a sweep's lease: ``relaybus-sweep:<namespace>:<task name>``.
LEASE_PREFIX = "relaybus-sweep:"
#: The sweeps relaybus schedules (their intervals are beat's: ``app.conf.beat_schedule``).
SWEEPS = ("relaybus.workflows.sweep", "relaybus.saga.sweep")


def intervals(app: Celery) -> dict[str, float]:
    """Each relaybus sweep and its interval in seconds, as beat runs them."""
    schedule = app.conf.beat_schedule or {}
    found: dict[str, float] = {}
    for entry in schedule.values():
        task, every = entry.get("task"), entry.get("schedule")
        if task in SWEEPS and isinstance(every, int | float) and every > 0:
            found[task] = float(every)
    return found


class Sweeper:
    """A daemon thread sending each sweep once per interval (the first one interval after the start)."""

    def __init__(self, app: Celery, namespace: str, hostname: str) -> None:
        self.app = app
        self.namespace = namespace
        self.hostname = hostname
        self.every = intervals(app)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relaybus-sweeper", daemon=True)

    def start(self) -> None:
        if self.every:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        now = time.monotonic()
        due = {task: now + every for task, every in self.every.items()}
        while not self._stop.is_set():
            task = min(due, key=due.__getitem__)
            if self._stop.wait(max(0.0, due[task] - time.monotonic())):
                return
            due[task] = time.monotonic() + self.every[task]
            try:
                if self._lease(task):
                    # A sweep slower than its interval (a large log) must not pile its successors up in the
                    # queue: each message expires when the next one is due.
                    self.app.send_task(task, expires=self.every[task])
            except Exception as error:  # a broker or Redis away: the next interval tries again
                logger.warning("could not send %s (%s: %s); beat or the next interval will", task,
                               type(error).__name__, error)

    def _lease(self, task: str) -> bool:
        """Whether this worker sends ``task`` this interval: it took the lease, or there is none to take."""
        client = redis_client(self.app)
        if client is None:
            return True
        ttl_ms = max(1, int(self.every[task] * 900))
        return bool(client.set(f"{LEASE_PREFIX}{self.namespace}:{task}", self.hostname, nx=True, px=ttl_ms))


#: The sweeper this worker process runs, if any (one app per worker process).
_running: Sweeper | None = None


def start_sweeper(sender: Any = None, **_: Any) -> None:
    """``worker_ready``: start sending the sweeps if this worker consumes the system queue."""
    app = getattr(sender, "app", None)
    if app is None or not app.conf.get("relaybus_worker_sweeps", False):
        return
    system_queue = app.conf.task_default_routing_key
    consumed = set(app.amqp.queues.consume_from or app.amqp.queues)
    if system_queue not in consumed:
        return
    namespace = app.conf.relaybus_runtime.namespace
    global _running
    if _running is not None:
        _running.stop()
    sweeper = _running = Sweeper(app, namespace, getattr(sender, "hostname", "") or "")
    sweeper.start()
    logger.info("sending %s from this worker (RELAYBUS_WORKER_SWEEPS)",
                ", ".join(f"{t} every {s:g} s" for t, s in sweeper.every.items()))


def stop_sweeper(sender: Any = None, **_: Any) -> None:
    """``worker_shutdown``: stop the thread."""
    global _running
    if _running is not None:
        _running.stop()
        _running = None
