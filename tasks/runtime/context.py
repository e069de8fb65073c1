"""Correlation and causation ids, carried in message headers through every hop.

Celery drops a custom header named ``correlation_id`` (it collides with the task id) and copies
no custom header to the next step of a chain, so relaybus uses its own header names and copies
them in a ``before_task_publish`` handler (:func:`propagate_ids`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from celery._state import get_current_task

from relaybus.eventstore.ids import new_event_id, time_ms, uuid7_ms

CORRELATION_HEADER = "x_correlation_id"
CAUSATION_HEADER = "x_causation_id"
REDRIVE_HEADER = "x_redrive"
#: Set on a deterministic replay: the correlation id whose recorded LLM completions are served.
LLM_REPLAY_HEADER = "x_llm_replay_of"
#: Set on every message of a re-driven workflow: the correlation id it replays.
REPLAY_OF_HEADER = "x_replay_of"
#: How many times the task was deferred (over a rate limit, tasks.runtime.deferral); absent before the first.
DEFERRALS_HEADER = "x_deferrals"
#: On a pipeline's entry task: the budget it records in ``pipeline.started`` (tasks.llm.Budget, as JSON).
BUDGET_HEADER = "x_budget"
#: When the task was first sent (Unix ms): the time prefix of its records' derived ids (eventstore.ids).
SENT_AT_HEADER = "x_sent_at"
#: On a message whose ``task.sent`` its publisher leaves to the worker that receives it (a saga's step:
#: tasks.runtime.recording.wiring.receiver_records_sent): when it was published (Unix microseconds: the
#: record orders after the saga's move that sent it), and by which host.
PUBLISHED_AT_HEADER = "x_published_at"
PUBLISHED_BY_HEADER = "x_published_by"
#: On a message whose task stores its ``STARTED`` state in the result backend before it runs (a pipeline's entry
#: task, for ``PipelineHandle.status``); agent tasks store no ``STARTED`` otherwise (tasks.runtime.task).
TRACK_STARTED_HEADER = "x_track_started"

_correlation: ContextVar[str | None] = ContextVar("relaybus_correlation_id", default=None)
_causation: ContextVar[str | None] = ContextVar("relaybus_causation_id", default=None)
#: The task (id) whose body returned and whose continuation (chain, callbacks) Celery is publishing.
_continuing: ContextVar[str | None] = ContextVar("relaybus_continuing", default=None)
_replay: ContextVar[dict[str, str]] = ContextVar("relaybus_replay", default={})  # noqa: B039 - never mutated


def mark_continuing(task_id: str | None) -> None:
    """The running task's body has returned: what it publishes now is its continuation (see :func:`continuing`)."""
    _continuing.set(task_id)


def continuing() -> bool:
    """Whether the running task is past its body, its chain's next step or callbacks being published: a
    publish that fails then gives the task's message back (project.celery) instead of failing a task that
    did its work (Celery would mark it failed and run its error callbacks)."""
    marked = _continuing.get()
    return marked is not None and marked == current_task_id()


def new_id() -> str:
    """A fresh correlation, saga or pipeline id: time-ordered (UUIDv7), so what is derived from it can be too."""
    return new_event_id()


#: The longest id the event log stores (its id columns are 255 characters).
MAX_ID_LENGTH = 255


