"""Sagas in the event store: one stream per saga, advanced under optimistic concurrency.

A saga's events live in the stream ``saga:<saga_id>``, each stored with ``event_id = record_id(event)``
and ``correlation_id`` = the saga's correlation id, so the saga shows in its workflow's timeline.
Every change goes through one loop (:meth:`SagaRepository._advance`)::

    read the stream (at version v) and fold it
    fold what happened: a step's result, a resume, or nothing at all (a sweep)
    decide, and fold the event of every command, until decide asks for nothing more
    append all of it with expected_version=v      ConcurrencyError: someone advanced the saga
                                                   meanwhile; read it again, decide again
    hand back the RunStep / RunCompensation commands for the caller to dispatch

The first read may be skipped, never the check: a start assumes the stream is empty (a new saga id
nearly always is) and a step's result may bring the saga its fence read a moment ago. Either guess
is only the first attempt's version; the append's ``expected_version`` refuses a wrong one, and the
loop then reads the stream and decides again. One read less per start and per step.

Two deliveries of one result therefore cannot advance a saga twice: the second reads the first's
events, folds its own result as the duplicate it is, and finds nothing left to decide. A decision
taken on a stale state is never recorded, so its commands are never dispatched. (Event ids are
deterministic, so two racing deliveries build identical batches, and the store takes a batch it
already holds as an idempotent retry rather than a conflict. Each decision therefore stamps its
events with a decision id in their metadata: a batch stored under another id was a rival's.)

Dispatch comes after the append (the executor contract in :mod:`sagas.commands`). A crash between
the two leaves a recorded but undispatched command: :meth:`SagaRepository.in_flight` rebuilds it
for a redelivered caller or the sweep, and the step's deadline bounds the wait in any case. One
exception: a new saga's start may be decided first (:meth:`SagaRepository.plan_start`, no store) and its
first step sent while :meth:`SagaRepository.commit_start` records it, when that step's fence waits for a
saga being recorded (:mod:`tasks.saga.steps`).

How an event becomes a record (its id, stream, decision, a ``data`` too large) is :mod:`sagas.records`. Only
the event store's public API is used here; no Celery.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from pydantic import JsonValue

from relaybus.eventstore import ConcurrencyError, EventStore, NewEvent, RecordedEvent
from relaybus.eventstore.types import SAGA_RESUMED, SAGA_STARTED, TERMINAL_SAGA_STATUS
from relaybus.sagas.commands import RunCompensation, RunStep
from relaybus.sagas.decide import decide
from relaybus.sagas.decide import resume as resume_event
from relaybus.sagas.decide import start as start_event
from relaybus.sagas.definition import SagaDefinition, SagaRegistry
from relaybus.sagas.dispatches import Dispatchable, InFlight, in_flight, still_running
from relaybus.sagas.errors import InvalidTransition, SagaNotFound
from relaybus.sagas.events import SagaEvent, from_record, record_id
from relaybus.sagas.folded import FoldedSagas, version_of
from relaybus.sagas.records import data_limit, new_event
from relaybus.sagas.state import SagaState, SagaStatus, evolve, fold

STREAM_PREFIX = "saga:"
OPEN_TYPES = frozenset({SAGA_STARTED, SAGA_RESUMED})
_LIFECYCLE_TYPES = (*sorted(OPEN_TYPES), *TERMINAL_SAGA_STATUS)
_SAGA_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
_MAX_DECISION_ROUNDS = 32  # decide -> fold -> decide converges in a few rounds; this only stops a bug looping
_PAGE = 1000


class _Read:
    """The first attempt of an advance reads the stream (no guess from the caller)."""


_READ = _Read()


def saga_stream(saga_id: str) -> str:
    return STREAM_PREFIX + saga_id


def check_saga_id(saga_id: str) -> str:
    """Saga ids go into stream names, event ids and idempotency keys: letters, digits, ``_.-``, at most 100."""
    if not _SAGA_ID.match(saga_id):
        raise ValueError(f"saga id {saga_id!r} must be 1-100 letters, digits, '_', '.' or '-', starting alphanumeric")
    return saga_id


@dataclass(frozen=True)
class LoadedSaga:
    """A saga as stored: its definition, folded state, stream version and raw records."""

    definition: SagaDefinition
    state: SagaState
    version: int
    correlation_id: str
    records: tuple[RecordedEvent, ...]

    @property
    def saga_id(self) -> str:
        return self.state.saga_id


@dataclass(frozen=True)
class Decision:
    """What one advance recorded, and the commands the caller must now dispatch."""

    saga_id: str
    saga: str
    correlation_id: str
    state: SagaState
    recorded: tuple[SagaEvent, ...]
    dispatch: tuple[Dispatchable, ...]


@dataclass(frozen=True)
class PlannedStart:
    """A new saga's start, decided and not recorded yet (:meth:`SagaRepository.plan_start`)."""

    decision: Decision
    events: tuple[tuple[SagaEvent, str | None], ...]


