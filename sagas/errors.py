"""Errors raised by the saga logic.

Every one of them is a bug or a wrong input, not a transient fault, so none is worth retrying.

::

    SagaError
     ├── DefinitionError      a definition breaks a rule (no steps, duplicate or bad names, bad timeout)
     ├── UnknownSaga          no definition is registered under a saga name
     ├── UnknownEvent         a stored record is not a saga event we can read (type, version, payload)
     ├── InvalidTransition    an event does not fit the saga's state (the fold refuses it)
     └── SagaNotFound         no saga was started under an id (its stream is empty)

The event store's own errors pass through :mod:`sagas.repository` untouched: ``StoreUnavailable`` is
transient, and ``ConcurrencyError`` there means another process kept advancing the saga.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relaybus.sagas.events import SagaEvent


class SagaError(Exception):
    """Root of every error this package raises on purpose."""


class DefinitionError(SagaError):
    """Raised when a saga definition breaks a rule; the message names the saga or step and the rule."""


class UnknownSaga(SagaError):
    """Raised when no definition is registered under ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no saga definition is registered under {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.name,))


class UnknownEvent(SagaError):
    """Raised when a stored ``(type, payload)`` record cannot be read back as a saga event."""

    def __init__(self, type: str, reason: str) -> None:
        self.type = type
        self.reason = reason
        super().__init__(f"cannot read saga event {type!r}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.type, self.reason))


class InvalidTransition(SagaError):
    """Raised when an event does not fit the saga's state: the fold refuses to apply it.

    ``event`` is the refused event (``None`` when a fold was given no events at all), ``reason``
    says which rule it breaks. The executor folds an event before it appends it, so a refused
    event is never recorded and its command is never dispatched.
    """

    def __init__(self, event: SagaEvent | None, reason: str) -> None:
        self.event = event
        self.reason = reason
        super().__init__(f"{_describe(event)} does not fit: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.event, self.reason))


class SagaNotFound(SagaError, LookupError):
    """Raised when no saga was started under ``saga_id``."""

    def __init__(self, saga_id: str) -> None:
        self.saga_id = saga_id
        super().__init__(f"no saga {saga_id!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.saga_id,))


def _describe(event: SagaEvent | None) -> str:
    if event is None:
        return "an empty event list"
    where = f"saga {event.saga_id!r}"
    step = getattr(event, "step", None)
    if step is not None:
        member = getattr(event, "member", step)
        where += f" step {step!r}" + (f" member {member!r}" if member != step else "")
    attempt = getattr(event, "attempt", None)
    if attempt is not None:
        where += f" attempt {attempt}"
    return f"{event.type} for {where}"
