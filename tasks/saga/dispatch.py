"""Sending a saga's commands to the agents, each with the callbacks that report its outcome.

A step ``RunStep(task="agents.writer.saga_draft", ...)`` becomes one message on the writer's queue:
kwargs = the :class:`~tasks.saga.calls.StepCall`, task id = :func:`sagas.dispatch_id_of` (one per
command attempt), the saga's correlation id in the headers, and two callbacks on the system queue:

* ``link`` -> ``relaybus.saga.step_done(result, ref=...)``, sent by the worker once the step returned;
* ``link_error`` -> ``relaybus.saga.step_failed(task_id, ref=...)``, sent once the step failed for good
  (after the task base's retries, when it is dead-lettered). A retry is not a failure.

Compensations the same, with ``relaybus.saga.compensation_done`` / ``compensation_failed``. Nothing
waits on a result: the callback records the outcome and takes the next decision.
"""

from __future__ import annotations

from collections.abc import Iterable

from celery import Celery

from relaybus.sagas import Decision, RunCompensation, RunStep, dispatch_id_of
from relaybus.tasks.runtime.context import CORRELATION_HEADER
from relaybus.tasks.saga.calls import CallRef, CompensationCall, StepCall

STEP_DONE = "relaybus.saga.step_done"
STEP_FAILED = "relaybus.saga.step_failed"
COMPENSATION_DONE = "relaybus.saga.compensation_done"
COMPENSATION_FAILED = "relaybus.saga.compensation_failed"
SWEEP = "relaybus.saga.sweep"


def dispatch(app: Celery, saga: str, correlation_id: str, commands: Iterable[RunStep | RunCompensation]) -> list[str]:
    """Send each command's task; returns their task ids."""
    sent = []
    for command in commands:
        call: StepCall | CompensationCall
        if isinstance(command, RunStep):
            call, done, failed = StepCall.of(saga, command), STEP_DONE, STEP_FAILED
        else:
            call, done, failed = CompensationCall.of(saga, command), COMPENSATION_DONE, COMPENSATION_FAILED
        ref = {"ref": CallRef.of(command).model_dump(mode="json")}
        task_id = dispatch_id_of(command)
        app.send_task(
            command.task,
            kwargs=call.model_dump(mode="json"),
            task_id=task_id,
            headers={CORRELATION_HEADER: correlation_id},
            link=app.signature(done, kwargs=ref),
            link_error=app.signature(failed, kwargs=ref),
        )
        sent.append(task_id)
    return sent


def dispatch_decision(app: Celery, decision: Decision) -> list[str]:
    return dispatch(app, decision.saga, decision.correlation_id, decision.dispatch)
