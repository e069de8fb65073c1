"""Errors raised by agents and the agent task base.

The retry policy is declared here, by class, in one place: the task base retries
:class:`TransientError` with exponential backoff and jitter and never retries the others.

::

    AgentError
     ├── TransientError                retried with backoff, then dead-lettered
     │    ├── ProviderUnavailable      an LLM provider timed out, refused, or answered 5xx / 429
     │    └── PublishFailed            the broker did not confirm an event or a task message
     │         ├── PublishTimeout      no confirm within ``publish_timeout_s``: broker blocked or stopped
     │         └── BrokerUnreachable   no connection to the broker (refused, timed out)
     │              (both also kombu ``OperationalError``s, what callers caught from the driver)
     ├── PermanentError                never retried; dead-lettered at once
     │    ├── NotRun                   the task refused to run: its work is no longer wanted; recorded
     │    │    │                       ``task.rejected`` with ``reason``, not dead-lettered
     │    │    └── StaleStep           a saga step after its saga stopped going forward (tasks.saga.steps)
     │    ├── InvalidInput             a payload failed its agent's input model
     │    ├── InvalidMessage           a broker message we cannot decode (not JSON, wrong shape)
     │    ├── RecordFailed             the event log refused a transition's record as it is (reason record-failed)
     │    ├── ProviderRejected         an LLM provider answered 4xx (bad request, auth, unknown model)
     │    ├── PayloadUnreadable        a payload passed by reference is missing or altered; ``reason`` says which
     │    ├── PayloadUnstorable        a large value could not be stored by reference (a full disk); reason
     │    │                            ``payload-unstored``
     │    ├── FailedBefore             a redelivered task whose failure for good was recorded before its worker
     │    │                            died: not run again; ``reason`` is the recorded dead-letter reason
     │    └── EventRejected            an event the bus cannot deliver; ``reason`` is the dead-letter reason
     │         ├── UnknownEventType         no event class has this ``type``
     │         ├── UnsupportedEventVersion  newer than this code, or no upcaster from it
     │         ├── InvalidEvent             the envelope or the data fails its model
     │         └── NoHandler                a subscriber's queue got an event none of its handlers takes
     └── PipelineError                 what a pipeline client sees (tasks.pipelines.client)
          ├── UnknownPipeline          no pipeline has this name
          ├── PipelineFailure          the pipeline ended failed or timed out; ``reason`` says why
          └── PipelineNotFinished      ``result()`` asked of a pipeline still running
     └── ApprovalError                 a person's approval could not be requested or decided (tasks.runtime.approvals)
          ├── ApprovalNotFound         no approval has this id
          ├── NotAnApprover            the principal is not among the approval's approvers
          └── AlreadyDecided           the approval was decided (or expired) already; ``approval`` is the row
"""

from __future__ import annotations

from typing import Any

from kombu.exceptions import OperationalError as KombuOperationalError


class AgentError(Exception):
    """Root of every error this package raises on purpose."""


class TransientError(AgentError):
    """Raised when a failure may go away on its own; the task base retries it."""


class PermanentError(AgentError):
    """Raised when retrying cannot help; the message is dead-lettered without retries."""


class NotRun(PermanentError):
    """Raised by a task that refuses to run because the work it carries is no longer wanted (a saga step that
    arrives after its saga stopped going forward): nothing happened, so nothing is dead-lettered and nothing
    fails. The task's end is recorded as ``task.rejected`` with ``reason``; a person has nothing to redrive."""

    reason: str = "not-run"


class Rejected(PermanentError):
    """An agent rejected its message with Celery's ``Reject(reason, requeue=False)``: dead-lettered with reason
    ``rejected``, by relaybus, once. The original message is then acknowledged, not rejected: the queue's
    dead-letter exchange would have put a second copy, without a reason, in the same dead-letter queue."""

    reason = "rejected"


class RecordFailed(PermanentError):
    """Raised when the event log cannot store a transition's record as it is (an id the database refuses,
    a full disk): the task is dead-lettered with reason ``record-failed`` and its workflow fails, rather
    than its message being acknowledged with no record. The event store being away is not this: the
    message is requeued then."""


