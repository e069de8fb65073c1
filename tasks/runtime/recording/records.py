"""Every record of a task's life, built here and nowhere else: pure functions from a Celery request to
:class:`~eventstore.NewEvent` objects. Writing them is the recorder's business (:mod:`.eventlog`).

Event ids are derived from the task id, the delivery and the transition, so a redelivered message
records nothing twice (the store ignores an event id it already holds). They are time-ordered by the task's
sent time, which its message carries (``x_sent_at``); a message without it (an older client, one in flight
at the upgrade) gets the plain uuid5 ids it always had (:func:`eventstore.ids.derived_event_id`).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from relaybus.eventstore import NewEvent
from relaybus.eventstore.ids import derived_event_id, time_ms, uuid7_ms
from relaybus.eventstore.types import (
    BUDGET_EXCEEDED,
    LLM_COMPLETED,
    TASK_DEAD_LETTERED,
    TASK_DEFERRED,
    TASK_FAILED,
    TASK_RECEIVED,
    TASK_REDELIVERED,
    TASK_REJECTED,
    TASK_RETRIED,
    TASK_SENT,
    TASK_STARTED,
    TASK_SUCCEEDED,
)
from relaybus.tasks.errors import error_message_of, error_type_of
from relaybus.tasks.runtime.context import (
    CAUSATION_HEADER,
    CORRELATION_HEADER,
    DEFERRALS_HEADER,
    PUBLISHED_AT_HEADER,
    PUBLISHED_BY_HEADER,
    REDRIVE_HEADER,
    SENT_AT_HEADER,
    id_problem,
    request_headers,
)

_NAMESPACE = uuid.UUID("6f1c1d0e-5b7e-4a55-9d0b-2f1c0a7e4b11")


def event_id(*parts: object, at_ms: int | None = None) -> str:
    """A deterministic event id: the same transition of the same delivery always gets the same id.
    ``at_ms``: the task's origin time (:func:`origin_ms`), its prefix; None: the uuid5 of older logs."""
    return derived_event_id(_NAMESPACE, parts, at_ms)


def origin_ms(task_id: Any, headers: dict[str, Any]) -> int | None:
    """The time a task's records are ordered by: its id's, if that is a UUIDv7 (the same on every message of
    the task id), else its message's sent time; None for a message without either (then uuid5 ids)."""
    at = uuid7_ms(task_id)
    return at if at is not None else time_ms(headers.get(SENT_AT_HEADER))


def agent_for_task(task_name: str) -> str | None:
    """Which agent a task's transitions belong to; None for Celery's own tasks (not recorded)."""
    head, _, rest = task_name.partition(".")
    if head in ("agents", "events") and rest:
        return rest.split(".", 1)[0]
    if head == "celery" or not task_name:
        return None
    return "system"  # pipelines.*, relaybus.* orchestration tasks run on the system queue


# -- in the pool child, around the task's body --------------------------------------------------------


def started(task: Any, request: Any, args: Any, kwargs: Any, host: str) -> list[NewEvent]:
    """``task.received`` and ``task.started``, and what the agent asks to record with its start.

    First comes the task's ``task.sent``, rebuilt from the message under the id its publisher gives it: the
    publisher writes it once the broker confirmed the message, and a publisher killed in between (a worker
    publishing the next step of a chain) would leave the task without it. The store keeps whichever copy
    comes first (the recorder writes these records with ``EventStore.append_new``). A saga's step is published
    without one (tasks.runtime.recording.wiring.receiver_records_sent): this copy is its record, under the
    publisher's time and host, which the message carries."""
    delivery = _delivery(request)
    info = request.delivery_info or {}
    redelivered = bool(info.get("redelivered"))
    now = datetime.now(UTC)
    extra = getattr(getattr(task, "spec", None), "start_records", None)
    sent_again = _sent_copy(request, _task_headers(task, request), args, kwargs, host)
    return [
        *((sent_again,) if sent_again is not None else ()),
        _event(request, task, host, TASK_RECEIVED, _derived(request, "received", delivery),
               {"redelivered": redelivered}, occurred_at=now),
        _event(request, task, host, TASK_STARTED, _derived(request, "started", delivery),
               {"redelivered": redelivered}, occurred_at=now),
        *(extra(request, tuple(args), dict(kwargs)) if extra is not None else ()),
    ]


