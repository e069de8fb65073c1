"""What the worker's main process records and does for an agent task that ends outside its pool child.

The pool child records every transition it sees (tasks.runtime.hooks). Some ends happen where the child
cannot record them, and Celery's ``Request`` handles them in the main process:

* a **hard time limit**: the child is killed. Recorded as ``task.failed`` (error ``TimeLimitExceeded``) and
  ``task.dead_lettered`` with reason ``time-limit``, and the call is dead-lettered, before Celery marks the
  failure (which runs the task's error callbacks: its workflow takes its failure path) and acks;
* a **revoke** (of a queued task, or a running one with ``terminate``): recorded as ``task.revoked``; Celery
  marks it revoked, and here its error callbacks run too (Celery runs them only for failures), so a
  revoked step ends its pipeline or compensates its saga instead of leaving it running;
* a **rejection** without requeue (``Reject(requeue=False)`` from the task): recorded as ``task.rejected``.

Each of those records is preceded by the message's ``task.sent`` when its publisher left that to the receiver
(a saga's step: tasks.runtime.recording.wiring), since no start record may have been written.

The main process serves every pool child: it waits for an unavailable event store only briefly
(``MAIN_PROCESS_STORE_WAIT_S``, tasks.runtime.recording.wiring). If the time-limit record cannot be
written, the message is requeued instead of acked (the redelivery limit ends a loop, tasks.runtime.consumer).
"""

from __future__ import annotations

import socket
from contextlib import AbstractContextManager
from typing import Any

from billiard.einfo import ExceptionInfo
from celery.exceptions import Reject, TaskRevokedError, TimeLimitExceeded
from celery.utils.log import get_logger
from celery.worker.request import Request
from celery.worker.state import task_ready

from relaybus.eventstore import NewEvent, StoreUnavailable
from relaybus.eventstore.types import TASK_REJECTED, TASK_REVOKED
from relaybus.tasks.runtime.context import CORRELATION_HEADER, id_problem, request_headers, workflow_context
from relaybus.tasks.runtime.deadletter import (
    TIME_LIMIT_REASON,
    dead_letter_call,
    dead_lettered_of,
    dead_lettered_text,
)
from relaybus.tasks.runtime.recording import records
from relaybus.tasks.runtime.recording.wiring import record_from_main_process

logger = get_logger(__name__)



