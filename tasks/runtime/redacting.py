"""The one redaction (relaybus.eventstore.redaction) at every sink Celery writes to on relaybus's behalf.

The event log redacts in its store; the dead-letter headers in tasks.runtime.deadletter. Here, what Celery
itself would show or keep in clear, each masked with the runtime config's :class:`~relaybus.eventstore.
redaction.Redactor` (``RELAYBUS_REDACT_KEYS``, ``RELAYBUS_REDACT_PATTERNS``):

* **task message headers** ``argsrepr``/``kwargsrepr`` (worker logs, ``task-sent``/``task-received`` events,
  Flower): rebuilt from the body, redacted and cut to :data:`REPR_MAX_CHARS` with ``…(N bytes)``, for every
  task message the app publishes (``apply_async``, ``send_task`` by name, chain steps, callbacks), led by the
  workflow's ``x_correlation_id`` so Flower's search finds a workflow's every task. The body
  itself is not touched: the task needs its real input. A whole input's repr in a header made any input
  over ~128 KB fail with AMQP ``FrameError 501``;
* **task events** (Flower, ``celery events``): ``args``, ``kwargs``, ``result``, ``exception`` and
  ``traceback`` of every ``task-*`` event, through the app's event dispatcher (:class:`RedactingEvents`);
* **worker logs**: every record's message and traceback, by a filter on the handlers Celery sets up
  (:func:`redact_worker_logs`); the success line no longer prints the result (:data:`SUCCESS_LOG`);
* **the result backend** (tasks.runtime.chords.RedisBackend): stored results, exceptions and tracebacks
  (:func:`redact_stored`).
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from functools import cached_property
from typing import Any

from celery import Celery
from celery.app.events import Events
from celery.events.dispatcher import EventDispatcher

from relaybus.eventstore.redaction import Redactor, bounded_repr
from relaybus.tasks.runtime.config import runtime_config
from relaybus.tasks.runtime.context import CORRELATION_HEADER
from relaybus.tasks.runtime.sentevents import UnconfirmedEvents

#: The longest ``argsrepr``/``kwargsrepr`` and event field, in characters, before ``…(N bytes)``.
REPR_MAX_CHARS = 1024
#: Celery's success line without the result: a result (LLM text included) is in the event log, not in logs.
SUCCESS_LOG = "Task %(name)s[%(id)s] succeeded in %(runtime)ss"
#: The fields of task events that carry task data; all are redacted, all but the traceback bounded.
EVENT_FIELDS = ("args", "kwargs", "result", "exception", "traceback")


def redactor_of(app: Celery) -> Redactor:
    return runtime_config(app).redactor


def shown(redactor: Redactor, value: Any, max_chars: int | None = REPR_MAX_CHARS) -> str:
    """What a sink shows of ``value``: redacted (text as text, anything else before its repr), then cut to
    ``max_chars`` with ``…(N bytes)`` (``None``: not cut)."""
    if not isinstance(value, str):
        return bounded_repr(redactor.redact(value), max_chars or 2**62)
    text = redactor.redact_text(value)
    if max_chars is None or len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}…({len(text.encode('utf-8', 'surrogatepass'))} bytes)"


def redact_task_headers(app: Celery, body: Any, headers: Any) -> None:
    """``argsrepr``/``kwargsrepr`` of a protocol-2 task message rebuilt from its body, redacted and bounded
    (a ``before_task_publish`` handler: the headers are published as they are left here)."""
    if not isinstance(headers, dict) or "argsrepr" not in headers:
        return
    if not (isinstance(body, list | tuple) and len(body) == 3):
        return
    args, kwargs = body[0], body[1]
    redactor = redactor_of(app)
    shown_kwargs = dict(kwargs or {})
    correlation = headers.get(CORRELATION_HEADER)
    if isinstance(correlation, str) and correlation:
        # First, so the bound never cuts it: Flower shows and searches kwargsrepr, and a workflow's id there
        # finds all its tasks (Flower's search box, /api/tasks?search=).
        shown_kwargs = {CORRELATION_HEADER: correlation, **shown_kwargs}
    headers["argsrepr"] = bounded_repr(redactor.redact(list(args or ())), REPR_MAX_CHARS)
    headers["kwargsrepr"] = bounded_repr(redactor.redact(shown_kwargs), REPR_MAX_CHARS)
    _SHOWN.set((headers.get("id"), headers["argsrepr"], headers["kwargsrepr"]))


#: The reprs :func:`redact_task_headers` made for the message this thread publishes now: its ``task-sent``
#: event (built by Celery before ``before_task_publish``, sent just after the publish) shows the same. The
#: event often reaches Flower after the worker's ``task-received``, and Celery's state lets it overwrite them.
_SHOWN: ContextVar[tuple[Any, str, str] | None] = ContextVar("relaybus_shown_reprs", default=None)


class RedactingEventDispatcher(EventDispatcher):  # type: ignore[misc]  # celery is untyped
    """Celery's event dispatcher, with the task data of every ``task-*`` event redacted and bounded."""

    app: Celery

    def send(self, type: str, *args: Any, **fields: Any) -> Any:
        """The worker's events (``task-received``, ``task-succeeded``, ``task-failed``, …)."""
        return super().send(type, *args, **self._redacted(type, fields))

    def publish(self, type: str, fields: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        """A client's ``task-sent``, whose fields Celery built before ``before_task_publish`` ran: given the
        reprs that handler put in the message (:data:`_SHOWN`)."""
        shown_now = _SHOWN.get()
        if type == "task-sent" and shown_now is not None and shown_now[0] == fields.get("uuid"):
            fields = {**fields, "args": shown_now[1], "kwargs": shown_now[2]}
        if type == "task-sent" and args:  # not on the task's confirmed channel (tasks.runtime.sentevents)
            args = (self._unconfirmed, *args[1:])
        return super().publish(type, self._redacted(type, fields), *args, **kwargs)

    @cached_property
    def _unconfirmed(self) -> UnconfirmedEvents:
        return UnconfirmedEvents(self.app)

    def _redacted(self, type: str, fields: dict[str, Any]) -> dict[str, Any]:
        if not type.startswith("task-"):
            return fields
        redactor = redactor_of(self.app)
        out = dict(fields)
        for name in EVENT_FIELDS:
            value = out.get(name)
            if value is not None:
                out[name] = shown(redactor, value, None if name == "traceback" else REPR_MAX_CHARS)
        return out


class RedactingEvents(Events):  # type: ignore[misc]
    """The app's events (``Celery(events=...)``): every dispatcher it makes redacts."""

    dispatcher_cls = "relaybus.tasks.runtime.redacting:RedactingEventDispatcher"


class RedactingLogFilter(logging.Filter):
    """Masks each record's message and traceback before a handler writes it."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__("relaybus.redaction")
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format: leave it to the handler, which reports it
            return True
        redacted = self.redactor.redact_text(message)
        if redacted is not message:
            record.msg, record.args = redacted, ()
        data = getattr(record, "data", None)  # Celery's trace lines carry their context (result, args) here too
        if isinstance(data, dict):
            record.data = self.redactor.redact(data)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.redact_text(record.exc_text)
            # A formatter that formats exc_info itself would print the traceback in clear: formatters print
            # exc_text when exc_info is gone (logging.Formatter, relaybus.logs.JsonFormatter).
            record.exc_info = None
        return True


def redact_worker_logs(app: Celery, logger: logging.Logger | None) -> None:
    """Add the filter to every handler of ``logger`` (the root or the task logger Celery set up), once."""
    if logger is None:
        return
    for handler in logger.handlers:
        if not any(isinstance(f, RedactingLogFilter) for f in handler.filters):
            handler.addFilter(RedactingLogFilter(redactor_of(app)))


def quiet_success_log() -> None:
    """Celery's "Task … succeeded in …s: <result>" line, without the result (looked up at each log)."""
    from celery.app import trace

    trace.LOG_SUCCESS = SUCCESS_LOG


def redact_stored(app: Celery, result: Any, traceback: Any) -> tuple[Any, Any]:
    """A result as the backend is about to store it (an exception: ``{"exc_message": [...], ...}``) and its
    traceback text, redacted."""
    redactor = redactor_of(app)
    if isinstance(result, dict) and "exc_message" in result:
        message = result["exc_message"]
        message = list(message) if isinstance(message, tuple) else message
        result = {**result, "exc_message": redactor.redact(message)}
    else:
        result = redactor.redact(list(result) if isinstance(result, tuple) else result)
    if isinstance(traceback, str):
        traceback = redactor.redact_text(traceback)
    return result, traceback
