"""Typed events: what an event is, how it travels, and how old versions are read.

An event is a past-tense fact with a stable ``type`` string and a schema ``version``::

    class ResearchCompleted(Event):
        type: ClassVar[str] = "research.completed"
        version: ClassVar[int] = 1

        topic: str
        findings: list[str]

Defining the class registers it. On the wire it travels inside an :class:`EventEnvelope` (ids,
correlation, version, data). A reader upcasts an older version step by step with the functions
registered by :func:`upcaster` (``v1 -> v2 -> ... -> latest``) and validates the result against
the current class; history is read in today's shape, never rewritten. An envelope whose type no
class claims, or whose version is newer than the class (or has no upcaster path), is refused with
an :class:`~tasks.errors.EventRejected` whose ``reason`` becomes the dead-letter reason.

No Celery here: this module is pure data, so unit tests and clients can use it alone.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from relaybus.eventstore.ids import derived_event_id, uuid7_ms
from relaybus.tasks.errors import InvalidEvent, UnknownEventType, UnsupportedEventVersion

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

_IDS = uuid.UUID("0b7c4f1e-2a8d-4e36-9a51-7d3c2e9f6a10")


def derived_id(*parts: object) -> str:
    """A deterministic id: the same parts always give the same id (for idempotent re-publishing)."""
    return str(uuid.uuid5(_IDS, ":".join(str(p) for p in parts)))


def derived_record_id(*parts: object, at_ms: int | None = None) -> str:
    """:func:`derived_id` for an event-log id, time-ordered (eventstore.ids): by ``at_ms``, the origin's
    time, or else by the first part's when it is a UUIDv7 (an envelope's id, a ``new_id``); without
    either, ``derived_id(*parts)`` itself, the id such a record had before."""
    at = at_ms if at_ms is not None else uuid7_ms(parts[0]) if parts else None
    return derived_event_id(_IDS, parts, at)


class Event(BaseModel):
    """Base of every event. Subclasses set ``type`` and ``version`` and are registered on definition.

    ``unique_per_correlation``: events sharing this key are one fact per correlation id (for example
    a pipeline's outcome: completed *or* failed). They get the same event id, so the event log keeps
    the first and subscribers de-duplicate the rest.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: ClassVar[str] = ""
    version: ClassVar[int] = 1
    unique_per_correlation: ClassVar[str | None] = None

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "type" in cls.__dict__ and cls.type:
            registry.register(cls)


class EventEnvelope(BaseModel):
    """An event as it crosses the broker: the data plus everything needed to trace and read it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str = Field(min_length=1, max_length=255)
    type: str = Field(min_length=1, max_length=255, pattern=r"^[a-z0-9_\-]+(\.[a-z0-9_\-]+)*$")
    version: int = Field(ge=1)
    correlation_id: str = Field(min_length=1, max_length=255)
    causation_id: str | None = None
    occurred_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    #: The broker priority the publishing step ran with; the subscriber's task inherits it.
    priority: int | None = None
    #: Who published it: a task name, or ``client`` outside any task.
    source: str = "client"
    data: dict[str, Any] = Field(default_factory=dict)
    #: Replay marks (``x_replay_of``, ``x_llm_replay_of``) carried from the publishing step to the
    #: handlers, so a replayed workflow stays a replay across events.
    replay: dict[str, str] = Field(default_factory=dict)


class EventRegistry:
    """Event classes by type, and the upcasters between versions of each type."""

    def __init__(self) -> None:
        self._classes: dict[str, type[Event]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}

    def register(self, cls: type[Event]) -> type[Event]:
        if cls.version < 1:
            raise ValueError(f"{cls.__name__}.version must be at least 1")
        current = self._classes.get(cls.type)
        if current is not None and _qualname(current) != _qualname(cls):
            raise ValueError(
                f"event type {cls.type!r} is already defined by {_qualname(current)}; "
                f"a new shape of a fact bumps the version of that class instead of adding a class"
            )
        self._classes[cls.type] = cls
        return cls

    def upcaster(self, type_: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Register ``fn`` as the step from ``from_version`` to ``from_version + 1`` of ``type_``."""

        def decorate(fn: Upcaster) -> Upcaster:
            self._upcasters[(type_, from_version)] = fn
            return fn

        return decorate

    def get(self, type_: str) -> type[Event] | None:
        return self._classes.get(type_)

    def types(self) -> list[str]:
        return sorted(self._classes)

    def upcast(self, envelope: EventEnvelope) -> EventEnvelope:
        """The envelope with its data in the shape of the current class version."""
        cls = self._classes.get(envelope.type)
        if cls is None:
            raise UnknownEventType(f"no event class is registered for type {envelope.type!r}")
        if envelope.version > cls.version:
            raise UnsupportedEventVersion(
                f"{envelope.type} v{envelope.version} is newer than this code (v{cls.version})"
            )
        data = dict(envelope.data)
        for version in range(envelope.version, cls.version):
            step = self._upcasters.get((envelope.type, version))
            if step is None:
                raise UnsupportedEventVersion(
                    f"{envelope.type} v{envelope.version} cannot be read: no upcaster from v{version} "
                    f"to v{version + 1}"
                )
            data = step(data)
        if envelope.version == cls.version and data == envelope.data:
            return envelope
        return envelope.model_copy(update={"version": cls.version, "data": data})

    def load(self, envelope: EventEnvelope) -> Event:
        """The typed event inside ``envelope``, upcast to the current version and validated."""
        current = self.upcast(envelope)
        cls = self._classes[current.type]
        try:
            return cls.model_validate(current.data)
        except ValidationError as exc:
            fields = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise InvalidEvent(f"{current.type} v{current.version} data is invalid: {fields}") from None


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


#: The process-wide registry every :class:`Event` subclass joins.
registry = EventRegistry()
#: ``@upcaster("research.completed", 1)`` registers the v1 -> v2 step in :data:`registry`.
upcaster = registry.upcaster


def envelope_for(
    event: Event,
    *,
    event_id: str,
    correlation_id: str,
    causation_id: str | None = None,
    priority: int | None = None,
    source: str = "client",
    replay: dict[str, str] | None = None,
) -> EventEnvelope:
    if not type(event).type:
        raise TypeError(f"{type(event).__name__} has no event type; set its `type` class variable")
    return EventEnvelope(
        event_id=event_id,
        type=event.type,
        version=event.version,
        correlation_id=correlation_id,
        causation_id=causation_id,
        priority=priority,
        source=source,
        data=event.model_dump(mode="json"),
        replay=replay or {},
    )


def parse_envelope(body: bytes | str) -> EventEnvelope:
    """Decode a message body; anything that is not a valid envelope is an :class:`InvalidEvent`."""
    try:
        return EventEnvelope.model_validate_json(body)
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
        raise InvalidEvent(f"not an event envelope: {fields}") from None


def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching: words split on ``.``; ``*`` is exactly one word, ``#`` zero or more."""
    return _match(pattern.split("."), routing_key.split("."))


def _match(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _match(rest, words[1:])
