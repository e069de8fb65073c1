"""A saga task's own records (start records, ``task.succeeded``) commit with its move, or are written alone first.

Unit level: the move (``advance_saga``) and the hand-over are replaced by recorders of what they were given; the
records and the held starts are the real ones (tasks.runtime.recording.held). The transaction itself is covered
over real databases (tests/integration/eventstore/test_append_with.py, tests/integration/test_sagas.py).
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from relaybus.eventstore import NewEvent, StoreUnavailable
from relaybus.tasks.runtime.hooks import Call
from relaybus.tasks.runtime.recording.held import HeldStarts
from relaybus.tasks.saga import advance

KWARGS = {"saga_id": "s-1", "saga": "x", "step": "one", "member": "one", "attempt": 1, "idempotency_key": "k"}


class Recorder:
    """What SagaRecording needs of an EventRecorder: it commits directly, holds starts, appends."""

    writes_directly = True
    host = "h"

    def __init__(self) -> None:
        self.held = HeldStarts(lambda events: len(events))
        self.appended: list[list[NewEvent]] = []

    def append(self, events: list[NewEvent], task_id: str | None = None) -> None:
        self.appended.append([*self.held.take(task_id), *events])


def call_with(recorder: Recorder) -> Call:
    request = SimpleNamespace(id="t-1", headers={}, delivery_info={}, retries=0, hostname="w", root_id=None,
                              parent_id=None, correlation_id=None, eta=None, expires=None)
    task = SimpleNamespace(name="agents.a.one", app=SimpleNamespace(), saga_kind="step", agent_name="a")
    return Call(task, request, (), dict(KWARGS), time.monotonic(), recorder)  # type: ignore[arg-type]


def run(
    monkeypatch: pytest.MonkeyPatch, outcome: Any, recorder: Recorder | None = None
) -> tuple[Recorder, list[Any], list[Any]]:
    recorder = recorder or Recorder()
    started = NewEvent(stream_id="task:t-1", type="task.started", task_id="t-1")
    recorder.held.hold("t-1", [started])
    moves: list[Any] = []
    handed: list[Any] = []

    def advance_saga(app: Any, ref: Any, ok: bool, data: Any, **kw: Any) -> Any:
        moves.append([e.type for e in kw["also"]])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    monkeypatch.setattr(advance, "advance_saga", advance_saga)
    monkeypatch.setattr(advance, "_hand_over", lambda call, ref, ok, data: handed.append(ref.step))
    succeeded = NewEvent(stream_id="task:t-1", type="task.succeeded", task_id="t-1")
    monkeypatch.setattr(advance.records, "succeeded", lambda *a: succeeded)
    call = call_with(recorder)
    hooks = advance.AdvanceSaga()
    hooks.before_call(call)
    advance.SagaRecording().on_success(call, {"n": 1})
    assert recorder.appended == [], "the success's record is left to the move"
    hooks.on_success(call, {"n": 1})
    return recorder, moves, handed


def test_the_records_go_with_the_move_and_nothing_is_written_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder, moves, handed = run(monkeypatch, {"saga_id": "s-1"})
    assert moves == [["task.started", "task.succeeded"]]
    assert recorder.appended == [] and handed == []
    assert recorder.held.take("t-1") == [], "the held starts went with the move"


def test_a_move_that_cannot_be_made_writes_the_records_first_then_hands_the_outcome_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder, _moves, handed = run(monkeypatch, StoreUnavailable("away"))
    assert [[e.type for e in batch] for batch in recorder.appended] == [["task.started", "task.succeeded"]]
    assert handed == ["one"]


def test_a_dropped_outcome_still_leaves_the_tasks_records(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder, _moves, handed = run(monkeypatch, None)  # advance_saga returns None: the outcome was dropped
    assert [[e.type for e in batch] for batch in recorder.appended] == [["task.started", "task.succeeded"]]
    assert handed == []


def test_an_unexpected_error_in_the_move_still_writes_the_records(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    with pytest.raises(Bug):
        run(monkeypatch, Bug("not a store, broker or concurrency error"), recorder)
    assert [[e.type for e in batch] for batch in recorder.appended] == [["task.started", "task.succeeded"]]


class Bug(Exception):
    pass