def sent_left_to_receiver(task: Any, request: Any, args: Any, kwargs: Any, host: str) -> NewEvent | None:
    """The ``task.sent`` of a message whose publisher left it to its receiver (:data:`PUBLISHED_AT_HEADER`), for
    the worker's main process to write with a record of an end that comes before any start record (a revoke, a
    hard time limit, a rejection); None for any other message, whose publisher wrote it."""
    headers = _task_headers(task, request)
    if published_at(headers) is None:
        return None
    return _sent_copy(request, headers, args, kwargs, host)


def _task_headers(task: Any, request: Any) -> dict[str, Any]:
    """The headers ``task.sent`` is built from, as the running task's message had them."""
    return {**request_headers(request), "task": task.name, "id": request.id, "retries": request.retries or 0,
            "group": getattr(request, "group", None), "eta": getattr(request, "eta", None)}


def _sent_copy(request: Any, headers: dict[str, Any], args: Any, kwargs: Any, host: str) -> NewEvent | None:
    info = request.delivery_info or {}
    embed = {k: getattr(request, k, None) for k in ("callbacks", "errbacks", "chain", "chord")}
    return sent(headers, [list(args or ()), dict(kwargs or {}), embed], info.get("routing_key"),
                info.get("priority"), host)


def retried(task: Any, request: Any, error: BaseException, countdown: float, host: str) -> NewEvent:
    payload = {**_error_payload(error), "countdown_s": round(countdown, 3)}
    return _event(request, task, host, TASK_RETRIED, _derived(request, "retried", request.retries or 0), payload)


def deferred(task: Any, request: Any, payload: dict[str, Any], host: str) -> NewEvent:
    """``task.deferred``: this delivery gave its message back, with a countdown (tasks.runtime.deferral) or to run
    again at once (``Reject(requeue=True)``, reason ``requeued``)."""
    return _event(request, task, host, TASK_DEFERRED, _derived(request, "deferred", _delivery(request)), payload)


def succeeded(task: Any, request: Any, result: Any, duration_s: float, host: str) -> NewEvent:
    payload = {"output": result, "duration_s": round(duration_s, 6)}
    return _event(request, task, host, TASK_SUCCEEDED, _derived(request, "terminal", _redrive(request)), payload)


def failed(
    task: Any, request: Any, error: BaseException, duration_s: float, dead_letter_reason: str | None, host: str
) -> list[NewEvent]:
    """``task.failed`` and the ``task.dead_lettered`` it caused (none without a reason: a system task)."""
    redrive = _redrive(request)
    failure = _event(
        request, task, host, TASK_FAILED, _derived(request, "terminal", redrive),
        {**_error_payload(error), "duration_s": round(duration_s, 6),
         **({"reason": dead_letter_reason} if dead_letter_reason else {})},
    )
    if dead_letter_reason is None:
        return [failure]
    dead = _event(
        request, task, host, TASK_DEAD_LETTERED, _derived(request, "dead_lettered", redrive),
        {**_error_payload(error), "reason": dead_letter_reason, "attempts": (request.retries or 0) + 1},
        causation_id=failure.event_id,
    )
    return [failure, dead]


def rejected(task: Any, request: Any, error: BaseException, duration_s: float, reason: str, host: str) -> NewEvent:
    """``task.rejected``: the task refused to run (:class:`~tasks.errors.NotRun`, a stale saga step), ``reason``
    says why. The delivery's end, under its terminal event id like any other; nothing is dead-lettered."""
    return ended(task, request, TASK_REJECTED, host,
                 {**_error_payload(error), "duration_s": round(duration_s, 6), "reason": reason})


def ended(task: Any, request: Any, type_: str, host: str, payload: dict[str, Any]) -> NewEvent:
    """A terminal record written outside the task's body (``task.revoked``, ``task.rejected``): it shares
    the terminal event id of the delivery, so a task records one end, whichever comes first."""
    return _event(request, task, host, type_, _derived(request, "terminal", _redrive(request)), payload)


def llm_completed(
    task: Any, request: Any, llm_request: Any, completion: Any, host: str, cost: dict[str, Any] | None = None
) -> NewEvent:
    """``llm.completed``: the request, the completion (with its token usage) and, when its model is priced,
    its ``cost`` (``{"micros": 1234, "amount": "0.001234", "currency": "USD"}``), which budgets fold."""
    fingerprint = completion.request_fingerprint
    return _event(
        request, task, host, LLM_COMPLETED, _derived(request, "llm", _delivery(request), fingerprint),
        {
            "fingerprint": fingerprint,
            "request": llm_request.model_dump(mode="json"),
            "completion": completion.model_dump(mode="json"),
            **({"cost": cost} if cost is not None else {}),
        },
    )


