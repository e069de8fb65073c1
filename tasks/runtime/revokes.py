"""Revokes that outlive the workers that heard them.

Celery keeps revoked task ids in each worker's memory; a worker started afresh asks its live peers for
theirs (mingle). A revoke therefore lasts only while some worker lives: revoke a task whose message waits
(a countdown, a deferred copy, a backlog), restart every worker, and the task runs after all. And a revoke
broadcast while no worker is up reaches nobody.

Here a revoke is also kept in the result backend's Redis, in one sorted set per namespace, scored by when it
expires (Celery's own expiry: ``CELERY_WORKER_REVOKE_EXPIRES``, 3 hours by default):

* :func:`revoke` (``relaybus.revoke``, ``relaybus revoke``) keeps it *before* broadcasting it, so it holds
  even if no worker hears the broadcast;
* a worker that hears a revoke from anywhere else (``AsyncResult.revoke()``, ``app.control.revoke``, Flower)
  keeps it too (:func:`install`, wrapping Celery's ``revoke`` control command);
* a worker loads the live revokes before it consumes (:func:`load_into_worker`, on ``worker_init``, which also
  installs the wrapper).

What a revoked message does once a worker meets it is Celery's and relaybus's usual path: it is not run,
``task.revoked`` is recorded and its workflow takes its failure path (tasks.runtime.request).

Cost: nothing per task; one ``ZADD`` per revoke (per worker that hears it), one read when a worker starts.
With a result backend that is not Redis (the embedded mode), revokes are Celery's alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from celery import Celery, current_app
from celery.utils.log import get_logger
from celery.worker import control, state

from relaybus.tasks.runtime.backendredis import redis_client
from relaybus.tasks.runtime.config import runtime_config

__all__ = ["install", "kept_revokes", "load_into_worker", "revoke"]

logger = get_logger(__name__)

#: The Redis key of a namespace's kept revokes (a sorted set: task id, scored by its expiry in epoch seconds).
KEY_PREFIX = "relaybus-revoked:"


def _key(app: Celery) -> str:
    return KEY_PREFIX + runtime_config(app).namespace


def keep(app: Celery, task_ids: Iterable[str], *, now: float | None = None) -> bool:
    """Keep ``task_ids`` as revoked until Celery's revoke expiry; ``False`` if the backend cannot keep them."""
    client = redis_client(app)
    ids = [str(i) for i in task_ids]
    if client is None or not ids:
        return False
    now = time.time() if now is None else now
    expires = now + state.REVOKE_EXPIRES
    with client.pipeline(transaction=True) as pipe:
        pipe.zadd(_key(app), {task_id: expires for task_id in ids})
        pipe.zremrangebyscore(_key(app), "-inf", now)  # what expired goes, so the set stays bounded
        pipe.expire(_key(app), int(state.REVOKE_EXPIRES) + 1)  # and the set itself, once its last revoke has
        pipe.execute()
    return True


def kept_revokes(app: Celery, *, now: float | None = None) -> list[str]:
    """The task ids revoked and not yet expired, oldest revoke first."""
    client = redis_client(app)
    if client is None:
        return []
    now = time.time() if now is None else now
    return [m.decode() if isinstance(m, bytes) else str(m)
            for m in client.zrangebyscore(_key(app), f"({now}", "+inf")]


def revoke(task_ids: str | Iterable[str], *, terminate: bool = False, signal: str | None = None,
           app: Celery | None = None) -> list[str]:
    """Revoke tasks for good: kept first (a Redis error raises, nothing is broadcast), then broadcast to the
    workers (Celery's ``revoke``; ``terminate`` also kills a running one). Returns the ids revoked."""
    app = app or current_app
    ids = [task_ids] if isinstance(task_ids, str) else [str(i) for i in task_ids]
    if not keep(app, ids):
        logger.warning("the result backend is not Redis: the revoke of %s lasts only while a worker lives", ids)
    options: dict[str, Any] = {"terminate": terminate}
    if signal is not None:
        options["signal"] = signal
    app.control.revoke(ids, **options)
    return ids


_CELERY_REVOKE = control.Panel.data["revoke"]


def _revoke_and_keep(panel_state: Any, task_id: Any, terminate: bool = False, signal: Any = None,
                     **kwargs: Any) -> Any:
    """Celery's ``revoke`` control command, then the revoke kept (a Redis error is logged: the revoke still
    holds in this worker's memory, as it would without relaybus)."""
    reply = _CELERY_REVOKE(panel_state, task_id, terminate=terminate, signal=signal, **kwargs)
    app = panel_state.consumer.app
    ids = [task_id] if isinstance(task_id, str) else list(task_id or [])
    try:
        keep(app, ids)
    except Exception:
        logger.exception("could not keep the revoke of %s: it lasts only while a worker lives", ids)
    return reply


def install() -> None:
    """Make every revoke a worker hears kept (idempotent; the control registry is Celery's, per process)."""
    control.Panel.data["revoke"] = _revoke_and_keep


def load_into_worker(sender: Any = None, **_: Any) -> None:
    """``worker_init``: keep every revoke this worker hears from now on (:func:`install`), and add the kept
    revokes to its revoked ids before it consumes anything."""
    install()
    app = getattr(sender, "app", None) or current_app
    try:
        ids = kept_revokes(app)
    except Exception:
        logger.exception("could not read the kept revokes: this worker knows only what its peers tell it")
        return
    for task_id in ids:
        state.revoked.add(task_id)
    if ids:
        logger.info("%d kept revoke(s) loaded", len(ids))