def id_problem(value: Any) -> str | None:
    """What makes ``value`` unusable as a task, correlation or causation id, if anything: the event log
    must be able to store every id a message carries, or the message's transitions could not be recorded."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value:
        return "must not be empty"
    if len(value) > MAX_ID_LENGTH:
        return f"is {len(value)} characters, over the limit of {MAX_ID_LENGTH}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "holds a character UTF-8 cannot encode (a lone surrogate)"
    if not value.isprintable():
        bad = next(c for c in value if not c.isprintable())
        return f"holds the control character {bad!r}"
    return None


def id_problems(**ids: Any) -> list[dict[str, Any]]:
    """``InvalidInput``-style errors for every given id (None = not given) that :func:`id_problem` refuses."""
    return [
        {"loc": (name,), "msg": f"{name} {problem}", "type": "invalid_id"}
        for name, value in ids.items()
        if value is not None and (problem := id_problem(value)) is not None
    ]


def request_headers(request: Any) -> dict[str, Any]:
    """A running task's headers, with relaybus's ids that Celery moved onto the request put back."""
    headers: dict[str, Any] = dict(request.headers or {})
    for key in (CORRELATION_HEADER, CAUSATION_HEADER, REDRIVE_HEADER, LLM_REPLAY_HEADER, DEFERRALS_HEADER,
                BUDGET_HEADER, SENT_AT_HEADER, PUBLISHED_AT_HEADER, PUBLISHED_BY_HEADER, "root_id", "parent_id"):
        value = getattr(request, key, None)
        if value is not None and key not in headers:
            headers[key] = value
    return headers


@contextmanager
def workflow_context(
    correlation_id: str | None = None,
    causation_id: str | None = None,
    *,
    replay_of: str | None = None,
    llm_replay_of: str | None = None,
) -> Iterator[str]:
    """Publish everything inside the block under one correlation id (generated if not given).

    ``replay_of`` marks a re-driven workflow; ``llm_replay_of`` makes its agents serve the LLM
    completions recorded under that correlation id instead of calling the provider.
    """
    problems = id_problems(correlation_id=correlation_id, causation_id=causation_id)
    if problems:
        from relaybus.tasks.errors import InvalidInput

        raise InvalidInput("workflow_context", problems, kind="call of")
    corr = correlation_id or new_id()
    replay = {k: v for k, v in ((REPLAY_OF_HEADER, replay_of), (LLM_REPLAY_HEADER, llm_replay_of)) if v}
    t1 = _correlation.set(corr)
    t2 = _causation.set(causation_id)
    t3 = _replay.set(replay)
    try:
        yield corr
    finally:
        _correlation.reset(t1)
        _causation.reset(t2)
        _replay.reset(t3)


def _request_header(name: str) -> str | None:
    task = get_current_task()
    if task is None or task.request is None or task.request.id is None:
        return None
    value = getattr(task.request, name, None)
    if value is None and task.request.headers:
        value = task.request.headers.get(name)
    return str(value) if value is not None else None


def current_correlation_id() -> str | None:
    """The correlation id of the running task, or of the enclosing :func:`workflow_context`."""
    return _request_header(CORRELATION_HEADER) or _correlation.get()


def current_replay_marks() -> dict[str, str]:
    """The replay headers of the running task or the enclosing :func:`workflow_context`."""
    marks = {}
    for name in (REPLAY_OF_HEADER, LLM_REPLAY_HEADER):
        value = _request_header(name) or _replay.get().get(name)
        if value:
            marks[name] = value
    return marks


def current_causation_id() -> str | None:
    return _request_header(CAUSATION_HEADER) or _causation.get()


def current_task_id() -> str | None:
    task = get_current_task()
    if task is None or task.request is None or task.request.id is None:
        return None
    return str(task.request.id)


def propagate_ids(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """``before_task_publish`` handler: stamp correlation and causation ids on every message.

    A message that already carries them (a retry, a caller's explicit ids) keeps them. Inside a
    task, the correlation id is inherited and the causation id is the publishing task's id, so a
    chain step, a chord body or a callback points at the step that caused it.

    The sent time (:data:`SENT_AT_HEADER`, which orders the ids of the task's records, eventstore.ids) is
    kept too (a retry, a deferral: the task's first send). Whoever publishes a task id must give it the same
    time, or its records would not find their earlier copies: so it is the workflow's, the time of a
    time-ordered correlation id, else the publishing task's (a step a redelivered parent publishes again),
    else the clock's. Those last two only for a random (UUIDv4) task id, which Celery makes afresh for each
    send: any other id is chosen, so another publisher may send it again (a saga's sweep, a client starting a
    pipeline twice, a caller's own id): without a time-ordered correlation id it gets no time (uuid5 ids).
    """
    if headers is None:
        return
    if not headers.get(CORRELATION_HEADER):
        headers[CORRELATION_HEADER] = current_correlation_id() or new_id()
    for name in (LLM_REPLAY_HEADER, REPLAY_OF_HEADER):
        if not headers.get(name):
            inherited = _request_header(name) or _replay.get().get(name)
            if inherited:
                headers[name] = inherited
    if not headers.get(CAUSATION_HEADER):
        causation = current_task_id() or _causation.get()
        if causation:
            headers[CAUSATION_HEADER] = causation
    if time_ms(headers.get(SENT_AT_HEADER)) is None:
        sent_at = _sent_at(headers)
        if sent_at is not None:
            headers[SENT_AT_HEADER] = sent_at


def _sent_at(headers: dict[str, Any]) -> int | None:
    workflow = uuid7_ms(headers.get(CORRELATION_HEADER))
    if workflow is not None:
        return workflow
    if not _is_random(headers.get("id")):
        return None
    inherited = time_ms(_request_header(SENT_AT_HEADER))
    return inherited if inherited is not None else time.time_ns() // 1_000_000


def _is_random(value: Any) -> bool:
    try:
        return isinstance(value, str) and uuid.UUID(value).version == 4
    except ValueError:
        return False