class InvalidInput(PermanentError):
    """Raised when a payload does not validate against an agent's input model.

    ``agent`` names the agent (or, with ``kind="pipeline"``, the pipeline), ``errors`` holds pydantic's
    error list (location, message, type).
    """

    def __init__(self, agent: str, errors: list[dict[str, Any]], kind: str = "agent") -> None:
        self.agent = agent
        self.errors = errors
        self.kind = kind
        fields = ", ".join(
            ".".join(str(p) for p in e.get("loc", ())) + f" ({e.get('msg', 'invalid')})" for e in errors
        )
        super().__init__(f"invalid input for {kind} {agent!r}: {fields or 'payload rejected'}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.agent, self.errors, self.kind))


class InvalidMessage(PermanentError):
    """Raised when a broker message cannot be decoded into a task call at all."""


class ProviderUnavailable(TransientError):
    """Raised when an LLM provider times out, cannot be reached, or answers 5xx or 429."""


class ProviderRejected(PermanentError):
    """Raised when an LLM provider refuses the request itself (a 4xx other than 429)."""

    def __init__(self, status_code: int, message: str) -> None:
        self.status_code = status_code
        self.message = message
        super().__init__(f"provider rejected the request with HTTP {status_code}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.status_code, self.message))


class PayloadUnreadable(PermanentError):
    """Raised when a task's input holds a reference to a stored payload (tasks.runtime.claimcheck) that cannot
    be read back: ``reason`` is ``payload-missing`` or ``payload-altered`` (the dead-letter reason), ``ref``
    names the payload, ``agent`` and ``task_id`` the message that carried it. Retrying reads the same row."""

    def __init__(
        self, ref: str, reason: str = "payload-missing", detail: str = "", agent: str = "?", task_id: str | None = None
    ) -> None:
        self.ref = ref
        self.reason = reason
        self.detail = detail
        self.agent = agent
        self.task_id = task_id
        super().__init__(f"{reason}: payload {ref} in the input of agent {agent!r} (task {task_id}): {detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.ref, self.reason, self.detail, self.agent, self.task_id))


class PayloadUnstorable(PermanentError):
    """Raised when a large value (an agent's output, an event's data) cannot be stored by reference because the
    event store refuses the write for good (its disk is full): nothing may travel naming a payload that was
    never stored. ``reason`` is the dead-letter reason, ``size`` the value's size in bytes."""

    reason = "payload-unstored"

    def __init__(self, size: int, detail: str) -> None:
        self.size = size
        self.detail = detail
        super().__init__(f"payload-unstored: a value of {size} bytes could not be stored by reference: {detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.size, self.detail))


class FailedBefore(PermanentError):
    """Raised in place of running a redelivered task whose failure for good (``task.failed`` with a dead-letter
    reason) was recorded before its worker died, ahead of the ack (tasks.runtime.redelivery): the task is not
    run again, and its failure path (dead letter, error callbacks, a chord's settlement) is taken as it was.
    ``reason`` is the recorded dead-letter reason; ``lettered`` whether the dead letter was published before
    that record was written (the task body's path: True; a hard time limit, recorded first: False)."""

    def __init__(self, error_type: str, error_message: str, reason: str, lettered: bool) -> None:
        self.error_type = error_type
        self.error_message = error_message
        self.reason = reason
        self.lettered = lettered
        super().__init__(f"{error_type}: {error_message} (recorded before its worker died, reason {reason}; "
                         "the redelivered task was not run again)")

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.error_type, self.error_message, self.reason, self.lettered))


def error_type_of(error: BaseException) -> str:
    """The name records give ``error``'s type: a :class:`FailedBefore`'s is the recorded error's."""
    return error.error_type if isinstance(error, FailedBefore) else type(error).__name__


def error_message_of(error: BaseException) -> str:
    """The message records give ``error``: a :class:`FailedBefore`'s is the recorded error's."""
    return error.error_message if isinstance(error, FailedBefore) else str(error)


class PublishFailed(TransientError):
    """Raised when the broker does not take an event (connection lost, no confirm)."""


class PublishTimeout(PublishFailed, KombuOperationalError):
    """Raised when the broker does not confirm a publish within ``publish_timeout_s``.

    ``blocked`` is RabbitMQ's reason when it had blocked the connection's publishers (a memory or disk
    alarm), None when it did not answer at all (a stopped or overloaded node). The message may still
    reach the queue later: consumers de-duplicate, as for any redelivery. Also a kombu
    ``OperationalError``, so code that treats the broker's errors as "service unreachable" treats this too.
    """

    def __init__(self, timeout_s: float, blocked: str | None = None) -> None:
        self.timeout_s = timeout_s
        self.blocked = blocked
        if blocked:
            text = f"broker blocked publishers (memory/disk alarm): {blocked}; no confirm within {timeout_s:g} s"
        else:
            text = f"no confirm from the broker within {timeout_s:g} s: is it stopped or overloaded?"
        super().__init__(text)

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.timeout_s, self.blocked))