class AgentRequest(Request):  # type: ignore[misc]
    """The Celery request class of agent tasks (``AgentTask.Request``). See the module docstring.

    Whatever Celery publishes from here (the error callbacks it runs for a failure) is published in the
    task's workflow: in the main process no task is running, and the callbacks would otherwise get a new
    correlation id and end some other, unknown workflow."""

    _time_limit_handled = False
    _time_limit_requeued = False
    #: ``dead-lettered to <queue>: <reason>`` once this task was dead-lettered (here, or in the pool child,
    #: whose error carries it): the ``task-failed`` event says it before the error, so Flower shows it.
    _dead_lettered: str | None = None

    def send_event(self, type: str, **fields: Any) -> None:
        if type == "task-failed" and self._dead_lettered and isinstance(fields.get("exception"), str):
            fields["exception"] = f"{self._dead_lettered}: {fields['exception']}"
        super().send_event(type, **fields)

    def on_timeout(self, soft: bool, timeout: float) -> None:
        if soft or self.task is None:
            super().on_timeout(soft, timeout)
            return
        if not self._time_limit_handled:
            self._handle_time_limit(TimeLimitExceeded(timeout))
        if self._time_limit_requeued:
            return
        with self._in_workflow():
            super().on_timeout(soft, timeout)

    def on_failure(self, exc_info: ExceptionInfo, send_failed_event: bool = True, return_ok: bool = False) -> None:
        exc = getattr(exc_info, "exception", None)
        exc = getattr(exc, "exc", exc)  # ExceptionWithTraceback
        self._dead_lettered = self._dead_lettered or dead_lettered_of(exc, getattr(exc_info, "traceback", None))
        if self.task is not None:
            if isinstance(exc, TimeLimitExceeded) and not self._time_limit_handled:
                # billiard reports a hard time limit here too, before on_timeout: record it first, so the
                # error callbacks Celery runs next find the failure in the log.
                if not self._handle_time_limit(exc):
                    return
            elif isinstance(exc, Reject) and not exc.requeue:
                try:
                    self._record([
                        records.ended(self.task, self._context, TASK_REJECTED, _host(),
                                      {"error_type": "Reject", "error_message": str(exc.reason)[:2000]})
                    ])
                except Exception:
                    logger.exception("could not record the rejection of %s[%s]", self.task.name, self.id)
        with self._in_workflow():
            super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def _announce_revoked(self, reason: str, terminated: bool, signum: Any, expired: bool) -> None:
        if self.task is not None and not self._already_revoked:
            context = self._context
            try:
                self._record([
                    records.ended(self.task, context, TASK_REVOKED, _host(), {
                        "reason": reason, "terminated": terminated,
                        "signum": str(signum) if signum is not None else None, "expired": expired,
                    })
                ])
            except Exception:
                logger.exception("could not record the revoke of %s[%s]", self.task.name, self.id)
        with self._in_workflow():
            super()._announce_revoked(reason, terminated, signum, expired)
            if self.task is not None:
                _call_errbacks(self, TaskRevokedError(f"{reason}: {self.task.name}[{self.id}]"))

    def _handle_time_limit(self, error: TimeLimitExceeded) -> bool:
        """Record and dead-letter a hard time limit, once. False: the record could not be written and the
        message was requeued instead (Celery must not ack it)."""
        self._time_limit_handled = True
        try:
            self._record(records.failed(self.task, self._context, error, float(error.args[0] if error.args else 0),
                                        TIME_LIMIT_REASON, _host()))
        except StoreUnavailable as exc:
            # No ack without the record: give the message back (the redelivery limit ends a loop).
            logger.error("hard time limit of %s[%s]: the event store is away (%s); message requeued",
                         self.task.name, self.id, exc)
            self._time_limit_requeued = True
            task_ready(self)
            self.reject(requeue=True)
            return False
        except Exception:
            logger.exception("hard time limit of %s[%s]: its record was refused; dead-lettering it anyway",
                             self.task.name, self.id)
        self._dead_letter(TIME_LIMIT_REASON, error)
        return True

    def _in_workflow(self) -> AbstractContextManager[str]:
        context = self._context
        return in_workflow_of(context, self.id)

    # -- helpers -----------------------------------------------------------------------------------

    def _record(self, events: list[NewEvent]) -> None:
        """Append ``events``; first the message's ``task.sent`` if its publisher left it to the receiver (a
        saga's step, tasks.runtime.recording.wiring): an end recorded here may come before any start record."""
        copy = self._sent_copy()
        if copy is None:
            record_from_main_process(self.task.app, events)
            return
        try:
            record_from_main_process(self.task.app, [copy, *events])
        except StoreUnavailable:
            raise
        except Exception:
            # The copy must not cost the end its record: a copy the log refuses is left out.
            logger.exception("the event log refused the task.sent of %s[%s]; recording its end without it",
                             self.task.name, self.id)
            record_from_main_process(self.task.app, events)

    def _sent_copy(self) -> NewEvent | None:
        try:
            return records.sent_left_to_receiver(self.task, self._context, self.args, self.kwargs, _host())
        except Exception:
            logger.exception("could not rebuild the task.sent of %s[%s]", self.task.name, self.id)
            return None

    def _dead_letter(self, reason: str, error: BaseException) -> None:
        try:
            dlq = dead_letter_call(self.task, self._context, self.args, self.kwargs, reason=reason, error=error)
            self._dead_lettered = dead_lettered_text(dlq, reason)
        except Exception:
            logger.exception("could not dead-letter %s[%s] (%s)", self.task.name, self.id, reason)


def in_workflow_of(context: Any, task_id: str) -> AbstractContextManager[str]:
    """Publish in the workflow of the task ``context`` describes (its correlation id; the task as cause)."""
    correlation = getattr(context, CORRELATION_HEADER, None) or request_headers(context).get(CORRELATION_HEADER)
    if not isinstance(correlation, str) or id_problem(correlation) is not None:
        correlation = task_id
    return workflow_context(correlation, task_id if id_problem(task_id) is None else None)


def _call_errbacks(request: AgentRequest, error: BaseException) -> None:
    """Run the error callbacks of a request Celery ended without failing it (a revoke): its workflow's
    failure path. A chord member's chord is failed by Celery itself (``mark_as_revoked``)."""
    context = request._context
    if not context.errbacks:
        return
    try:
        request.task.backend._call_task_errbacks(context, error, None)
    except Exception:
        logger.exception("error callbacks of the revoked %s[%s] failed", request.task.name, request.id)


def _host() -> str:
    return socket.gethostname()