class SagaRepository:
    """Load, start, advance, resume and sweep sagas in ``store``; definitions come from ``registry``.

    ``max_conflicts``: how many times one advance re-reads after a ``ConcurrencyError`` before
    letting it propagate (the caller retries later; nothing was recorded).
    """

    def __init__(self, store: EventStore, registry: SagaRegistry, *, max_conflicts: int = 25) -> None:
        self.store = store
        self.registry = registry
        self.max_conflicts = max_conflicts
        #: Sagas as this process last read or wrote them: a read folds only the events after them.
        self.folded = FoldedSagas()

    # -- reading -------------------------------------------------------------------------------------

    def find(self, saga_id: str) -> LoadedSaga | None:
        """The saga as stored now: one read, of the events after the version this process folded last
        (:mod:`sagas.folded`), or of the whole stream."""
        stream = saga_stream(saga_id)
        folded = self.folded.get(saga_id)
        if folded is not None:
            known, after = folded
            tail = (*after, *self.store.read_stream(stream, from_version=version_of(folded) + 1))
            if not tail:
                return known
            if all(r.version == known.version + i for i, r in enumerate(tail, 1)):
                loaded = _extended(known, tail)
                self.folded.put(loaded)
                return loaded
            self.folded.drop(saga_id)  # a gap: never fold around it, read the whole stream
        records = tuple(self.store.read_stream(stream))
        if not records:
            return None
        events = [from_record(r.type, r.payload, r.schema_version) for r in records]
        first = events[0]
        definition = self.registry.get(getattr(first, "saga", ""))
        loaded = LoadedSaga(
            definition, fold(definition, events), records[-1].version, records[0].correlation_id, records
        )
        self.folded.put(loaded)
        return loaded

    def load(self, saga_id: str) -> LoadedSaga:
        loaded = self.find(saga_id)
        if loaded is None:
            raise SagaNotFound(saga_id)
        return loaded

    def in_flight(self, loaded: LoadedSaga) -> list[InFlight]:
        """Every running step attempt and compensation, rebuilt as the command that started it."""
        return in_flight(loaded.definition, loaded.state, loaded.records)

    def lifecycle(self, since: datetime | None = None) -> dict[str, tuple[int, str]]:
        """Saga id -> (position of its first lifecycle event, type of its latest), without loading streams."""
        seen: dict[str, tuple[int, int, str]] = {}
        for type_ in _LIFECYCLE_TYPES:
            after = 0
            while True:
                batch = self.store.find(type=type_, since=since, after_position=after, limit=_PAGE)
                for record in batch:
                    saga_id = record.stream_id.removeprefix(STREAM_PREFIX)
                    first, last, last_type = seen.get(saga_id, (record.position, 0, type_))
                    if record.position > last:
                        last, last_type = record.position, type_
                    seen[saga_id] = (min(first, record.position), last, last_type)
                if len(batch) < _PAGE:
                    break
                after = batch[-1].position
        return {saga_id: (first, last_type) for saga_id, (first, _, last_type) in seen.items()}

    def open_saga_ids(self, since: datetime | None = None) -> list[str]:
        """Sagas started (or resumed) and not ended, oldest first; ``since`` bounds the scan by event time."""
        life = self.lifecycle(since)
        return sorted((s for s, (_, last) in life.items() if last in OPEN_TYPES), key=lambda s: life[s][0])

    def recent(
        self, *, status: SagaStatus | None = None, limit: int = 50, since: datetime | None = None
    ) -> list[LoadedSaga]:
        """The newest sagas first, optionally only those in ``status``."""
        found: list[LoadedSaga] = []
        for saga_id, (_, last) in sorted(self.lifecycle(since).items(), key=lambda kv: -kv[1][0]):
            if not _may_be(status, last):
                continue  # its lifecycle already rules it out: no need to read its stream
            loaded = self.find(saga_id)
            if loaded is not None and (status is None or loaded.state.status == status):
                found.append(loaded)
                if len(found) >= limit:
                    break
        return found

    # -- writing -------------------------------------------------------------------------------------

    def start(
        self,
        definition: SagaDefinition,
        saga_id: str,
        input: JsonValue,
        *,
        now: datetime,
        correlation_id: str | None = None,
        budget: dict[str, JsonValue] | None = None,
    ) -> Decision:
        """Record ``saga.started`` (with the saga's ``budget``, if any) and the first step's dispatch. Starting
        an existing saga again is a no-op that hands back its first dispatch if that is still running (a
        client's retry)."""
        event = self._start_event(definition, saga_id, input, budget)
        return self._advance(
            saga_id,
            lambda _: [event],
            now=now,
            definition=definition,
            correlation_id=correlation_id,
            redispatch=True,
            first=None,  # assume a new stream: one read less; a taken id is a conflict, then read
        )

    def plan_start(
        self,
        definition: SagaDefinition,
        saga_id: str,
        input: JsonValue,
        *,
        now: datetime,
        correlation_id: str | None = None,
        budget: dict[str, JsonValue] | None = None,
    ) -> PlannedStart:
        """What :meth:`start` records and dispatches for a saga id no stream holds (one just made), decided
        without the store: its dispatch may go out while :meth:`commit_start` records it (a step fenced to
        wait for its saga, :mod:`tasks.saga.steps`)."""
        event = self._start_event(definition, saga_id, input, budget)
        state, decided, commands = _decided(definition, evolve(definition, None, event), record_id(event), now)
        events = ((event, None), *decided)
        correlation = correlation_id or saga_id
        decision = Decision(saga_id, definition.name, correlation, state, tuple(e for e, _ in events), tuple(commands))
        return PlannedStart(decision, events)

    def commit_start(self, planned: PlannedStart) -> None:
        """Record ``planned`` in a new stream; :class:`~eventstore.ConcurrencyError` if its saga id is taken."""
        self._append(list(planned.events), planned.decision.correlation_id, 0, ())

    def _start_event(
        self, definition: SagaDefinition, saga_id: str, input: JsonValue, budget: dict[str, JsonValue] | None
    ) -> SagaEvent:
        """The ``saga.started`` of a start, once its id and input are known to fit the log."""
        check_saga_id(saga_id)
        size = len(json.dumps(input, separators=(",", ":"), ensure_ascii=False).encode())
        if size > self._data_limit:
            raise ValueError(
                f"the saga input is {size} bytes; the event log keeps at most {self._data_limit} per event: "
                "store large inputs elsewhere and pass a reference"
            )
        return start_event(definition, saga_id, input, budget)

    def record(
        self,
        event: SagaEvent,
        *,
        now: datetime,
        causation_id: str | None = None,
        redispatch: bool = False,
        loaded: LoadedSaga | None = None,
        also: Sequence[NewEvent] = (),
    ) -> Decision:
        """Record a task's result (``command.succeeded(...)`` or ``.failed(...)``) and what follows from it.

        ``redispatch``: the caller may be a redelivery of a call that crashed after recording and
        before dispatching; if ``event`` is already stored, what it caused and is still running is
        dispatched again (safe: steps and compensations are idempotent under their keys).
        ``loaded``: the saga as the caller read it moments ago (a step's fence), decided on without
        reading it again; if it is stale, the append is refused and the loop reads the stream.
        ``also``: the reporting task's own records (its start records and ``task.succeeded``), committed in the
        transaction that records its result in the saga, or alone if the saga has nothing new to record. Once
        this returns they are stored; if it raises, they may not be, and the caller writes them.
        """
        first = loaded if loaded is not None and loaded.saga_id == event.saga_id else _READ
        return self._advance(
            event.saga_id, lambda _: [event], now=now, causation_id=causation_id, redispatch=redispatch, first=first,
            also=also,
        )

    def resume(self, saga_id: str, *, now: datetime) -> Decision:
        """Retry the failed compensations of a ``compensation_failed`` saga (``InvalidTransition`` otherwise)."""

        def change(loaded: LoadedSaga | None) -> list[SagaEvent]:
            assert loaded is not None
            return [resume_event(loaded.state)]

        return self._advance(saga_id, change, now=now)

    def tick(self, saga_id: str, *, now: datetime) -> Decision:
        """Decide with nothing new: what the sweep does (deadlines passed, timeouts to act on)."""
        return self._advance(saga_id, lambda _: [], now=now)

    # -- the loop --------------------------------------------------------------------------------------

    def _advance(
        self,
        saga_id: str,
        change: Callable[[LoadedSaga | None], Sequence[SagaEvent]],
        *,
        now: datetime,
        definition: SagaDefinition | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        redispatch: bool = False,
        first: LoadedSaga | _Read | None = _READ,
        also: Sequence[NewEvent] = (),
    ) -> Decision:
        conflict: ConcurrencyError | None = None
        guess = not isinstance(first, _Read)
        for attempt in range(self.max_conflicts + guess):
            # ``first``: the caller's guess at the stream for the first attempt (None: empty). Only an
            # append checks a guess (its expected_version), so a guess that leads to a refusal, or to
            # nothing to append, is not trusted: the next attempt reads the stream.
            guessed = guess and attempt == 0
            loaded = first if guessed and not isinstance(first, _Read) else self.find(saga_id)
            if loaded is None and definition is None:
                raise SagaNotFound(saga_id)
            spec = loaded.definition if loaded is not None else definition
            assert spec is not None
            state = loaded.state if loaded is not None else None
            known = {r.event_id for r in loaded.records} if loaded is not None else set()
            fresh: list[tuple[SagaEvent, str | None]] = []
            observed = list(change(loaded))
            try:
                for event in observed:
                    state = evolve(spec, state, event)  # InvalidTransition: refused, nothing recorded
                    if record_id(event) not in known:
                        fresh.append((event, causation_id))
            except InvalidTransition:
                if guessed:
                    continue
                raise
            assert state is not None
            trigger = record_id(observed[-1]) if observed else None
            state, decided, commands = _decided(spec, state, trigger, now)
            fresh.extend(decided)
            correlation = loaded.correlation_id if loaded is not None else (correlation_id or saga_id)
            if guessed and not fresh:
                continue
            if fresh:
                try:
                    stored = self._append(fresh, correlation, loaded.version if loaded is not None else 0, also)
                except ConcurrencyError as error:
                    conflict = error
                    self.folded.drop(saga_id)  # the next attempt reads the whole stream
                    continue
                if loaded is not None:
                    # The saga as stored now, for this process's next read of it: folded then, from the
                    # records as stored (a value too large for the log is its marker there).
                    self.folded.put(loaded, tuple(stored))
            elif also:
                self.store.append_new(also)  # nothing new for the saga (a duplicate report): the task's records alone
            if redispatch and loaded is not None and trigger is not None:
                again = [f.command for f in self.in_flight(loaded) if f.caused_by == trigger]
                commands.extend(c for c in again if c not in commands and still_running(state, c))
            return Decision(
                saga_id=saga_id,
                saga=spec.name,
                correlation_id=correlation,
                state=state,
                recorded=tuple(e for e, _ in fresh),
                dispatch=tuple(commands),
            )
        assert conflict is not None
        raise conflict

    @property
    def _data_limit(self) -> int:
        return data_limit(self.store.config.max_payload_bytes)

    def _append(
        self, events: list[tuple[SagaEvent, str | None]], correlation_id: str, version: int, also: Sequence[NewEvent]
    ) -> list[RecordedEvent]:
        decision = uuid.uuid4().hex
        new = [new_event(e, stream_id=saga_stream(e.saga_id), correlation_id=correlation_id, causation_id=cause,
                         decision=decision, limit=self._data_limit) for e, cause in events]
        if also:  # one transaction with the task's records; a stored saga event is a conflict there
            return self.store.append_with(new, version, also)
        stored = self.store.append(new, expected_version=version)
        if any(r.metadata.get("decision") != decision for r in stored):
            # Every event was stored already, by a rival that took the very same decision (event ids
            # are deterministic): the store accepts that as an idempotent retry, but the decision,
            # and its dispatches, are the rival's. Ours is as stale as after a conflict.
            raise ConcurrencyError(saga_stream(events[0][0].saga_id), version, stored[-1].version)
        return stored


