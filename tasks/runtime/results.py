"""What the Redis result backend keeps, for how long, and what a Redis that refuses writes does to a workflow.

The embedded mode's SQLite result backend (``db+sqlite://``) keeps what it stores redacted the same way
(:class:`DatabaseBackend`): a secret in a result reaches neither database.

**What is kept.** Nothing in a workflow reads a step's result back from Redis: a chain hands each result
to the next step in its message, and a chord collects its members' results in its own keys (``.j``),
deleted when the chord joins. What stays is for people and clients:

=====================================  ===========================================  ==========================
key                                    read by                                      expires
=====================================  ===========================================  ==========================
a task's own state (retry, success;    ``AsyncResult``, ``PipelineHandle.status``   :data:`TASK_RESULT_EXPIRES_S`
started: system tasks and a            (the start task), people debugging           after it is written
pipeline's entry task only)
a task's failure                       the error callbacks (why it failed)          ``result_failure_expires``
                                                                                    (default: ``result_expires``)
a pipeline's outcome (its id)          clients blocking on it (``handle.wait``)     ``result_expires``
done-markers (``relaybus-done-*``)     a redelivered system task                    ``result_expires``
a chord's bookkeeping                  the chord                                    deleted at the join; its
                                                                                    registration (``.r``)
                                                                                    :data:`TASK_RESULT_EXPIRES_S`
                                                                                    later, ``.c`` 5 min later
=====================================  ===========================================  ==========================

Flower shows task results from task events, not from here; ``AsyncResult(id).result`` of a step works for
an hour. The event log is the record (every result is in its ``task.succeeded``).

**Redis refusing writes** (``maxmemory`` reached with ``noeviction``, a read-only replica, a failed
snapshot with ``stop-writes-on-bgsave-error``): Redis answers an error, not a dropped connection, so
``result_backend_always_retry`` does not retry it (it retries connection errors only, and
:meth:`RedisBackend.exception_safe_to_retry <relaybus.tasks.runtime.chords.RedisBackend>` says so
explicitly). What each refused write means:

* a task's own state: not stored, logged. The task's work is done and recorded in the event log; its
  result travels on in its message. Before this, a refused ``STARTED`` write failed the task before it
  ran, and the failure's own write failed the same way: the pool logged ``OutOfMemoryError`` and the
  task ended with no terminal record and its chord waiting forever;
* a chord member's part: the chord cannot join, so it fails now: its error callbacks (a pipeline's
  ``pipelines.fail``) run with a :class:`~celery.exceptions.ChordError` whose message starts with
  ``result-backend-unavailable:`` (:func:`fail_refused_chord`);
* what ends a workflow for whoever waits on it, stored by id alone: a pipeline's outcome (clients block
  on it) and why a chord's callback failed (its error callbacks read it): written *past* the limit by a
  script flagged ``allow-oom`` (Redis 7), with an expiry of :data:`PAST_LIMIT_EXPIRES_S`, so it costs
  a few hundred bytes to a few KB per workflow ended while Redis is full, for an hour. Where even that
  is refused (Redis 6), an outcome raises :class:`ResultBackendUnavailable` (it is in the event log);
* a chord's size, written by the task that starts the chord: that task fails with
  :class:`ResultBackendUnavailable`, and its workflow with it;
* a done-marker: not stored, logged (a redelivered system task then sends its flow again, under the
  same derived ids, de-duplicated downstream).
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Final

from celery import states
from celery.backends.database import DatabaseBackend as CeleryDatabaseBackend
from celery.canvas import maybe_signature
from celery.exceptions import ChordError
from celery.utils.log import get_logger
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

from relaybus.tasks.errors import PermanentError
from relaybus.tasks.runtime.redacting import redact_stored

logger = get_logger(__name__)

#: How long a task's own state (``STARTED``, ``RETRY``, ``SUCCESS``) stays in Redis after it is written.
TASK_RESULT_EXPIRES_S: Final = 3600
#: How long a record written past Redis's memory limit stays (:data:`PAST_LIMIT_LUA`).
PAST_LIMIT_EXPIRES_S: Final = 3600
#: What the reason of a workflow failed by a refused write starts with.
REFUSED: Final = "result-backend-unavailable"
#: How Redis words a refused write where redis-py does not map it to a class: a transaction discarded at
#: ``EXEC`` (``ExecAbortError: Transaction discarded because of: OOM command not allowed...``), a
#: snapshot that failed with ``stop-writes-on-bgsave-error``, a replica.
_REFUSALS: Final = re.compile(r"\b(OOM|MISCONF|READONLY|OutOfMemoryError|ReadOnlyError)\b|used memory > 'maxmemory'")

#: Celery's result write (set with an expiry, then publish for waiting clients), allowed when Redis is
#: full: ``allow-oom`` (Redis 7) lets a script write past ``maxmemory``.
PAST_LIMIT_LUA: Final = """#!lua flags=allow-oom
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


