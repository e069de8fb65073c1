"""Contract: the log is append-only in the database itself, tamper-evident, and free of secrets."""

from __future__ import annotations

import hashlib
import json

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import select, text, update

from relaybus.eventstore import EventStore, NewEvent, StoreConfig
from relaybus.eventstore.hashing import canonical_json
from relaybus.eventstore.schema import events
from tests.integration.eventstore.conftest import Database

SECRET = "sk-live-5f2e9c0d7b1a4e3f"


@pytest.mark.parametrize("statement", ["UPDATE events SET type = 'forged'", "DELETE FROM events"])
def test_the_database_refuses_to_change_or_delete_events(store: EventStore, statement: str) -> None:
    store.append([NewEvent(stream_id="s", type="t")])

    with pytest.raises(sa_exc.DBAPIError, match="append-only"), store.engine.begin() as conn:
        conn.execute(text(statement))

    assert [e.type for e in store.read_stream("s")] == ["t"]


def test_verify_reports_that_every_chain_holds(store: EventStore) -> None:
    store.append([NewEvent(stream_id=f"s{i % 4}", type="t", payload={"i": i}) for i in range(20)])

    report = store.verify()

    assert report.ok and report.first_broken is None
    assert (report.events_checked, report.streams_checked) == (20, 4)


def test_a_payload_edited_by_hand_is_the_first_broken_link(db: Database, store: EventStore) -> None:
    recorded = store.append([NewEvent(stream_id="s", type="t", payload={"amount": i}) for i in range(5)])
    victim = recorded[2]
    with store.engine.begin() as conn:
        db.drop_append_only_triggers(conn)
        conn.execute(update(events).where(events.c.event_id == victim.event_id).values(payload={"amount": 1000}))

    report = store.verify()

    assert not report.ok
    assert report.first_broken is not None
    assert report.first_broken.event_id == victim.event_id
    assert report.first_broken.position == victim.position
    assert report.first_broken.reason == "hash_mismatch"
    assert report.broken_links == 1


def test_an_edit_that_recomputes_its_own_hash_breaks_the_next_link(db: Database, store: EventStore) -> None:
    recorded = store.append([NewEvent(stream_id="s", type="t", payload={"amount": i}) for i in range(3)])
    forged_hash = hashlib.sha256(b"forged").hexdigest()
    with store.engine.begin() as conn:
        db.drop_append_only_triggers(conn)
        conn.execute(update(events).where(events.c.event_id == recorded[0].event_id).values(hash=forged_hash))

    report = store.verify()

    assert report.first_broken is not None
    assert (report.first_broken.event_id, report.first_broken.reason) == (recorded[0].event_id, "hash_mismatch")
    assert report.broken_links == 2  # the forged event, and the link from its successor
    assert store.verify().events_checked == 3


def test_a_deleted_event_breaks_its_stream(db: Database, store: EventStore) -> None:
    recorded = store.append([NewEvent(stream_id="s", type="t", payload={"i": i}) for i in range(3)])
    with store.engine.begin() as conn:
        db.drop_append_only_triggers(conn)
        conn.execute(events.delete().where(events.c.event_id == recorded[1].event_id))

    report = store.verify()

    assert report.first_broken is not None
    assert (report.first_broken.event_id, report.first_broken.reason) == (recorded[2].event_id, "version_gap")


def _raw_rows(store: EventStore) -> str:
    with store.engine.connect() as conn:
        return repr(conn.execute(select(events)).all())


def test_secrets_are_masked_before_they_are_written(db: Database) -> None:
    store = db.open(StoreConfig(redact_keys=frozenset({"api_key", "password", "authorization", "token"})))
    payload = {
        "input": {"llm": {"OpenAI-Api-Key": SECRET, "model": "m"}, "steps": [{"password": SECRET}]},
        "headers": {"Authorization": f"Bearer {SECRET}"},
        "usage": {"max_tokens": 100},
    }

    [recorded] = store.append([NewEvent(stream_id="s", type="t", payload=payload, metadata={"apiToken": SECRET})])

    assert recorded.payload["input"]["llm"] == {"OpenAI-Api-Key": "[REDACTED]", "model": "m"}
    assert recorded.payload["input"]["steps"] == [{"password": "[REDACTED]"}]
    assert recorded.payload["headers"] == {"Authorization": "[REDACTED]"}
    assert recorded.payload["usage"] == {"max_tokens": 100}
    assert recorded.metadata == {"apiToken": "[REDACTED]"}
    assert store.read_stream("s") == [recorded]
    assert SECRET not in _raw_rows(store)
    if db.file is not None:  # and not in any page SQLite wrote, WAL included
        for path in db.file.parent.glob(db.file.name + "*"):
            assert SECRET.encode() not in path.read_bytes(), path.name
    assert store.verify().ok


def test_an_oversized_payload_is_stored_truncated_with_its_size_and_hash(db: Database) -> None:
    store = db.open(StoreConfig(max_payload_bytes=1024, preview_chars=100))
    big = {"text": "é" * 3000}
    original = canonical_json(big)

    [recorded] = store.append([NewEvent(stream_id="s", type="t", payload=big, metadata={"small": 1})])

    [stored] = store.read_stream("s")
    assert stored.payload == {
        "_truncated": True,
        "size": len(original.encode()),
        "sha256": hashlib.sha256(original.encode()).hexdigest(),
        "preview": original[:100],
    }
    assert stored.metadata == {"small": 1}
    assert stored == recorded
    assert len(json.dumps(stored.payload)) < 1024
    assert store.verify().ok


def test_a_payload_stored_in_an_equivalent_non_canonical_form_still_verifies(db: Database, store: EventStore) -> None:
    recorded = store.append([NewEvent(stream_id="s", type="t", payload={"b": [1, 2], "a": "x"}) for _ in range(3)])
    with store.engine.begin() as conn:
        db.drop_append_only_triggers(conn)
        # Same value, other text (spaces, key order): verify hashes the stored text first, then decides
        # on the canonical form, as it did when it decoded every payload.
        conn.execute(
            text("UPDATE events SET payload = :p WHERE event_id = :id"),
            {"p": '{ "b": [1, 2],  "a": "x" }', "id": recorded[1].event_id},
        )

    report = store.verify()

    assert report.ok and report.events_checked == 3