def _decided(
    spec: SagaDefinition, state: SagaState, trigger: str | None, now: datetime
) -> tuple[SagaState, list[tuple[SagaEvent, str | None]], list[Dispatchable]]:
    """Decide and fold each command's event until ``decide`` asks for nothing more: the state then, the events
    (caused by ``trigger``) and the commands to dispatch."""
    events: list[tuple[SagaEvent, str | None]] = []
    commands: list[Dispatchable] = []
    for _round in range(_MAX_DECISION_ROUNDS):
        batch = decide(spec, state, now)
        if not batch:
            break
        for command in batch:
            state = evolve(spec, state, command.event())
            events.append((command.event(), trigger))
            if isinstance(command, RunStep | RunCompensation):
                commands.append(command)
    return state, events, commands


def _extended(loaded: LoadedSaga, tail: Sequence[RecordedEvent]) -> LoadedSaga:
    """``loaded`` with the records that follow it in its stream folded in."""
    state = loaded.state
    for record in tail:
        state = evolve(loaded.definition, state, from_record(record.type, record.payload, record.schema_version))
    return LoadedSaga(loaded.definition, state, tail[-1].version, loaded.correlation_id, (*loaded.records, *tail))


def _may_be(status: SagaStatus | None, last_type: str) -> bool:
    if status is None:
        return True
    if last_type in OPEN_TYPES:
        return status in ("running", "compensating")
    return TERMINAL_SAGA_STATUS.get(last_type) == status
