"""Sagas over Celery: the executor of :mod:`sagas`' decisions, without any task waiting on another.

::

    start_saga("content_creation", {"topic": "..."})          # record, decide, dispatch the first step
      -> agents.researcher.saga_research     (researcher queue): runs, records its end, then records its
                                             outcome in the saga, decides, dispatches the next step
      -> agents.writer.saga_draft ...        one message per step (tasks.saga.advance)
    a task a saga names that is not a saga task (a plain agent):
           link       -> relaybus.saga.step_done    (system queue): record, decide, dispatch the next
           link_error -> relaybus.saga.step_failed  (system queue): record, decide, dispatch compensations
    relaybus.saga.sweep  (beat)                                 time out silent steps, per policy

Declaring steps: :func:`saga_step`, :func:`saga_compensation` and :func:`register_saga`. Following
sagas: :func:`start_saga`, :func:`saga_status`, :func:`resume_saga`, :func:`list_sagas`,
:func:`sweep_sagas`. The orchestration tasks live in :mod:`tasks.saga.orchestration`, which the app
loads by name.
"""

from relaybus.tasks.saga.calls import CallRef, CompensationCall, StepCall, Undone
from relaybus.tasks.saga.client import list_sagas, resume_saga, saga_status, start_saga, wait_for_saga
from relaybus.tasks.saga.dispatch import dispatch
from relaybus.tasks.saga.registry import SAGAS, known_sagas, register_saga, repository, saga_definition
from relaybus.tasks.saga.steps import StaleStep, saga_compensation, saga_step
from relaybus.tasks.saga.sweep import SweepReport, sweep_sagas

# Grouped by purpose, as the house style asks, rather than sorted.
__all__ = [  # noqa: RUF022
    # Following sagas
    "start_saga",
    "saga_status",
    "resume_saga",
    "list_sagas",
    "wait_for_saga",
    "sweep_sagas",
    "SweepReport",
    # Declaring sagas and their steps
    "register_saga",
    "saga_step",
    "saga_compensation",
    "StepCall",
    "CompensationCall",
    "Undone",
    "StaleStep",
    # Plumbing
    "SAGAS",
    "CallRef",
    "dispatch",
    "known_sagas",
    "repository",
    "saga_definition",
]
