"""The reference saga's side-effect store on SQLite: effects once per key, undo with a marker, faults."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine

from relaybus.tasks.agents.content_store import (
    AlreadyUndone,
    InjectedFailure,
    InjectedOutage,
    apply_once,
    engine_for,
    inject,
    live_items,
    saga_items,
    set_fault,
    take_fault,
    undo,
)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return engine_for(f"sqlite:///{tmp_path / 'content.sqlite'}")


def test_an_effect_is_written_once_per_key_and_a_repeat_replays_the_first_data(engine):
    first = apply_once(engine, key="s:writing:writing:step", saga_id="s", kind="draft", data={"v": 1})
    again = apply_once(engine, key="s:writing:writing:step", saga_id="s", kind="draft", data={"v": 2})
    assert first == ({"v": 1}, True)
    assert again == ({"v": 1}, False)
    assert len(saga_items(engine, "s")) == 1


def test_undo_is_idempotent_and_an_undo_before_the_step_leaves_a_marker_the_step_cannot_pass(engine):
    apply_once(engine, key="k1", saga_id="s", kind="draft", data={})
    assert undo(engine, step_key="k1", undo_key="u1", saga_id="s", kind="draft") is True
    assert undo(engine, step_key="k1", undo_key="u1", saga_id="s", kind="draft") is False
    assert undo(engine, step_key="k2", undo_key="u2", saga_id="s", kind="review") is False  # nothing to undo
    with pytest.raises(AlreadyUndone):
        apply_once(engine, key="k2", saga_id="s", kind="review", data={})  # the step, late, after its undo
    assert live_items(engine, "s") == []
    assert {(i["key"], i["status"], i["undone_by"]) for i in saga_items(engine, "s")} == {
        ("k1", "undone", "u1"),
        ("k2", "undone", "u2"),
    }


def test_faults_fire_as_often_as_asked_for_their_saga_or_for_every_saga(engine):
    set_fault(engine, "step:writing", saga_id="s1", times=2, error="permanent")
    set_fault(engine, "compensation:review", error="transient")  # every saga, always
    for _ in range(2):
        with pytest.raises(InjectedFailure):
            inject(engine, "s1", "step:writing", "k")
    inject(engine, "s1", "step:writing", "k")  # spent
    assert take_fault(engine, "s2", "step:writing") is None, "scoped to s1"
    for saga in ("s1", "s2", "s3"):
        with pytest.raises(InjectedOutage):
            inject(engine, saga, "compensation:review", "k")
