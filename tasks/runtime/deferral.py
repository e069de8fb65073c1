"""Deferring a task whose LLM call is over a global rate limit (tasks.llm's :class:`RateLimited`).

A deferred task does not sleep in its worker slot: its message goes back to its queue with a countdown, so the
slot serves other work meanwhile. Unlike a retry, a deferral keeps ``retries`` as it was (waiting for the
limit is not a failure and must not use up the retry budget), keeps the message's priority (Celery's
``signature_from_request`` copies it from the delivery), and counts itself in a header (``x_deferrals``), which
the records' ids include, so each run after a deferral records its own start.

In this order, and why:

1. ``task.deferred`` is recorded, with the limit, the wait and the count. While the event store is away the
   original message is given back (``Reject(requeue=True)``) and nothing has been published: the task simply
   runs again later.
2. The copy is published with the countdown (same task id, links, headers; ``x_deferrals`` + 1). A broker that
   does not take it (restarting, blocked) gets the original back after a short pause instead: nothing is lost,
   and the copy was not confirmed, so at most one of them runs (an unconfirmed copy that still landed is the
   one duplicate left; its records share the ids of the original's next deferral).
3. A marker in the result backend says this delivery was deferred (tasks.runtime.idempotency).
4. ``Retry`` is raised: Celery acknowledges the original.

A worker that dies between 3 and 4 leaves the original unacknowledged; it comes back redelivered, finds its
marker (:func:`already_deferred`) and is dropped (``Ignore``), since its copy carries on. Dying between 2 and 3
leaves both to run, as Celery's own retry would; their records cannot collide (the copy counts one deferral
more).

A revoke of a deferred task stops its copy (same task id): the worker holding the copy checks its revoked ids
when the copy is due, records ``task.revoked`` and runs its error callbacks (tests/chaos/test_deferral_revoke.py).
Celery keeps revoked ids in workers' memory only; relaybus also keeps them in Redis and loads them into every
worker that starts (tasks.runtime.revokes), so a revoke followed by a restart of *every* worker before the
countdown ends still stops the copy (tests/integration/test_durable_revoke.py).

The countdown stays below what RabbitMQ's ``consumer_timeout`` allows a delayed message (the worker holds it
unacknowledged until it is due, then for its run: :meth:`RuntimeConfig.check_delay`); a longer wait is cut to
it, and the task, back early, checks the limit again.
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, Any, NoReturn

from celery.exceptions import Reject, Retry
from celery.utils.log import get_logger

from relaybus.tasks.llm import LLMProvider, RateLimited, RateLimitedProvider, ReplayProvider
from relaybus.tasks.runtime.config import RuntimeConfig, rate_limiter, runtime_config
from relaybus.tasks.runtime.context import CORRELATION_HEADER, DEFERRALS_HEADER, request_headers
from relaybus.tasks.runtime.hooks import recording_guard
from relaybus.tasks.runtime.idempotency import already_done, mark_done
from relaybus.tasks.runtime.recording import records

if TYPE_CHECKING:
    from celery import Celery

    from relaybus.tasks.runtime.hooks import Call
    from relaybus.tasks.runtime.recording import Recorder

logger = get_logger(__name__)

#: The longest a task waits before giving its message back when its deferred copy could not be published.
REQUEUE_PAUSE_S = 2.0
#: The share of what the consumer timeout allows a delayed message that a deferral uses at most.
COUNTDOWN_SHARE = 0.9


def rate_limited(app: Celery, provider: LLMProvider, request: Any) -> LLMProvider:
    """``provider`` within the app's rate limits, if it has any; urgent by the priority of the delivery."""
    limiter = rate_limiter(app)
    if limiter is None:
        return provider
    limits = runtime_config(app).rate_limits
    priority = (request.delivery_info or {}).get("priority")
    urgent = isinstance(priority, int) and priority >= limits.urgent_priority
    return RateLimitedProvider(provider, limiter, limits, urgent=urgent, waiter=str(request.id))


