"""What every agent task does around its body, one concern per hook, in the order of ``AgentTask.hooks``.

In the spirit of dramatiq's middleware: a :class:`Hook` has a no-op method for each point of a task's
life, and a concern overrides the points it needs. Not Celery signals: Celery logs and swallows a signal
handler's error, and a terminal record or a dead letter must never be dropped silently. A hook's error
propagates like the task's own (``Reject`` from :class:`Recording` gives the message back).

The points, for one delivery of a task (every hook that overrides a point runs, in list order)::

    before_call(call)                   the task begins
    on_retry(call, error, countdown)    a transient error, retries left: before ``task.retry``
    on_failure(call, error, reason)     a failure for good; may return a result to use instead of raising
    on_success(call, result)            the body returned
    after_return(task, request, ...)    Celery stored the result (``Task.after_return``)

The default order, and why: :class:`DeadLetters` before :class:`Recording` (a ``task.dead_lettered``
record names a dead letter that already exists), then :class:`SettleChordMembers` (a settled member is
recorded and dead-lettered like any other before it hands back its marked failure), and
:class:`RepairChords` after the result is stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from celery.exceptions import Reject, Retry, SoftTimeLimitExceeded
from celery.utils.log import get_logger

from relaybus.eventstore import StoreUnavailable
from relaybus.tasks.errors import FailedBefore, NotRun, RecordFailed
from relaybus.tasks.runtime.chordrepair import fail_lost_chord, finish_claimed_chord
from relaybus.tasks.runtime.context import request_headers
from relaybus.tasks.runtime.deadletter import dead_letter_call, dlq_for, mark_dead_lettered, original_queue_of
from relaybus.tasks.runtime.recording.eventlog import STORE_WAIT_UNTIL
from relaybus.tasks.runtime.settle import SETTLE_HEADER, member_failure

if TYPE_CHECKING:
    from relaybus.tasks.runtime.recording import Recorder
    from relaybus.tasks.runtime.task import AgentTask

logger = get_logger(__name__)

#: What :meth:`Hook.on_failure` returns to let the failure raise.
NO_RESULT: Final[Any] = object()


@dataclass(slots=True)
class Call:
    """One delivery of an agent task, as its hooks see it (one per call, made by the task base)."""

    task: AgentTask
    request: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    started: float  # time.monotonic()
    recorder: Recorder
    #: A redelivery of a task whose success is stored: the body does not run (tasks.runtime.redelivery).
    resumed: bool = False


class Hook:
    """Base of every hook: each point is a no-op, and a hook that does not override a point costs nothing
    there (:func:`points` leaves it out)."""

    def before_call(self, call: Call) -> None:
        """The task begins, before its input is validated."""

    def on_retry(self, call: Call, error: BaseException, countdown: float) -> None:
        """The task will be retried in ``countdown`` seconds (called before ``task.retry``)."""

    def on_failure(self, call: Call, error: BaseException, reason: str) -> Any:
        """The task failed for good (``reason``: ``permanent-error``, ``retries-exhausted``
        or ``budget-exceeded``). Return a
        result to end with instead of raising, or :data:`NO_RESULT`; the first result returned is used."""
        return NO_RESULT

    def on_success(self, call: Call, result: Any) -> None:
        """The body returned ``result`` (its output as JSON)."""

    def after_return(self, task: AgentTask, request: Any, status: str, retval: Any) -> None:
        """Celery stored the task's result in state ``status``."""


class Points(NamedTuple):
    """The bound methods each point of a task's life calls, in order."""

    before_call: tuple[Callable[[Call], None], ...]
    on_retry: tuple[Callable[[Call, BaseException, float], None], ...]
    on_failure: tuple[Callable[[Call, BaseException, str], Any], ...]
    on_success: tuple[Callable[[Call, Any], None], ...]
    after_return: tuple[Callable[[AgentTask, Any, str, Any], None], ...]


def points(hooks: tuple[Hook, ...]) -> Points:
    """Index ``hooks`` once per task class: each point keeps only the hooks that override it."""
    return Points(
        *(
            tuple(getattr(hook, name) for hook in hooks if getattr(type(hook), name) is not getattr(Hook, name))
            for name in Points._fields
        )
    )


