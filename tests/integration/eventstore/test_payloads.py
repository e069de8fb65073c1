"""Payloads by reference (eventstore.payloads): stored once, redacted, read back checked, verified."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from relaybus.eventstore import NewEvent, PayloadAltered, PayloadMissing, PayloadRef, StoreConfig
from relaybus.eventstore.payloads import is_ref
from tests.integration.eventstore.conftest import Database

BIG = "lorem ipsum " * 10_000  # 120 KB


def test_a_payload_is_stored_once_and_read_back_as_it_was(db: Database) -> None:
    store = db.open()
    value = {"document": BIG, "n": 3}
    first, second = store.put_payload(value), store.put_payload(value)
    assert first == second and first.ref.startswith("sha256:") and first.size > 120_000
    assert store.get_payload(first) == value
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM payloads")).scalar() == 1


def test_a_stored_payload_is_redacted_before_it_is_stored(db: Database) -> None:
    store = db.open()
    ref = store.put_payload({"api_key": "sk-live-1234567890abcdefgh", "text": BIG})
    assert store.get_payload(ref)["api_key"] == "[REDACTED]"
    with store.engine.connect() as conn:
        assert "sk-live" not in conn.execute(text("SELECT body FROM payloads")).scalar_one()


def test_a_large_event_payload_is_kept_by_reference_whole_and_verify_holds(db: Database) -> None:
    store = db.open(StoreConfig(payload_inline_max_bytes=32 * 1024))
    recorded = store.append_one(NewEvent(stream_id="s1", type="task.succeeded", payload={"output": {"text": BIG}}))
    assert is_ref(recorded.payload["output"]["text"])  # not truncated: the whole text, by reference
    assert store.get_payload(PayloadRef.model_validate(recorded.payload["output"]["text"])) == BIG
    report = store.verify()
    assert report.ok and report.payloads_checked == 1 and report.payload_problems == []


def test_an_altered_payload_is_an_error_naming_it_and_verify_reports_it(db: Database) -> None:
    store = db.open(StoreConfig(payload_inline_max_bytes=32 * 1024))
    event = store.append_one(NewEvent(stream_id="s1", type="task.succeeded", payload={"output": {"text": BIG}}))
    ref = PayloadRef.model_validate(event.payload["output"]["text"])
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE payloads SET body = :b WHERE digest = :d"), {"b": '"forged"', "d": ref.digest})
    with pytest.raises(PayloadAltered, match=ref.ref):
        store.get_payload(ref)
    report = store.verify()
    assert not report.ok
    assert [(p.ref, p.reason, p.referenced_by) for p in report.payload_problems] == [
        (ref.ref, "payload-altered", event.event_id)
    ]
    assert report.first_broken is None  # the chain itself holds: the event carries the digest the row lost


def test_a_missing_payload_is_an_error_naming_it_and_verify_reports_it(db: Database) -> None:
    store = db.open(StoreConfig(payload_inline_max_bytes=32 * 1024))
    event = store.append_one(NewEvent(stream_id="s1", type="task.succeeded", payload={"output": {"text": BIG}}))
    ref = PayloadRef.model_validate(event.payload["output"]["text"])
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM payloads"))
    with pytest.raises(PayloadMissing, match=ref.ref):
        store.get_payload(ref)
    report = store.verify()
    assert not report.ok
    assert [(p.ref, p.reason, p.referenced_by) for p in report.payload_problems] == [
        (ref.ref, "payload-missing", event.event_id)
    ]
