"""What a recorder does, and the recorder that does nothing (``RELAYBUS_RECORD_EVENTS=false``).

Callers ask a recorder, never its type: :attr:`Recorder.enabled` says whether building a record is worth it,
and the queries answer "nothing recorded" when recording is off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from relaybus.eventstore import NewEvent


@dataclass(frozen=True)
class Failure:
    """The first task of a workflow that failed for good, as the event log recorded it."""

    #: The task's name (``agents.writer``) from its ``task.sent`` record, else ``agents.<agent>``; ``""`` if unknown.
    task: str
    error_type: str
    error_message: str


class Recorder(Protocol):
    """Writes a task's transitions to the event log (:mod:`.records` builds them) and reads back what a
    running task needs."""

    #: False when nothing is recorded: callers skip building records of their own.
    enabled: bool

    def append(self, events: list[NewEvent], task_id: str | None = None) -> None:
        """Write ``events`` (after the held-back start records of ``task_id``, the running task by default)."""

    def task_started(self, task: Any, request: Any, args: Any, kwargs: Any) -> None: ...

    def task_retried(self, task: Any, request: Any, error: BaseException, countdown: float) -> None: ...

    def task_succeeded(self, task: Any, request: Any, result: Any, duration_s: float) -> None: ...

    def task_failed(
        self, task: Any, request: Any, error: BaseException, duration_s: float, *, dead_letter_reason: str | None
    ) -> None: ...

    def task_rejected(self, task: Any, request: Any, error: BaseException, duration_s: float, *, reason: str) -> None:
        """The task refused to run (:class:`~tasks.errors.NotRun`): ``task.rejected``, not a failure."""

    def llm_completed(
        self, task: Any, request: Any, llm_request: Any, completion: Any, cost: dict[str, Any] | None = None
    ) -> None: ...

    def recorded_completions(self, correlation_id: str, *, task_id: str | None = None) -> dict[str, Any]:
        """The completions recorded in the workflow ``correlation_id`` (only the task ``task_id``'s, when
        given), by request fingerprint."""

    def first_failure(self, correlation_id: str) -> Failure | None:
        """The first task of the workflow ``correlation_id`` that failed for good; None if none did."""

    def redeliveries(self, task_id: str) -> int:
        """How many ``task.redelivered`` records the task ``task_id`` has."""


class NullRecorder:
    """Used when recording is switched off (``RELAYBUS_RECORD_EVENTS=false``)."""

    enabled = False

    def append(self, events: list[NewEvent], task_id: str | None = None) -> None:
        return None

    def task_started(self, task: Any, request: Any, args: Any, kwargs: Any) -> None:
        return None

    def task_retried(self, task: Any, request: Any, error: BaseException, countdown: float) -> None:
        return None

    def task_succeeded(self, task: Any, request: Any, result: Any, duration_s: float) -> None:
        return None

    def task_failed(
        self, task: Any, request: Any, error: BaseException, duration_s: float, *, dead_letter_reason: str | None
    ) -> None:
        return None

    def task_rejected(self, task: Any, request: Any, error: BaseException, duration_s: float, *, reason: str) -> None:
        return None

    def llm_completed(
        self, task: Any, request: Any, llm_request: Any, completion: Any, cost: dict[str, Any] | None = None
    ) -> None:
        return None

    def recorded_completions(self, correlation_id: str, *, task_id: str | None = None) -> dict[str, Any]:
        return {}

    def first_failure(self, correlation_id: str) -> Failure | None:
        return None

    def redeliveries(self, task_id: str) -> int:
        return 0