def resumed(provider: LLMProvider, recorder: Recorder, request: Any) -> LLMProvider:
    """After a deferral, ``provider`` behind the completions this task's earlier runs got (their records), served
    again by request instead of asked for: an agent making more calls than a window allows would otherwise start
    over at every deferral, spend its first calls again, and never finish. Served completions are not recorded
    again (``provider`` is the recording chain), so usage is counted once."""
    if not records.deferrals_of(request) or not recorder.enabled:
        return provider
    correlation = request_headers(request).get(CORRELATION_HEADER) or request.id
    earlier = recorder.recorded_completions(str(correlation), task_id=str(request.id))
    return ReplayProvider(earlier, fallback=provider) if earlier else provider


def countdown_for(error: RateLimited, deferrals: int, config: RuntimeConfig, time_limit_s: float | None) -> float:
    """How long to defer: the limiter's wait, or a backoff when the limiter was unavailable; never past what the
    broker's consumer timeout allows a delayed message."""
    wait = error.wait_s if error.wait_s is not None else config.backoff(min(deferrals, 16))
    limit = config.time_limit_s if time_limit_s is None else time_limit_s
    longest = max((config.consumer_timeout_s - limit) * COUNTDOWN_SHARE, 0.0)
    return round(min(max(float(wait), 0.0), longest), 3)


def _marker(request: Any) -> str:
    return f"deferred:{request.id}:{records.deferrals_of(request)}:{request.retries or 0}"


def already_deferred(call: Call) -> bool:
    """Whether this (redelivered) message was deferred already: its copy is queued and it must not run."""
    request = call.request
    if not (request.delivery_info or {}).get("redelivered"):
        return False  # only a redelivery can be a deferred original; the common case asks nothing
    try:
        return bool(already_done(call.task.app, _marker(request)))
    except Exception as exc:  # cannot tell: run it; the worst case is the duplicate run a retry risks too
        logger.warning("could not check whether %s was deferred already: %s", request.id, exc)
        return False


def defer_if_rate_limited(call: Call, error: BaseException, config: RuntimeConfig) -> None:
    """Defer the task if ``error`` is a :class:`RateLimited` (raises ``Retry``); return if it is anything else."""
    if isinstance(error, RateLimited):
        defer(call, error, config)


def defer(call: Call, error: RateLimited, config: RuntimeConfig) -> NoReturn:
    """Give the task back to its queue with a countdown (see the module docstring); raises ``Retry``."""
    task, request = call.task, call.request
    deferrals = records.deferrals_of(request)
    countdown = countdown_for(error, deferrals, config, task.time_limit)
    payload = {
        "reason": "rate-limited" if error.wait_s is not None else "limiter-unavailable",
        "provider": error.provider,
        "model": error.model,
        "limit": error.limit,
        "wait_s": countdown,
        "tokens": error.tokens,
        "urgent": error.urgent,
        "deferrals": deferrals + 1,
    }
    with recording_guard:
        call.recorder.append([records.deferred(task, request, payload, socket.gethostname())], task_id=request.id)
    headers = {**request_headers(request), DEFERRALS_HEADER: deferrals + 1}
    copy = task.signature_from_request(request, countdown=countdown, headers=headers)
    try:
        copy.apply_async()
    except Exception as refused:
        time.sleep(min(countdown, REQUEUE_PAUSE_S))  # a broker refusing publishes would meet it again at once
        raise Reject(f"the deferred copy could not be published, message requeued: {refused!r}",
                     requeue=True) from error
    try:
        mark_done(task.app, _marker(request))
    except Exception as exc:  # only the crash-after-publish window is left unguarded
        logger.warning("could not mark %s as deferred: %s", request.id, exc)
    raise Retry(f"deferred {countdown:g} s: {error}", exc=error, when=countdown, sig=copy)
