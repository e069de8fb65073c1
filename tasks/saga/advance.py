"""Saga steps and compensations that advance their saga themselves: one message per step.

A saga used to move in two hops per step: the step on its agent's queue, then a callback on the system
queue (``relaybus.saga.step_done``) to record its outcome, decide and send the next step. The second hop
cost a message, a worker slot, and three records of its own (sent, started, ended) for nothing the
step's worker could not do: it has the outcome in hand, the saga's stream (its fence read it a moment
ago) and the broker. So a task declared with ``saga_step`` / ``saga_compensation`` is a
:class:`SagaTask`, and its :class:`AdvanceSaga` hook makes the saga's move (:func:`~tasks.saga.outcomes.advance_saga`)
in the worker that ran it:

* with the task's own terminal record, never before it: the saga never holds an outcome the task's log
  lacks. A success's records (the held start records and ``task.succeeded``), and a failure's
  (``task.failed`` with its ``task.dead_lettered``, once the dead letter is published), commit in the
  transaction that records the outcome in the saga (:class:`SagaRecording`), one commit a step;
* under the same optimistic concurrency on the saga's stream as any move (a guess from the fence is
  checked by the append's expected version, never trusted);
* before the message is acknowledged: a worker killed in between gives the message back, the step
  replays its first result under its key, and the redelivered report sends again what its outcome
  caused (the saga records nothing twice).

If the move cannot be made now (the event store or the broker away, the saga changing too often), the
outcome goes to ``relaybus.saga.outcome`` on the system queue, which retries it with backoff, as the
callback did; if even that cannot be sent, the message goes back to the broker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, ClassVar, Literal

from celery import shared_task
from celery.exceptions import Reject
from celery.utils.log import get_task_logger
from pydantic import BaseModel, JsonValue

from relaybus.eventstore import NewEvent
from relaybus.sagas import LoadedSaga
from relaybus.tasks.errors import AgentError, NotRun, error_message_of, error_type_of
from relaybus.tasks.runtime.context import CORRELATION_HEADER, request_headers
from relaybus.tasks.runtime.hooks import (
    DEFAULT_HOOKS,
    NO_RESULT,
    Call,
    Hook,
    Recording,
    record_failure,
    recording_guard,
)
from relaybus.tasks.runtime.recording import records
from relaybus.tasks.runtime.task import AgentContext, AgentSpec, AgentTask
from relaybus.tasks.saga.calls import CallRef
from relaybus.tasks.saga.dispatch import OUTCOME
from relaybus.tasks.saga.outcomes import RETRYABLE, advance_saga

logger = get_task_logger(__name__)

Kind = Literal["step", "compensation"]

#: The saga as the running step's fence read it: (task id, saga), so the move decides on it without a read.
_FENCED: ContextVar[tuple[str, LoadedSaga] | None] = ContextVar("relaybus_saga_fenced", default=None)
#: A success's ``task.succeeded``, not written yet: (task id, record), for the move to commit with its own.
_SUCCEEDED: ContextVar[tuple[str, NewEvent] | None] = ContextVar("relaybus_saga_succeeded", default=None)
#: A failure's ``task.failed`` and ``task.dead_lettered``, not written yet: (task id, records), likewise.
_FAILED: ContextVar[tuple[str, list[NewEvent]] | None] = ContextVar("relaybus_saga_failed", default=None)


def remember_fenced(task_id: str | None, loaded: LoadedSaga) -> None:
    """Keep what the fence of the running step read, for its move (tasks.saga.steps)."""
    if task_id:
        _FENCED.set((task_id, loaded))


def _take_fenced(task_id: str | None) -> LoadedSaga | None:
    fenced = _FENCED.get()
    _FENCED.set(None)
    return fenced[1] if fenced is not None and fenced[0] == task_id else None


def error_data(task_id: str | None, error: BaseException) -> dict[str, Any]:
    """What ``saga.step.failed`` / ``saga.compensation.failed`` holds: the failed task and its error."""
    return {"task_id": task_id, "error_type": error_type_of(error), "error_message": error_message_of(error)[:2000]}


class SagaRecording(Recording):
    """:class:`Recording`, except that a success's ``task.succeeded``, and a failure's ``task.failed`` with its
    ``task.dead_lettered``, are left to :class:`AdvanceSaga`, which commits them, with the task's held start
    records, in the transaction of the saga's move. Only with a recorder that commits its own transactions (no
    group commit: a group commits them with other tasks'); never for a step that refused to run (its saga is
    told nothing)."""

    def on_success(self, call: Call, result: Any) -> None:
        if not _joins_move(call):
            super().on_success(call, result)
            return
        duration = time.monotonic() - call.started
        _SUCCEEDED.set((call.request.id, records.succeeded(call.task, call.request, result, duration,
                                                            getattr(call.recorder, "host", ""))))

    def on_failure(self, call: Call, error: BaseException, reason: str) -> Any:
        if isinstance(error, NotRun) or not _joins_move(call):
            return super().on_failure(call, error, reason)
        duration = time.monotonic() - call.started
        _FAILED.set((call.request.id, records.failed(call.task, call.request, error, duration, reason,
                                                      getattr(call.recorder, "host", ""))))
        return NO_RESULT


def _joins_move(call: Call) -> bool:
    """Whether ``call``'s end records can commit with its saga's move (:class:`SagaRecording`)."""
    direct = bool(getattr(call.recorder, "writes_directly", False))
    return direct and _ref_of(call) is not None and bool(call.request.id)


class _OwnRecords:
    """A saga task's own end records with its held start records, for its saga's move to commit; written alone,
    once, by ``write_alone`` if the move did not commit them (the held records given back first)."""

    def __init__(self, call: Call, ends: list[NewEvent], write_alone: Callable[[], None]) -> None:
        recorder: Any = call.recorder
        self._recorder = recorder
        self._task_id: str = call.request.id
        with recorder.held.io_lock:
            self._held: list[NewEvent] = recorder.held.take(self._task_id)
        self.records = [*self._held, *ends]
        self._write_alone = write_alone
        self.written = False

    def write(self) -> None:
        if not self.written:
            self.written = True
            self._recorder.held.give_back(self._task_id, self._held)
            self._write_alone()


class AdvanceSaga(Hook):
    """Makes the saga's move with, or once, the task's own terminal record is written (module docstring)."""

    def before_call(self, call: Call) -> None:
        _FENCED.set(None)
        _SUCCEEDED.set(None)
        _FAILED.set(None)

    def on_success(self, call: Call, result: Any) -> None:
        succeeded = _SUCCEEDED.get()
        _SUCCEEDED.set(None)
        if succeeded is None or succeeded[0] != call.request.id:
            self._advance(call, True, result)
            return
        recorder: Any = call.recorder
        task_id, record = succeeded

        def append_alone() -> None:
            """The task's records as any task's (waiting for the store; else the message goes back)."""
            with recording_guard:
                recorder.append([record], task_id=task_id)

        own = _OwnRecords(call, [record], append_alone)
        try:
            if self._advance(call, True, result, also=own.records, write_own=own.write):
                own.written = True  # committed with the saga's move
        finally:
            own.write()

    def on_failure(self, call: Call, error: BaseException, reason: str) -> Any:
        if isinstance(error, NotRun):  # a stale step: its saga moved on without it and is told nothing
            _take_fenced(call.request.id)
            return NO_RESULT
        data = error_data(call.request.id, error)
        failed = _FAILED.get()
        _FAILED.set(None)
        if failed is None or failed[0] != call.request.id:
            self._advance(call, False, data)
            return NO_RESULT
        # Alone, the task's records are written as any failed task's (the refused-record fallback included).
        own = _OwnRecords(call, failed[1], lambda: record_failure(call, error, reason))
        try:
            joined = self._advance(call, False, data, also=own.records, write_own=own.write)
        except Exception:
            if own.written:
                raise
            # The move with the records was refused (a record the database cannot store as it is): the
            # records alone, as any task's, then the move alone.
            logger.warning("saga step %s[%s]: its failure records could not commit with its saga's move; written "
                           "alone", call.task.name, call.request.id, exc_info=True)
            own.write()
            self._advance(call, False, data)
            return NO_RESULT
        if not joined:
            own.write()
        return NO_RESULT

    def _advance(
        self,
        call: Call,
        ok: bool,
        data: JsonValue,
        also: list[NewEvent] | None = None,
        write_own: Callable[[], None] | None = None,
    ) -> bool:
        """Make the move; whether ``also`` (the task's own records) was committed with it. If the move cannot be
        made, ``write_own`` writes them before the outcome is handed over."""
        loaded = _take_fenced(call.request.id)
        ref = _ref_of(call)
        if ref is None:
            return False  # not called as a saga dispatch (no saga call in its kwargs): nothing to advance
        request = call.request
        redelivered = bool((request.delivery_info or {}).get("redelivered")) or bool(request.retries)
        try:
            moved = advance_saga(call.task.app, ref, ok, data, redelivered=redelivered, loaded=loaded, also=also or ())
        except RETRYABLE as error:
            logger.warning(
                "saga %s: %s/%s attempt %s could not advance in its worker (%s: %s); handed to %s",
                ref.saga_id, ref.step, ref.member, ref.attempt, type(error).__name__, error, OUTCOME,
            )
            if write_own is not None:
                write_own()  # the task's own records first: the saga never holds an outcome its log lacks
            _hand_over(call, ref, ok, data)
            return False
        return moved is not None and bool(also)


def _ref_of(call: Call) -> CallRef | None:
    kwargs = call.kwargs
    kind: Kind = getattr(call.task, "saga_kind", "step")
    try:
        return CallRef(
            kind=kind,
            saga_id=kwargs["saga_id"],
            step=kwargs["step"],
            member=kwargs["member"],
            attempt=kwargs["attempt"],
        )
    except (KeyError, TypeError, ValueError):
        return None


def _hand_over(call: Call, ref: CallRef, ok: bool, data: JsonValue) -> None:
    """Give the outcome to ``relaybus.saga.outcome`` (retried with backoff on the system queue); if it
    cannot be sent either, give the message back: the step replays its result and reports again."""
    app = call.task.app
    correlation = request_headers(call.request).get(CORRELATION_HEADER)
    try:
        app.send_task(
            OUTCOME,
            kwargs={"ref": ref.model_dump(mode="json"), "ok": ok, "data": data},
            headers={CORRELATION_HEADER: correlation} if correlation else None,  # in the saga's timeline
        )
    except RETRYABLE as error:
        raise Reject(f"the saga's move could not be made nor handed over, message requeued: {error}",
                     requeue=True) from error


class SagaTask(AgentTask):
    """An agent task that advances its saga itself (:class:`AdvanceSaga` after the default hooks)."""

    hooks: ClassVar[tuple[Hook, ...]] = (
        *(SagaRecording() if type(hook) is Recording else hook for hook in DEFAULT_HOOKS), AdvanceSaga()
    )
    advances_saga: ClassVar[bool] = True  # what tasks.saga.dispatch looks for (ADVANCES_SAGA)
    saga_kind: ClassVar[Kind] = "step"
    #: A step's own input model (``saga_step(input=...)``); ``None`` for a compensation.
    step_input_model: ClassVar[type[BaseModel] | None] = None
    #: A step that reads its saga before it runs (``saga_step(fence=True)``): it waits for a saga that is still
    #: being recorded when its message says so (:data:`~tasks.saga.steps.SAGA_STARTING_HEADER`).
    fenced: ClassVar[bool] = False
    # Nobody reads a saga task's result from the result backend: its outcome is in the saga's log, and
    # no callback is linked to it. Storing it (STARTED, then SUCCESS) cost two Redis writes per step.
    ignore_result = True


def saga_task(
    agent_name: str,
    task_name: str,
    kind: Kind,
    *,
    input: type[BaseModel],
    output: type[BaseModel],
    fn: Callable[[Any, AgentContext], Any],
    max_retries: int | None = None,
    step_input: type[BaseModel] | None = None,
    fenced: bool = False,
) -> AgentTask:
    """Register ``fn`` as the :class:`SagaTask` ``task_name`` of the agent ``agent_name``: what
    :func:`tasks.runtime.task.agent` does, on the saga task base. ``step_input``: a step's own input model,
    which :func:`~tasks.saga.client.start_saga` checks a saga's input against in the caller."""
    spec = AgentSpec(agent_name, input, output, fn, max_retries=max_retries)

    def run(*args: Any, **kwargs: Any) -> Any:  # the body is AgentTask.__call__
        raise AgentError("AgentTask.__call__ runs agents; run() is never called")

    run.__name__, run.__doc__ = getattr(fn, "__name__", task_name), fn.__doc__
    task: AgentTask = shared_task(
        name=task_name, base=SagaTask, spec=spec, bind=False, saga_kind=kind, step_input_model=step_input,
        fenced=fenced,
    )(run)
    return task