class _RecordOrRequeue:
    """Around a write that must not be lost. What can go wrong while recording, and what it becomes:

    * the event store stays away longer than the recorder may wait for it (tasks.runtime.recording.eventlog),
      or the task's soft time limit fires inside the write: ``Reject(requeue=True)``, the message goes back
      to the broker and the task runs again later instead of ending without its record;
    * anything else (the database refuses the record as it is, its disk is full):
      :class:`~tasks.errors.RecordFailed`, which the task base dead-letters with reason ``record-failed``.

    One shared instance: no allocation per call."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None or isinstance(exc, Reject | Retry | RecordFailed):
            return
        if isinstance(exc, StoreUnavailable):
            raise Reject(f"event store unavailable, message requeued: {exc}", requeue=True) from exc
        if isinstance(exc, SoftTimeLimitExceeded):
            raise Reject("the soft time limit fired while recording, message requeued", requeue=True) from exc
        if isinstance(exc, Exception):
            raise RecordFailed(f"the event log refused the record: {type(exc).__name__}: {exc}") from exc


_durably = _RecordOrRequeue()
#: The guard, for task bases other than the agents' (tasks.runtime.system).
recording_guard = _durably

#: Waiting for the store ends this long before a task's soft time limit (at most; 10 % of a short limit).
SOFT_LIMIT_MARGIN_S = 5.0


def store_wait_deadline(call: Call) -> float | None:
    """When waiting for the event store must end for this call: before its soft time limit, if it has one."""
    limits = getattr(call.request, "timelimit", None) or (None, None)
    soft = (limits[1] if len(limits) > 1 else None) or call.task.soft_time_limit
    soft = soft or call.task.app.conf.task_soft_time_limit
    if not soft:
        return None
    return call.started + float(soft) - min(SOFT_LIMIT_MARGIN_S, 0.1 * float(soft))


class Recording(Hook):
    """Records the task's transitions in the event log (tasks.runtime.recording).

    Every write waits for the store at most until shortly before the task's soft time limit
    (:func:`store_wait_deadline`), so the limit never fires inside the wait."""

    def before_call(self, call: Call) -> None:
        if not call.resumed:  # a resumed task does not start again: nothing of it runs
            call.recorder.task_started(call.task, call.request, call.args, call.kwargs)
        STORE_WAIT_UNTIL.set(store_wait_deadline(call))

    def on_retry(self, call: Call, error: BaseException, countdown: float) -> None:
        with _durably:
            call.recorder.task_retried(call.task, call.request, error, countdown)

    def on_failure(self, call: Call, error: BaseException, reason: str) -> Any:
        record_failure(call, error, reason)
        return NO_RESULT

    def on_success(self, call: Call, result: Any) -> None:
        duration = time.monotonic() - call.started
        with _durably:
            call.recorder.task_succeeded(call.task, call.request, result, duration)

    def after_return(self, task: AgentTask, request: Any, status: str, retval: Any) -> None:
        STORE_WAIT_UNTIL.set(None)  # Celery has published what follows the task (chain, callbacks)


def record_failure(call: Call, error: BaseException, reason: str) -> None:
    """Record how ``call`` failed for good: ``task.failed`` with its dead letter's ``task.dead_lettered``, or
    ``task.rejected`` for a task that refused to run (:class:`~tasks.errors.NotRun`)."""
    duration = time.monotonic() - call.started
    if isinstance(error, NotRun):  # it refused to run: its end is a rejection, not a failure
        with _durably:
            call.recorder.task_rejected(call.task, call.request, error, duration, reason=reason)
        return
    try:
        with _durably:
            call.recorder.task_failed(call.task, call.request, error, duration, dead_letter_reason=reason)
    except RecordFailed as refused:
        # The record as it is cannot be stored (its error message, say): record the failure without
        # it. If even that is refused (the ids themselves, a full disk), the dead letter keeps the task.
        plain = RecordFailed(f"{type(error).__name__} (its record was refused: {refused})")
        try:
            with _durably:
                call.recorder.task_failed(call.task, call.request, plain, duration, dead_letter_reason=reason)
        except RecordFailed:
            logger.exception("task %s[%s] failed and no record of it could be written; its dead letter "
                             "(reason %s) is all that is left", call.task.name, call.request.id, reason)


class DeadLetters(Hook):
    """Puts a task that failed for good, with its reason, in the dead-letter queue (tasks.runtime.deadletter);
    not one that refused to run (:class:`~tasks.errors.NotRun`)."""

    def on_failure(self, call: Call, error: BaseException, reason: str) -> Any:
        if isinstance(error, NotRun):  # nothing ran and nothing is wanted: nothing for a person to redrive
            return NO_RESULT
        if isinstance(error, FailedBefore) and error.lettered:  # its letter went before its record: it is there
            mark_dead_lettered(error, dlq_for(original_queue_of(call.task, call.request)), reason)
            return NO_RESULT
        dead_letter_call(call.task, call.request, call.args, call.kwargs, reason=reason, error=error)
        return NO_RESULT


class SettleChordMembers(Hook):
    """A chord member sent with the ``header`` set (tasks.pipelines.canvas) that failed for good returns a
    marked failure (tasks.runtime.settle), so the callback receives it instead of the chord failing."""

    def __init__(self, header: str = SETTLE_HEADER) -> None:
        self.header = header

    def on_failure(self, call: Call, error: BaseException, reason: str) -> Any:
        if request_headers(call.request).get(self.header):
            return member_failure(call.task.name, call.request.id, error)
        return NO_RESULT


class RepairChords(Hook):
    """Once a chord member's result is stored, makes sure its chord cannot hang (tasks.runtime.chordrepair): one a
    dead worker claimed is finished here, one whose state the result backend lost is failed."""

    def after_return(self, task: AgentTask, request: Any, status: str, retval: Any) -> None:
        if not getattr(request, "chord", None):
            return
        if not finish_claimed_chord(task.app, request, status, retval):
            fail_lost_chord(task.app, request, status)


DEFAULT_HOOKS: Final[tuple[Hook, ...]] = (DeadLetters(), Recording(), SettleChordMembers(), RepairChords())