class BrokerUnreachable(PublishFailed, KombuOperationalError):
    """Raised when a publish finds no connection to the broker (refused, reset, connect timed out).

    Also a kombu ``OperationalError``, the driver's error it replaces, so code that caught that still does.
    """

    def __init__(self, address: str, cause: str, timeout_s: float | None = None) -> None:
        self.address = address
        self.cause = cause
        self.timeout_s = timeout_s
        within = f" within {timeout_s:g} s" if timeout_s is not None else ""
        super().__init__(f"cannot reach the broker at {address}{within}: {cause}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.address, self.cause, self.timeout_s))


class EventRejected(PermanentError):
    """Raised when an event cannot be delivered; ``reason`` is the dead-letter reason header."""

    reason = "invalid-event"


class UnknownEventType(EventRejected):
    """Raised when no event class is registered for an event's ``type``."""

    reason = "unknown-event-type"


class UnsupportedEventVersion(EventRejected):
    """Raised when an event's version is newer than its class, or no upcaster leads from it."""

    reason = "unsupported-event-version"


class EventTooLarge(EventRejected):
    """Raised when an event message is larger than the workers accept (``max_message_bytes``)."""

    reason = "message-too-large"


class InvalidEvent(EventRejected):
    """Raised when an event's envelope or data does not validate."""

    reason = "invalid-event"


class NoHandler(EventRejected):
    """Raised when an event reaches a subscriber queue (a stale binding) but no handler matches it."""

    reason = "no-handler"


class PipelineError(AgentError):
    """Root of the errors a pipeline client (:mod:`tasks.pipelines.client`) raises."""


class UnknownPipeline(PipelineError, LookupError):
    """Raised when :func:`tasks.client.start` is given a pipeline name nobody registered."""


class PipelineFailure(PipelineError):
    """Raised by ``result()`` when the pipeline ended failed; ``reason`` is why, ``pipeline_id`` which."""

    def __init__(self, pipeline_id: str, reason: str) -> None:
        self.pipeline_id = pipeline_id
        self.reason = reason
        super().__init__(f"pipeline {pipeline_id} failed: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.pipeline_id, self.reason))


class PipelineNotFinished(PipelineError):
    """Raised by ``result()`` when the pipeline has not ended yet."""


def is_transient(error: BaseException) -> bool:
    """The retry policy, by class, in one place: retry what may go away on its own."""
    if isinstance(error, PermanentError):
        return False
    if isinstance(error, TransientError):
        return True
    from celery.exceptions import SoftTimeLimitExceeded  # an overrun LLM call may succeed next time
    from kombu.exceptions import OperationalError as BrokerUnavailable  # the broker is restarting
    from redis.exceptions import ConnectionError as RedisConnectionError  # the result backend is restarting
    from redis.exceptions import TimeoutError as RedisTimeout
    from sqlalchemy.exc import DBAPIError, OperationalError  # an agent's own database is restarting or locked

    from relaybus.eventstore import StoreUnavailable  # the event log's database is down or locked: wait for it

    if isinstance(error, DBAPIError) and (error.connection_invalidated or isinstance(error, OperationalError)):
        return True
    return isinstance(
        error,
        (SoftTimeLimitExceeded, TimeoutError, ConnectionError, StoreUnavailable, BrokerUnavailable,
         RedisConnectionError, RedisTimeout),
    )


class ApprovalError(AgentError):
    """Raised when a person's approval cannot be requested or decided."""


class ApprovalNotFound(ApprovalError, LookupError):
    """Raised when no approval has the given id."""


class NotAnApprover(ApprovalError):
    """Raised when someone not among an approval's approvers tries to decide it."""


class AlreadyDecided(ApprovalError):
    """Raised when an approval was decided, or expired, before this decision; ``approval`` is the row as stored."""

    def __init__(self, message: str, approval: Any) -> None:
        super().__init__(message)
        self.approval = approval
