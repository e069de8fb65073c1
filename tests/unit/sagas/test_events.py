"""Saga events as event-store rows, and commands across a process boundary."""

from __future__ import annotations

import json
import pickle

import pytest
from pydantic import TypeAdapter

from relaybus.eventstore import types as store_types
from relaybus.sagas import (
    EVENT_SCHEMA_VERSION,
    EVENT_TYPES,
    Command,
    DefinitionError,
    InvalidTransition,
    SagaError,
    UnknownEvent,
    UnknownSaga,
    dedup_key,
    fold,
    from_record,
    resume,
    to_record,
)
from tests.unit.sagas.harness import Saga, fail_at, with_parallel


def _every_kind_of_event() -> Saga:
    saga = Saga(with_parallel(), input={"topic": "sagas", "n": 3})
    saga.run(fail_at("p/a", vanish=("p/b",), refuse=("s1",)))
    saga.record(resume(saga.state))
    saga.run(fail_at())
    return saga


def test_the_event_types_are_the_event_stores_saga_types() -> None:
    store = {value for name, value in vars(store_types).items() if name.startswith("SAGA_")}
    assert set(EVENT_TYPES) == store
    assert len(EVENT_TYPES) == 12


def test_every_event_survives_a_json_round_trip_through_a_store_row() -> None:
    saga = _every_kind_of_event()
    types = {e.type for e in saga.events}
    assert types == set(EVENT_TYPES) - {"saga.completed"}
    for event in saga.events:
        type_, payload = to_record(event)
        stored = json.loads(json.dumps(payload))
        assert "type" not in stored
        assert from_record(type_, stored, EVENT_SCHEMA_VERSION) == event
    rows = [to_record(e) for e in saga.events]
    assert fold(saga.definition, [from_record(t, json.loads(json.dumps(p))) for t, p in rows]) == saga.state


def test_a_completed_event_round_trips_with_the_output() -> None:
    saga = Saga(with_parallel())
    saga.run(fail_at())
    type_, payload = to_record(saga.events[-1])
    assert (type_, payload["data"]) == ("saga.completed", "s3-out")
    assert from_record(type_, payload) == saga.events[-1]


def test_a_row_that_is_not_a_saga_event_we_can_read_raises_unknown_event() -> None:
    with pytest.raises(UnknownEvent, match="not a saga event type"):
        from_record("task.sent", {})
    with pytest.raises(UnknownEvent, match=r"saga\.step\.started"):
        from_record("saga.step.started", {"saga_id": "x", "step": "s1"})
    with pytest.raises(UnknownEvent, match="schema_version 2"):
        from_record("saga.started", {"saga_id": "x", "saga": "s"}, schema_version=2)


def test_a_redelivered_event_has_the_same_dedup_key_and_every_fact_in_a_run_has_its_own() -> None:
    saga = _every_kind_of_event()
    keys = [dedup_key(e) for e in saga.events]
    assert len(set(keys)) == len(keys)
    assert all(len(k) <= 255 for k in keys)  # fits the event store's event_id
    type_, payload = to_record(saga.events[3])
    assert dedup_key(from_record(type_, payload)) == keys[3]


def test_commands_survive_a_json_round_trip_as_a_celery_signature_would_carry_them() -> None:
    saga = _every_kind_of_event()
    adapter: TypeAdapter[Command] = TypeAdapter(Command)
    kinds = set()
    for command in saga.issued:
        assert adapter.validate_json(json.dumps(command.model_dump(mode="json"))) == command
        kinds.add(command.kind)
    assert kinds == {"run_step", "run_compensation", "mark_timed_out", "finish"}


@pytest.mark.parametrize(
    "error",
    [
        DefinitionError("bad"),
        UnknownSaga("nope"),
        UnknownEvent("x.y", "why"),
        InvalidTransition(None, "why"),
    ],
)
def test_every_saga_error_shares_the_root_and_survives_pickling(error: SagaError) -> None:
    assert isinstance(error, SagaError)
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy)) == (type(error), str(error))