def budget_exceeded(task: Any, request: Any, payload: dict[str, Any], host: str) -> NewEvent:
    """``budget.exceeded``: a call of this delivery was refused, unsent, over its workflow's budget."""
    return _event(request, task, host, BUDGET_EXCEEDED, _derived(request, "budget", _delivery(request)), payload)


# -- in the publishing process ------------------------------------------------------------------------


def sent(
    headers: dict[str, Any], body: Any, routing_key: str | None, priority: int | None, host: str
) -> NewEvent | None:
    """``task.sent`` from a message about to be published; None for a task that is not recorded."""
    task_name = str(headers.get("task", ""))
    agent = agent_for_task(task_name)
    if agent is None:
        return None
    task_id = str(headers.get("id"))
    correlation = str(headers.get(CORRELATION_HEADER) or task_id)
    args, kwargs = ([], {})
    if isinstance(body, (list, tuple)) and len(body) >= 2:
        args, kwargs = body[0], body[1]
    retries = headers.get("retries") or 0
    redrive = headers.get(REDRIVE_HEADER) or 0
    # A copy made by the receiver of a message whose publisher left the record to it: the publisher's time and host.
    published = published_at(headers)
    publisher = headers.get(PUBLISHED_BY_HEADER)
    return NewEvent(
        event_id=event_id(task_id, "sent", retries, redrive, at_ms=origin_ms(task_id, headers)),
        stream_id=correlation,
        correlation_id=correlation,
        causation_id=headers.get(CAUSATION_HEADER),
        type=TASK_SENT,
        task_id=task_id,
        agent=agent,
        queue=routing_key,
        priority=priority,
        attempt=int(retries) + 1,
        worker_host=publisher[:255] if published is not None and isinstance(publisher, str) and publisher else host,
        **({"occurred_at": published} if published is not None else {}),
        payload={
            "task": task_name,
            "input": {"args": list(args), "kwargs": kwargs},
            # What runs after it (chain, callbacks, error callbacks), so a re-drive from
            # this step continues the workflow the way the original did.
            "links": _links(body),
            "parent_id": headers.get("parent_id"),
            "root_id": headers.get("root_id"),
            "group_id": headers.get("group"),
            "eta": headers.get("eta"),
        },
    )


# -- in the worker's consumer, from a raw message ---------------------------------------------------------


def sent_from_message(
    headers: dict[str, Any], body: Any, queue: str, priority: int | None, host: str
) -> NewEvent | None:
    """The ``task.sent`` of a raw message its publisher left to its receiver (:data:`PUBLISHED_AT_HEADER`), for
    the consumer to write with its refusal; None for any other message, or one without usable ids."""
    if published_at(headers) is None or not _usable_id(headers.get("id")):
        return None
    return sent(headers, body, queue, priority, host)


def published_at(headers: dict[str, Any]) -> datetime | None:
    """When a message whose ``task.sent`` is left to its receiver was published; None for any other message
    (or a header that is not a plausible Unix time in microseconds)."""
    value = headers.get(PUBLISHED_AT_HEADER)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**62:
        return None
    seconds, micros = divmod(value, 1_000_000)
    try:
        return datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)
    except (OverflowError, OSError, ValueError):  # past the years datetime can hold
        return None


def redelivered(headers: dict[str, Any], queue: str, count: int, host: str) -> NewEvent:
    """``task.redelivered``: the ``count``-th time the broker delivered this message again."""
    return _raw(headers, queue, host, TASK_REDELIVERED, event_id(
        headers.get("id"), "redelivered", count, at_ms=origin_ms(headers.get("id"), headers)),
                {"count": count})


def refused(
    headers: dict[str, Any], queue: str, reason: str, error: BaseException | None, host: str, *, body_digest: str
) -> NewEvent:
    """``task.dead_lettered`` for a message the worker's consumer refused before anything ran (undecodable,
    too large, unknown task, redelivered too often...). A message without usable ids is recorded in the
    stream ``dead-letters.<queue>``, identified by its body's digest."""
    key = headers.get("id") if _usable_id(headers.get("id")) else body_digest
    payload = {"reason": reason, "error_type": type(error).__name__ if error is not None else reason,
               "error_message": str(error)[:2000] if error is not None else reason,
               "task": str(headers.get("task") or "")[:255], "refused_by": "consumer"}
    return _raw(headers, queue, host, TASK_DEAD_LETTERED, event_id(
        key, "dead_lettered", "consumer", reason, at_ms=origin_ms(key, headers)), payload,
                fallback_stream=f"dead-letters.{queue}"[:255])


