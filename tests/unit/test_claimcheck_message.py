"""offload_message / resolve_call (tasks.runtime.claimcheck) on a real SQLite event store: a task body's
args, kwargs and the signatures it embeds (chain, callbacks, chord) carry references, and read back whole."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery import Celery

from relaybus.celery import create_app
from relaybus.eventstore.payloads import is_ref, json_size, refs_in
from relaybus.settings import Settings
from relaybus.tasks.errors import PayloadUnreadable
from relaybus.tasks.runtime.claimcheck import offload_message, payload_store, resolve_call

BIG = "x" * 100_000


@pytest.fixture
def app(tmp_path: Path) -> Celery:
    return create_app(Settings(broker_url="memory://", eventstore_url=f"sqlite:///{tmp_path / 'e.sqlite'}"))


def test_a_task_body_and_the_signatures_it_embeds_carry_references(app: Celery) -> None:
    step = {"task": "agents.b", "args": [], "kwargs": {"doc": BIG}, "options": {}, "subtask_type": None}
    advance = {"task": "pipelines.p.advance", "args": [], "kwargs": {"stage": 1, "run": {"doc": BIG}},
               "options": {}, "subtask_type": None}
    chord_body = {"task": "pipelines.p.join", "args": [], "kwargs": {"prev": {"doc": BIG}}, "options": {},
                  "subtask_type": None}
    embed = {"callbacks": None, "errbacks": None, "chain": [advance, step], "chord": chord_body}
    args, kwargs, new_embed = offload_message(app, [{"doc": BIG}], {"title": "t", "doc": BIG}, embed)
    assert json_size([args, kwargs, new_embed]) < 4096
    assert is_ref(args[0]["doc"]) and is_ref(kwargs["doc"]) and kwargs["title"] == "t"
    assert is_ref(new_embed["chain"][0]["kwargs"]["run"]["doc"]) and new_embed["chain"][0]["kwargs"]["stage"] == 1
    assert is_ref(new_embed["chain"][1]["kwargs"]["doc"]) and is_ref(new_embed["chord"]["kwargs"]["prev"]["doc"])
    assert len(set(refs_in(new_embed))) == 1  # one value, stored once
    assert embed["chain"][0]["kwargs"]["run"]["doc"] == BIG  # the caller's objects are not changed

    resolved_args, resolved_kwargs = resolve_call(app, "b", "t-1", args, kwargs)
    assert resolved_args == ({"doc": BIG},) and resolved_kwargs == {"title": "t", "doc": BIG}


def test_a_small_body_is_left_as_it_is(app: Celery) -> None:
    args, kwargs = [{"a": 1}], {"b": "c"}
    out = offload_message(app, args, kwargs, None)
    assert out[0] is args and out[1] is kwargs


def test_a_reference_to_a_missing_payload_names_it_the_agent_and_the_task(app: Celery) -> None:
    _, kwargs, _ = offload_message(app, [], {"doc": BIG}, None)
    ref = kwargs["doc"]["$ref"]
    with payload_store(app).engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM payloads")
    with pytest.raises(PayloadUnreadable) as caught:
        resolve_call(app, "writer", "t-9", (), kwargs)
    assert caught.value.reason == "payload-missing" and caught.value.ref == ref
    assert ref in str(caught.value) and "'writer'" in str(caught.value) and "t-9" in str(caught.value)