#: A task's state stored unless what is there settles it already, in one round trip: a stored SUCCESS is never
#: overwritten (a late duplicate, a redelivered copy's STARTED), and a FAILURE stored by id (``ARGV[3]`` = 1: not the
#: task's own, a callback failed by id) keeps the first reason. Then published, as Celery's own store does, for
#: the clients waiting on it. Returns 1 if stored. Until this, every store read the key first: a GET, then the
#: SET and PUBLISH, two round trips, twice a task (STARTED, then its end).
STORE_UNLESS_SETTLED_LUA: Final = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' then
    if meta['status'] == 'SUCCESS' then return 0 end
    if ARGV[3] == '1' and meta['status'] == 'FAILURE' then return 0 end
  end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


class ResultBackendUnavailable(PermanentError):
    """Raised when the result backend refuses a write a workflow cannot go on without (its message starts
    with ``result-backend-unavailable:``). Not retried: the backend is up and says no."""


class DatabaseBackend(CeleryDatabaseBackend):  # type: ignore[misc]  # celery is untyped
    """Celery's SQLAlchemy result backend (the embedded mode's ``db+sqlite://``), storing results, exceptions
    and tracebacks redacted as the Redis backend does (tasks.runtime.redacting.redact_stored)."""

    def _store_result(
        self, task_id: str, result: Any, state: str, traceback: Any = None, request: Any = None, **kwargs: Any
    ) -> Any:
        stored, traceback = redact_stored(self.app, result, traceback)
        return super()._store_result(task_id, stored, state, traceback=traceback, request=request, **kwargs)


def refused_write(error: BaseException) -> bool:
    """Whether ``error`` is Redis refusing a write (full, read-only, or unable to persist), as opposed to
    Redis being away."""
    if isinstance(error, (ResultBackendUnavailable, OutOfMemoryError, ReadOnlyError)):
        return True
    return isinstance(error, ResponseError) and _REFUSALS.search(str(error)) is not None


def refused_chord_error(error: BaseException) -> BaseException:
    """A chord's error as Celery made it, reworded as a refused write when that is what it was.

    Celery's own join catches what goes wrong inside it (its claim script refused by a full Redis, say) and
    fails the chord with ``ChordError("Join error: server:OutOfMemoryError")``: the workflow's reason must
    still say that the result backend refused writes (:data:`REFUSED`), as for the refusals relaybus sees."""
    text = str(error)
    if isinstance(error, ChordError) and not text.startswith(REFUSED) and _REFUSALS.search(text):
        reworded: BaseException = ChordError(f"{REFUSED}: a chord cannot join, Redis refused a write ({text})")
        return reworded
    return error


def unavailable(error: BaseException, what: str) -> ResultBackendUnavailable:
    return ResultBackendUnavailable(f"{REFUSED}: {what}: Redis refused the write ({error})")


def expires_for(backend: Any, state: str, *, own: bool) -> int | None:
    """The expiry of a result stored in ``state``; ``own``: stored by the task for itself (with its request)."""
    if state in states.PROPAGATE_STATES:
        return int(backend.failure_expires) if backend.failure_expires else None
    if own:
        return min(TASK_RESULT_EXPIRES_S, int(backend.expires)) if backend.expires else TASK_RESULT_EXPIRES_S
    return int(backend.expires) if backend.expires else None


def fail_refused_chord(backend: Any, request: Any, error: BaseException) -> None:
    """The part of chord member ``request`` could not be counted: fail the chord through its error path."""
    gid, tid = request.group, request.id
    callback = maybe_signature(request.chord, app=backend.app)
    chord_error = ChordError(f"{REFUSED}: chord {gid} cannot join: Redis refused to count its member {tid} ({error})")
    logger.error("chord %s fails: the result backend refused member %s's part: %s", gid, tid, error)
    # The chord has failed: the results it collected are of no use.
    with contextlib.suppress(Exception):
        backend.client.delete(backend.get_key_for_group(gid, ".j"), backend.get_key_for_group(gid, ".d"))
    if callback.id:
        # Stored (past the limit) before the error callbacks are sent, so they read why: Celery stores it after.
        # Named after the member, so the reason names the fan-out's step rather than "unknown".
        backend.store_result(callback.id, chord_error, states.FAILURE, name=getattr(request, "task", None))
    backend.chord_error_from_stack(callback, chord_error)