def _usable_id(value: Any) -> bool:
    return isinstance(value, str) and id_problem(value) is None


def _raw(
    headers: dict[str, Any], queue: str, host: str, type_: str, eid: str, payload: dict[str, Any],
    *, fallback_stream: str | None = None,
) -> NewEvent:
    task_id = headers.get("id") if _usable_id(headers.get("id")) else None
    correlation = headers.get(CORRELATION_HEADER)
    correlation = correlation if _usable_id(correlation) else (task_id or fallback_stream or "unknown")
    causation = headers.get(CAUSATION_HEADER)
    task_name = headers.get("task")
    retries = headers.get("retries")
    return NewEvent(
        event_id=eid,
        stream_id=correlation,
        correlation_id=correlation,
        causation_id=causation if _usable_id(causation) else None,
        type=type_,
        task_id=task_id,
        agent=agent_for_task(task_name) if isinstance(task_name, str) else None,
        queue=queue[:255],
        attempt=retries + 1 if isinstance(retries, int) and 0 <= retries < 2**31 - 1 else None,
        worker_host=host,
        payload=payload,
    )


# -- helpers ------------------------------------------------------------------------------------------


def _event(
    request: Any, task: Any, host: str, type_: str, eid: str, payload: dict[str, Any], **extra: Any
) -> NewEvent:
    headers = dict(request.headers or {})
    correlation = getattr(request, CORRELATION_HEADER, None) or headers.get(CORRELATION_HEADER) or request.id
    causation = getattr(request, CAUSATION_HEADER, None) or headers.get(CAUSATION_HEADER)
    info = request.delivery_info or {}
    return NewEvent(
        event_id=eid,
        stream_id=str(correlation),
        correlation_id=str(correlation),
        # A transition caused by another record (task.dead_lettered by task.failed) names it instead.
        causation_id=extra.pop("causation_id", causation),
        type=type_,
        task_id=request.id,
        agent=_agent_of(task),
        queue=info.get("routing_key"),
        priority=info.get("priority"),
        attempt=(request.retries or 0) + 1,
        worker_host=request.hostname or host,
        payload=payload,
        **extra,
    )


def terminal_event_id(request: Any) -> str:
    """The id every end of ``request``'s delivery is recorded under (``task.succeeded``, ``task.failed``...)."""
    return _derived(request, "terminal", _redrive(request))


def _derived(request: Any, *parts: object) -> str:
    """The id of a transition of ``request``'s task: the task id, then ``parts``; ordered by its origin time."""
    return event_id(request.id, *parts, at_ms=request_origin_ms(request))


def request_origin_ms(request: Any) -> int | None:
    """:func:`origin_ms` of a running task's request (Celery moves a message's own headers onto it)."""
    sent_at = getattr(request, SENT_AT_HEADER, None)
    headers = {SENT_AT_HEADER: sent_at} if sent_at is not None else _headers(request)
    return origin_ms(request.id, headers)


def _agent_of(task: Any) -> str | None:
    spec = getattr(task, "spec", None)
    return spec.name if spec is not None else agent_for_task(task.name)


def _delivery(request: Any) -> str:
    redelivered = int(bool((request.delivery_info or {}).get("redelivered")))
    delivery = f"{request.retries or 0}:{_redrive(request)}:{redelivered}"
    # A deferred task runs again with the same retries: its deferrals tell the runs apart (older ids are unchanged).
    deferrals = deferrals_of(request)
    return f"{delivery}:d{deferrals}" if deferrals else delivery


def deferrals_of(request: Any) -> int:
    """How many times the task of ``request`` was deferred before this delivery."""
    value = getattr(request, DEFERRALS_HEADER, None) or _headers(request).get(DEFERRALS_HEADER)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _redrive(request: Any) -> Any:
    return getattr(request, REDRIVE_HEADER, None) or _headers(request).get(REDRIVE_HEADER) or 0


def _headers(request: Any) -> dict[str, Any]:
    """The message headers of ``request``; none for a request without them (a stand-in, a direct call)."""
    return dict(getattr(request, "headers", None) or {})


def _error_payload(error: BaseException) -> dict[str, Any]:
    return {"error_type": error_type_of(error), "error_message": error_message_of(error)[:2000]}


def _links(body: Any) -> dict[str, Any]:
    embed = body[2] if isinstance(body, (list, tuple)) and len(body) >= 3 and isinstance(body[2], dict) else {}
    return {k: embed.get(k) for k in ("chain", "callbacks", "errbacks", "chord") if embed.get(k)}
