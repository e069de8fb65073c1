"""The Redis result backend relaybus installs: chords that survive a restart of Redis or RabbitMQ, results stored
in one round trip, refused writes that fail a workflow instead of hanging it.

A chord member whose claimer died, or whose chord's state Redis lost, is repaired in :mod:`tasks.runtime.chordrepair`.

**Redis away for a moment.** Celery calls each of its chord scripts once. A connection dropped while
a member is counted fails that member; dropped while the claim is extended, it fails the chord; and
dropped during the cleanup *after* the callback was published, it runs the chord's error path for a
callback already sent: the workflow fails while its callback runs (the chaos suite's Redis restart
found this: a pipeline failed "STARTED", its writer running). :class:`RedisBackend`, which relaybus
installs for ``redis://`` URLs, retries the scripts (all idempotent) through the backend's own
``ensure`` while Redis comes back, and gives a cleanup that still fails up quietly, leaving the keys
to expire: the callback is out.

**The broker away as the callback is published.** Celery publishes a complete chord's callback once
(three quick retries of a refused connection); if that fails it runs the chord's error path, whose error
callbacks are publishes too, to the same absent broker: both are lost, the chord's keys are cleaned up,
and the member's redelivery finds nothing left to do. The workflow hung until its deadline (the chaos
suite's RabbitMQ restart, about one run in six). A broker that cannot be reached or does not confirm is
not an error of the callback: :class:`RedisBackend` gives the dispatch claim back instead (the chord's
data stays, complete and unclaimed) and raises ``Reject(requeue=True)`` once the member's result is stored,
so its message goes back to the queue (or is redelivered when the connection is back) and the member's
next run claims the chord and publishes the callback. The callback's id was fixed when the chord was
built, so a publish that reached the broker although its confirm was lost runs once downstream.

**Redis refusing writes** (full with ``noeviction``, read-only): a refused part fails the chord at once
with the reason ``result-backend-unavailable`` instead of leaving it to wait forever; what else a refused
write means, and how long finished workflows' keys stay, is in :mod:`tasks.runtime.results`, whose policy
:class:`RedisBackend` applies.

All of this relies on the Redis backend's key layout (pinned: celery 5.7); a no-op on any other backend.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from contextvars import ContextVar
from functools import cached_property, partial
from typing import Any

from amqp.exceptions import ConnectionError as AMQPConnectionError
from celery import states
from celery.backends.redis import CHORD_CLAIM_EXTEND_LUA, CHORD_CLEANUP_LUA, CHORD_PART_RETURN_LUA
from celery.backends.redis import RedisBackend as CeleryRedisBackend
from celery.exceptions import BackendStoreError, Reject
from celery.utils.log import get_logger
from kombu.exceptions import OperationalError

from relaybus.tasks.errors import PublishFailed
from relaybus.tasks.runtime.claimcheck import offload_value, resolve_value
from relaybus.tasks.runtime.redacting import redact_stored
from relaybus.tasks.runtime.results import (
    PAST_LIMIT_EXPIRES_S,
    PAST_LIMIT_LUA,
    STORE_UNLESS_SETTLED_LUA,
    TASK_RESULT_EXPIRES_S,
    expires_for,
    fail_refused_chord,
    refused_chord_error,
    refused_write,
    unavailable,
)

logger = get_logger(__name__)


class RedisBackend(CeleryRedisBackend):  # type: ignore[misc]  # celery is untyped
    """Celery's Redis result backend, whose chord bookkeeping rides out a Redis restart, and which keeps
    little once a workflow is done and fails workflows instead of hanging them when Redis refuses writes.

    Celery runs three Lua scripts per chord member: count the part (and claim the dispatch when it
    is the last), extend the claim before publishing, clean up after publishing. Celery calls each
    once; a dropped connection becomes a task error or a join error. All three are idempotent, so
    here each goes through the backend's own :meth:`ensure` (retried over its connection errors,
    by its retry policy), and a cleanup that still fails is given up quietly: it runs after the
    callback was published, when the chord's outcome is decided.

    Expiries and refused writes follow :mod:`tasks.runtime.results`.
    """

    def exception_safe_to_retry(self, exc: BaseException) -> bool:
        # A refused write is an answer, not a lost connection: retrying it for two minutes helps nobody.
        return not refused_write(exc) and bool(super().exception_safe_to_retry(exc))

    def _store_result(
        self, task_id: str, result: Any, state: str, traceback: Any = None, request: Any = None, **kwargs: Any
    ) -> Any:
        # Celery's (5.7), with the expiry chosen by whose state it is and a refused write handled.
        # What is kept in Redis is redacted like every other sink; the chord's own lists (.j), which its
        # callback reads, are not: they are in flight, and deleted at the join (tasks.runtime.redacting).
        stored, traceback = redact_stored(self.app, result, traceback)
        stored = offload_value(self.app, stored)  # a large result (a pipeline's outcome) by reference
        meta = self._get_result_meta(result=stored, state=state, traceback=traceback, request=request)
        meta["task_id"] = _text(task_id)
        if kwargs.get("name"):
            meta["name"] = kwargs["name"]  # who failed, for the error callbacks (tasks.runtime.results)
        own = request is not None
        key, value = self.get_key_for_task(task_id), self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError("value too large for Redis backend", state=state, task_id=task_id)
        expires = expires_for(self, state, own=own)
        expires = self.expires if expires is None else expires
        # Unless a success is stored (a late duplicate must not overwrite it) or, for a callback failed by id,
        # a failure (the first reason stays; Celery stores it again later): one script, one round trip.
        settled_failure_kept = "1" if not own and state == states.FAILURE else "0"
        try:
            self.ensure(self._store_unless_settled, ([key], [value, int(expires or 0), settled_failure_kept]))
        except BackendStoreError as ex:
            raise BackendStoreError(str(ex), state=state, task_id=task_id) from ex
        except Exception as error:
            if not refused_write(error):
                raise
            if own:
                logger.warning("task %s: its %s state was not stored, Redis refuses writes: %s", task_id, state, error)
            else:
                self._store_past_the_limit(task_id, state, key, value, error)
        return result

    def meta_from_decoded(self, meta: dict[str, Any]) -> dict[str, Any]:
        """A result as a client reads it (``AsyncResult.get``, a pipeline's outcome): what was stored by reference
        read back. A chord's join reads its members' parts without this: its callback resolves them itself."""
        meta = super().meta_from_decoded(meta)
        if meta.get("status") == states.SUCCESS and meta.get("result") is not None:
            meta["result"] = resolve_value(self.app, meta["result"])
        return meta

    @cached_property
    def _store_unless_settled_script(self) -> Any:
        return self.client.register_script(STORE_UNLESS_SETTLED_LUA)

    def _store_unless_settled(self, keys: list[Any], args: list[Any]) -> Any:
        return self._store_unless_settled_script(keys=keys, args=args)

    @cached_property
    def _past_the_limit_script(self) -> Any:
        return self.client.register_script(PAST_LIMIT_LUA)

    def _store_past_the_limit(self, task_id: str, state: str, key: Any, value: Any, refused: BaseException) -> None:
        """A pipeline's outcome or a chord callback's failure, which someone waits on: past the limit."""
        try:
            self._past_the_limit_script(keys=[key], args=[value, PAST_LIMIT_EXPIRES_S])
        except Exception as error:
            if state == states.SUCCESS:
                raise unavailable(refused, f"the result of {task_id} (a pipeline's outcome?) was not stored") from error
            logger.warning("task %s: its %s state was not stored, Redis refuses writes: %s", task_id, state, error)
            return
        logger.warning(
            "task %s: Redis is full; its %s state was stored past the limit for %ss",
            task_id,
            state,
            PAST_LIMIT_EXPIRES_S,
        )

    def set(self, key: Any, value: Any, expires: int | None = None, **retry_policy: Any) -> Any:
        try:
            return super().set(key, value, expires=expires, **retry_policy)
        except Exception as error:
            if not refused_write(error):
                raise
            # A done-marker or a group's result: a cache whose loss costs a de-duplicated resend at most.
            logger.warning("%s was not stored, Redis refuses writes: %s", _text(key), error)
            return None

    def _set_chord_key(self, key: Any, value: Any) -> Any:
        try:
            return super()._set_chord_key(key, value)
        except Exception as error:
            if not refused_write(error):
                raise
            raise unavailable(error, f"a chord cannot start, {_text(key)} was not stored") from error

    def chord_error_from_stack(self, callback: Any, exc: Any = None) -> Any:
        unsent = _broker_away(sys.exc_info()[1]) and str(exc).startswith("Callback error")
        if unsent and self._give_back_claim(callback):
            return None  # not an error of the chord: its member comes back and publishes it (module docstring)
        return super().chord_error_from_stack(callback, refused_chord_error(exc) if exc is not None else exc)

    def _give_back_claim(self, callback: Any) -> bool:
        """Release the dispatch claim of the chord being joined here (its callback could not be published), so
        that the cleanup leaves the chord's data and the member's next run claims it; True if given back."""
        gid = _JOINING.get(None)
        if gid is None:
            return False
        try:
            self.client.delete(self.get_key_for_group(gid, ".c"))
        except Exception:  # Redis is away too: the claim's lease runs out, and the member comes back
            logger.warning("chord %s: could not release its dispatch claim", gid, exc_info=True)
        logger.warning(
            "chord %s: its callback %s could not be published (the broker is away); the member goes back to the "
            "queue and publishes it when it runs again",
            gid,
            getattr(callback, "id", None),
        )
        _UNSENT.set(gid)
        return True

    def on_chord_part_return(self, request: Any, state: str, result: Any, propagate: Any = None, **kwargs: Any) -> Any:
        joining, unsent = _JOINING.set(getattr(request, "group", None)), _UNSENT.set(None)
        try:
            returned = super().on_chord_part_return(request, state, result, propagate=propagate, **kwargs)
        except Exception as error:
            if not refused_write(error):
                raise
            fail_refused_chord(self, request, error)
            return None
        finally:
            _JOINING.reset(joining)
            gid = _UNSENT.get()
            _UNSENT.reset(unsent)
        if gid is not None:
            # The member's result is stored and counted; only its callback is missing. Its message goes back.
            raise Reject(f"chord {gid}: its callback could not be published; requeued to publish it", requeue=True)
        return returned

    def _ensured(self, lua: str) -> Callable[..., Any]:
        script = self.client.register_script(lua)
        return lambda keys, args, client=None: self.ensure(partial(script, keys=keys, args=args, client=client), ())

    @cached_property
    def _chord_part_return_script(self) -> Callable[..., Any]:
        script = self.client.register_script(CHORD_PART_RETURN_LUA)

        def part_return(keys: list[str], args: list[Any], client: Any = None) -> Any:
            tries = []

            def once() -> Any:
                tries.append(1)
                readycount, totaldiff, size, claimed = script(keys=keys, args=args, client=client)
                if len(tries) > 1 and not claimed and _holds(client or self.client, keys[5], args[7]):
                    claimed = 1  # an earlier try claimed the dispatch, and only its reply was lost
                return readycount, totaldiff, size, claimed

            return self.ensure(once, ())

        return part_return

    @cached_property
    def _chord_claim_extend_script(self) -> Callable[..., Any]:
        return self._ensured(CHORD_CLAIM_EXTEND_LUA)

    @cached_property
    def _chord_cleanup_script(self) -> Callable[..., Any]:
        ensured = self._ensured(CHORD_CLEANUP_LUA)

        def cleanup(keys: list[str], args: list[Any], client: Any = None) -> Any:
            # Celery calls this once the callback is published (a ``finally``), and would turn an
            # exception into a join error: the chord's error path for a callback already sent.
            try:
                cleaned = ensured(keys, args, client)
            except Exception:
                logger.warning("chord cleanup of %s failed; its keys are left to expire", keys[0], exc_info=True)
                return 0
            if cleaned:
                # The chord has joined: its registration only guards late copies of its members now.
                with contextlib.suppress(Exception):
                    (client or self.client).expire(_sibling(keys[0], ".r"), TASK_RESULT_EXPIRES_S)
            return cleaned

        return cleanup


#: The chord (group id) whose member's part is being returned in this thread, and whether its callback
#: could not be published (:meth:`RedisBackend.chord_error_from_stack`).
_JOINING: ContextVar[str | None] = ContextVar("relaybus_chord_joining", default=None)
_UNSENT: ContextVar[str | None] = ContextVar("relaybus_chord_unsent", default=None)


def _broker_away(error: BaseException | None) -> bool:
    """Whether a publish failed because the broker could not be reached or did not confirm in time. After a
    task has returned, relaybus's publisher turns that into ``Reject(requeue=True)`` (project.celery): its cause."""
    if isinstance(error, Reject) and error.requeue:
        error = error.__cause__
    return isinstance(error, PublishFailed | OperationalError | OSError | AMQPConnectionError)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _sibling(ckey: Any, suffix: str) -> Any:
    """The key of the same chord with ``suffix`` instead of ``.c``."""
    if isinstance(ckey, bytes):
        return ckey[: -len(b".c")] + suffix.encode()
    return str(ckey)[: -len(".c")] + suffix


def _holds(client: Any, ckey: str, token: Any) -> bool:
    value = client.get(ckey)
    return value is not None and value == (token.encode() if isinstance(token, str) else token)
