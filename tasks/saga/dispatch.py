"""Sending a saga's commands to the agents; a task that does not advance the saga itself gets callbacks.

A step ``RunStep(task="agents.writer.saga_draft", ...)`` becomes one message on the writer's queue:
kwargs = the :class:`~tasks.saga.calls.StepCall`, task id = :func:`sagas.dispatch_id_of` (one per
command attempt), the saga's correlation id in the headers.

A task declared with ``saga_step`` / ``saga_compensation`` advances its saga itself, in the worker that
ran it, once its own record is written (:mod:`tasks.saga.advance`): its message is the step's only one.
Any other task a saga names (it is not a saga task in this process's registry) gets two callbacks
on the system queue, which make the same move one hop later:

* ``link`` -> ``relaybus.saga.step_done(result, ref=...)``, sent by the worker once the step returned;
* ``link_error`` -> ``relaybus.saga.step_failed(task_id, ref=...)``, sent once the step failed for good
  (after the task base's retries, when it is dead-lettered). A retry is not a failure.

Compensations the same, with ``relaybus.saga.compensation_done`` / ``compensation_failed``. A saga task
sent by a process that does not know it gets the callbacks too and advances the saga as well: the
second report of one outcome is recorded as the duplicate it is. Nothing waits on a result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from typing import Any

from celery import Celery

from relaybus.sagas import Decision, ParallelStep, RunCompensation, RunStep, UnknownSaga, dispatch_id, dispatch_id_of
from relaybus.tasks.runtime.context import CORRELATION_HEADER
from relaybus.tasks.runtime.recording import receiver_records_sent
from relaybus.tasks.saga.calls import CallRef, CompensationCall, StepCall
from relaybus.tasks.saga.registry import saga_definition

STEP_DONE = "relaybus.saga.step_done"
STEP_FAILED = "relaybus.saga.step_failed"
COMPENSATION_DONE = "relaybus.saga.compensation_done"
COMPENSATION_FAILED = "relaybus.saga.compensation_failed"
OUTCOME = "relaybus.saga.outcome"
SWEEP = "relaybus.saga.sweep"
#: The class attribute of a task that records its own outcome in its saga (tasks.saga.advance.SagaTask).
ADVANCES_SAGA = "advances_saga"


def advances_itself(app: Celery, task_name: str) -> bool:
    """Whether ``task_name`` is, in this process, a task that advances its saga itself (no callbacks needed)."""
    task = app.tasks.get(task_name)
    return bool(getattr(task, ADVANCES_SAGA, False))


def saga_root_id(app: Celery, saga: str, saga_id: str) -> str | None:
    """The task id of the saga's first step's first dispatch: the root of every task the saga sends."""
    try:
        first = saga_definition(saga, app).steps[0]
    except UnknownSaga:
        return None
    member = first.members[0] if isinstance(first, ParallelStep) else first
    return dispatch_id(saga_id, first.name, member.name, "step", 1)


def dispatch(
    app: Celery,
    saga: str,
    correlation_id: str,
    commands: Iterable[RunStep | RunCompensation],
    headers: Mapping[str, Any] | None = None,
) -> list[str]:
    """Send each command's task, with ``headers`` besides the correlation id; returns their task ids."""
    sent = []
    for command in commands:
        call: StepCall | CompensationCall
        if isinstance(command, RunStep):
            call, done, failed = StepCall.of(saga, command), STEP_DONE, STEP_FAILED
        else:
            call, done, failed = CompensationCall.of(saga, command), COMPENSATION_DONE, COMPENSATION_FAILED
        task_id = dispatch_id_of(command)
        options: dict[str, Any]
        itself = advances_itself(app, command.task)
        if itself:
            # Its result is not stored (SagaTask.ignore_result), so no result subscription either: outside a
            # worker (start_saga) Celery would SUBSCRIBE to the task's Redis channel on every send, and
            # UNSUBSCRIBE as the unused AsyncResult is collected: two Redis round trips per start for nothing.
            options = {"ignore_result": True}
        else:
            ref = {"ref": CallRef.of(command).model_dump(mode="json")}
            options = {"link": app.signature(done, kwargs=ref), "link_error": app.signature(failed, kwargs=ref)}
        # A saga task writes its task.sent with its start (or whatever ends its message first): the publisher's
        # own write was one more transaction a step, between the saga's move and the next step's.
        with receiver_records_sent() if itself else nullcontext():
            app.send_task(
                command.task,
                kwargs=call.model_dump(mode="json"),
                task_id=task_id,
                headers={**(headers or {}), CORRELATION_HEADER: correlation_id},
                # One task tree per saga in Flower, whoever sends (a step's worker, the sweep, a resume).
                root_id=saga_root_id(app, saga, command.saga_id),
                **options,
            )
        sent.append(task_id)
    return sent


def dispatch_decision(app: Celery, decision: Decision, headers: Mapping[str, Any] | None = None) -> list[str]:
    return dispatch(app, decision.saga, decision.correlation_id, decision.dispatch, headers)
