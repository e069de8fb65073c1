"""Tamper evidence against someone who can write the database (issue 15): keyed links, gapless positions, and
signed checkpoints, each tamper done with raw SQL as an intruder would (PostgreSQL: ``session_replication_role =
replica``, which silences the append-only triggers; SQLite: the triggers dropped), then ``relaybus verify`` run
through the CLI, its exit code and message asserted. On SQLite and PostgreSQL alike (the ``db`` fixture)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Connection, create_engine, text

from relaybus.cli import integrity as cli_integrity
from relaybus.cli import main
from relaybus.cli import services as cli_services
from relaybus.eventstore import EventStore, NewEvent, StoreConfig, checkpoints, migrations
from relaybus.eventstore.hashing import canonical_json, content_json, event_hash, link_hash, sha256_hex
from relaybus.eventstore.keys import UNKEYED
from relaybus.eventstore.schema import events
from relaybus.settings import Settings
from tests.integration.eventstore.conftest import Database

SECRET_1 = "k1-secret-" + "a" * 40
SECRET_2 = "k2-secret-" + "b" * 40


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "chain.keys"
    path.write_text(f"# the last key links\nk1={SECRET_1}\n")
    return path


@pytest.fixture
def signing_key(tmp_path: Path) -> Path:
    path = tmp_path / "checkpoint.pem"
    checkpoints.new_private_key(path)
    return path


def open_keyed(db: Database, keys_file: Path | None) -> EventStore:
    return db.open(StoreConfig(chain_key_file=str(keys_file) if keys_file else None))


def settings_for(db: Database, keys_file: Path | None, signing_key: Path | None = None) -> Settings:
    url = db.url if db.schema is None else f"{db.url}?options=-csearch_path%3D{db.schema}"
    return Settings(
        eventstore_url=url,
        chain_key_file=str(keys_file) if keys_file else None,
        checkpoint_key_file=str(signing_key) if signing_key else None,
    )


def relaybus(monkeypatch: pytest.MonkeyPatch, settings: Settings, *args: str) -> Result:
    """The CLI in this process, on ``settings`` (as the environment would give them)."""
    monkeypatch.setattr(cli_integrity, "get_settings", lambda: settings)
    monkeypatch.setattr(cli_services, "get_settings", lambda: settings)
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@contextmanager
def as_intruder(db: Database, store: EventStore) -> Iterator[Connection]:
    """A transaction in which the append-only triggers do not fire."""
    with store.engine.begin() as conn:
        if db.kind == "postgresql":
            conn.execute(text("SET LOCAL session_replication_role = replica"))
        else:
            db.drop_append_only_triggers(conn)
        yield conn


def write_log(store: EventStore, streams: int = 3, per_stream: int = 4) -> list[Any]:
    """Events of ``streams`` streams, interleaved: positions 1.. in round-robin order."""
    events = [
        NewEvent(stream_id=f"s{i % streams}", type="t", payload={"amount": i}) for i in range(streams * per_stream)
    ]
    return store.append(events)


def rechain(conn: Connection, store: EventStore, stream: str, payload_of: dict[int, Any], kind: str) -> None:
    """Rewrite payloads of ``stream`` and recompute its chain as someone without the key can: ``kind`` is
    ``"sha256"`` (unkeyed links), ``"legacy"`` (links as before 0005), or ``"guess"`` (keeps the key id and
    links with a key of its own)."""
    prev: str | None = None
    for event in store.read_stream(stream):
        payload = payload_of.get(event.version, event.payload)
        fields = {**event.__dict__, "payload": payload}
        content = content_json(fields, canonical_json(payload), canonical_json(event.metadata), prev)
        if kind == "legacy":
            key_id, digest = None, sha256_hex(content)
        elif kind == "sha256":
            key_id, digest = UNKEYED, link_hash(None, UNKEYED, event.position, content)
        else:
            guess = b"the intruder's own key, 32 bytes"
            key_id, digest = event.key_id, link_hash(guess, "k1", event.position, content)
        conn.execute(
            text("UPDATE events SET payload = :p, hash = :h, prev_hash = :ph, key_id = :k WHERE event_id = :id"),
            {"p": canonical_json(payload), "h": digest, "ph": prev, "k": key_id, "id": event.event_id},
        )
        prev = digest


def make_checkpoint(monkeypatch: pytest.MonkeyPatch, settings: Settings, path: Path) -> dict[str, Any]:
    result = relaybus(monkeypatch, settings, "checkpoint", "--out", str(path))
    assert result.exit_code == 0, result.output
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


# -- a keyed log --------------------------------------------------------------------------------------------


def test_a_keyed_log_verifies_and_says_every_link_is_keyed(
    db: Database, keys_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_keyed(db, keys_file)
    recorded = write_log(store)

    result = relaybus(monkeypatch, settings_for(db, keys_file), "verify")

    assert {e.key_id for e in recorded} == {"k1"}
    assert [e.position for e in recorded] == list(range(1, 13))
    assert result.exit_code == 0, result.output
    assert "all chains hold: 12 events in 3 streams, every link keyed (chain keys: k1)" in result.stdout
    assert SECRET_1 not in result.output


@pytest.mark.parametrize("kind", ["guess", "sha256", "legacy"])
def test_a_payload_rewritten_and_rechained_without_the_key_is_found(
    db: Database, keys_file: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    store = open_keyed(db, keys_file)
    write_log(store)
    with as_intruder(db, store) as conn:
        rechain(conn, store, "s1", {2: {"amount": 1_000_000}}, kind)  # s1 holds positions 2, 5, 8, 11

    result = relaybus(monkeypatch, settings_for(db, keys_file), "verify")

    assert result.exit_code == 1
    reason = "its content no longer gives its hash" if kind == "guess" else "an older kind of link follows a newer one"
    assert "BROKEN: position 2, stream 's1' version 1" in result.stderr  # the first link re-made
    assert reason in result.stderr


def test_a_rewrite_without_rechaining_is_still_found_by_its_hash(
    db: Database, keys_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_keyed(db, keys_file)
    recorded = write_log(store)
    with as_intruder(db, store) as conn:
        conn.execute(text("UPDATE events SET payload = '{\"amount\":-1}' WHERE position = 5"))

    result = relaybus(monkeypatch, settings_for(db, keys_file), "verify")

    assert result.exit_code == 1
    assert f"BROKEN: position 5, stream {recorded[4].stream_id!r}" in result.stderr
    assert "its content no longer gives its hash" in result.stderr


# -- deletions and positions --------------------------------------------------------------------------------


def test_a_stream_whose_last_events_were_deleted_leaves_a_position_gap(
    db: Database, keys_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_keyed(db, keys_file)
    write_log(store)  # s1 holds positions 2, 5, 8, 11
    with as_intruder(db, store) as conn:
        conn.execute(text("DELETE FROM events WHERE stream_id = 's1' AND version >= 3"))

    result = relaybus(monkeypatch, settings_for(db, keys_file), "verify")

    assert result.exit_code == 1
    assert "BROKEN: position 9, stream 's2' version 3" in result.stderr
    assert "a position is missing before it (an event was deleted) (expected 8, found 9)" in result.stderr


def test_renumbering_positions_to_close_a_gap_breaks_the_keyed_links(
    db: Database, keys_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_keyed(db, keys_file)
    store.append([NewEvent(stream_id="a", type="t"), NewEvent(stream_id="lone", type="t")])
    store.append([NewEvent(stream_id="a", type="t") for _ in range(3)])
    with as_intruder(db, store) as conn:
        conn.execute(text("DELETE FROM events WHERE stream_id = 'lone'"))
        conn.execute(text("UPDATE events SET position = -position WHERE position > 2"))
        conn.execute(text("UPDATE events SET position = -position - 1 WHERE position < 0"))

    result = relaybus(monkeypatch, settings_for(db, keys_file), "verify")

    assert result.exit_code == 1
    assert "BROKEN: position 2, stream 'a' version 2" in result.stderr
    assert "its content no longer gives its hash" in result.stderr


def test_a_position_taken_twice_is_found_where_the_schema_allows_it(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_keyed(db, None)
    write_log(store, streams=1, per_stream=3)
    forged = {
        "event_id": "forged", "stream_id": "extra", "version": 1, "type": "t", "schema_version": 1,
        "correlation_id": "extra", "causation_id": None, "task_id": None, "agent": None, "queue": None,
        "priority": None, "attempt": None, "worker_host": None, "metadata": {},
        "occurred_at": store.read_stream("s0")[0].occurred_at, "recorded_at": store.read_stream("s0")[0].recorded_at,
    }  # fmt: skip
    content = content_json({**forged, "payload": {}}, "{}", "{}", None)
    row = {**forged, "payload": "{}", "metadata": "{}", "position": 2, "hash": link_hash(None, UNKEYED, 2, content)}
    insert = text(
        "INSERT INTO events (position, event_id, stream_id, version, type, schema_version, correlation_id, "
        "occurred_at, recorded_at, payload, metadata, hash, key_id) VALUES (:position, :event_id, :stream_id, "
        ":version, :type, :schema_version, :correlation_id, :occurred_at, :recorded_at, :payload, :metadata, "
        ":hash, 'sha256')"
    )
    if db.kind == "sqlite":  # position is the rowid: SQLite refuses a second row at it, whatever the intruder does
        with pytest.raises(Exception, match=r"UNIQUE constraint failed: events\.position"), as_intruder(db, store) as c:
            c.execute(insert, row)
        return
    with as_intruder(db, store) as conn:
        conn.execute(text("ALTER TABLE events DROP CONSTRAINT events_pkey"))
        conn.execute(insert, row)

    result = relaybus(monkeypatch, settings_for(db, None), "verify")

    assert result.exit_code == 1
    assert "BROKEN: position 2" in result.stderr and "its position is taken twice" in result.stderr


# -- checkpoints --------------------------------------------------------------------------------------------


def test_a_truncated_tail_of_the_log_is_found_against_a_checkpoint(
    db: Database, keys_file: Path, signing_key: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_keyed(db, keys_file)
    write_log(store)
    settings = settings_for(db, keys_file, signing_key)
    checkpoint = make_checkpoint(monkeypatch, settings, tmp_path / "cp.json")
    store.append([NewEvent(stream_id="s0", type="later")])
    with as_intruder(db, store) as conn:
        conn.execute(text("DELETE FROM events WHERE position >= 11"))

    without = relaybus(monkeypatch, settings, "verify", "--no-record")  # its log.verified would move the tail
    result = relaybus(monkeypatch, settings, "verify", "--since-checkpoint", str(tmp_path / "cp.json"))

    assert (checkpoint["last_position"], checkpoint["event_count"], checkpoint["stream_count"]) == (12, 12, 3)
    assert without.exit_code == 0  # nothing after the tail shows it missing: what checkpoints are for
    assert result.exit_code == 1
    assert (
        "CHECKPOINT: the log does not match the checkpoint: events were deleted (a truncated tail?): "
        "checkpoint 12 events up to position 12, log 10 up to position 10"
    ) in result.stderr


def test_a_deleted_stream_is_found_against_a_checkpoint(
    db: Database, keys_file: Path, signing_key: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_keyed(db, keys_file)
    write_log(store)
    settings = settings_for(db, keys_file, signing_key)
    make_checkpoint(monkeypatch, settings, tmp_path / "cp.json")
    with as_intruder(db, store) as conn:
        conn.execute(text("DELETE FROM events WHERE stream_id = 's2'"))

    result = relaybus(monkeypatch, settings, "verify", "--since-checkpoint", str(tmp_path / "cp.json"))

    assert result.exit_code == 1
    assert "BROKEN: position 4, stream 's0'" in result.stderr  # the gap at 3 shows even without the checkpoint
    assert "CHECKPOINT: the log does not match the checkpoint: streams were deleted: checkpoint 3 streams, log 2" in (
        result.stderr
    )


def test_an_unkeyed_log_rewritten_and_rechained_verifies_but_not_against_its_checkpoint(
    db: Database, signing_key: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_keyed(db, None)
    write_log(store)
    settings = settings_for(db, None, signing_key)
    make_checkpoint(monkeypatch, settings, tmp_path / "cp.json")
    with as_intruder(db, store) as conn:
        rechain(conn, store, "s1", {1: {"amount": 1_000_000}}, "sha256")

    without = relaybus(monkeypatch, settings, "verify")
    result = relaybus(monkeypatch, settings, "verify", "--since-checkpoint", str(tmp_path / "cp.json"))

    assert without.exit_code == 0 and "the log is UNKEYED" in without.stdout
    assert result.exit_code == 1
    assert "the heads of the streams differ (history rewritten and re-chained)" in result.stderr


def test_a_checkpoint_holds_while_the_log_grows_past_it(
    db: Database, keys_file: Path, signing_key: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_keyed(db, keys_file)
    write_log(store)
    settings = settings_for(db, keys_file, signing_key)
    checkpoint = make_checkpoint(monkeypatch, settings, tmp_path / "cp.json")
    store.append([NewEvent(stream_id=f"s{i % 4}", type="later") for i in range(8)])  # a new stream, s3, too

    result = relaybus(monkeypatch, settings, "verify", "--since-checkpoint", str(tmp_path / "cp.json"), "--json")

    report = json.loads(result.stdout)
    assert result.exit_code == 0, result.output
    assert (report["ok"], report["keyed"]) == (True, True)
    assert (report["checkpoint"], report["checkpoint_signature"]) == (None, None)
    assert report["state"]["event_count"] == 20 and checkpoint["event_count"] == 12
    signer = checkpoints.load_private_key(signing_key).public_key()
    assert checkpoint["public_key"] == checkpoints.public_key_text(signer)


@pytest.mark.parametrize("forgery", ["edited", "other_key"])
def test_a_checkpoint_whose_signature_does_not_hold_is_not_trusted(
    db: Database, keys_file: Path, signing_key: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forgery: str
) -> None:
    store = open_keyed(db, keys_file)
    write_log(store)
    settings = settings_for(db, keys_file, signing_key)
    path = tmp_path / "cp.json"
    good = make_checkpoint(monkeypatch, settings, path)
    with as_intruder(db, store) as conn:
        conn.execute(text("DELETE FROM events WHERE position = 12"))
    if forgery == "edited":  # the intruder makes the checkpoint agree with the truncated log
        path.write_text(json.dumps({**good, "last_position": 11, "event_count": 11}))
    else:  # or signs a checkpoint of the truncated log with a key of their own
        intruder = settings_for(db, keys_file, tmp_path / "intruder.pem")
        checkpoints.new_private_key(tmp_path / "intruder.pem")
        make_checkpoint(monkeypatch, intruder, path)

    result = relaybus(monkeypatch, settings, "verify", "--since-checkpoint", str(path))

    assert result.exit_code == 1
    says = "signature does not match its contents" if forgery == "edited" else "signed by a key that is not trusted"
    assert f"CHECKPOINT NOT TRUSTED: the checkpoint's {says}" in result.stderr or says in result.stderr


def test_a_checkpoint_that_cannot_be_checked_is_bad_usage(
    db: Database, keys_file: Path, signing_key: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_keyed(db, keys_file)
    write_log(store)
    make_checkpoint(monkeypatch, settings_for(db, keys_file, signing_key), tmp_path / "cp.json")
    (tmp_path / "junk.json").write_text("{}")

    no_public_key = relaybus(monkeypatch, settings_for(db, keys_file), "verify", "--since-checkpoint",
                             str(tmp_path / "cp.json"))  # fmt: skip
    junk = relaybus(monkeypatch, settings_for(db, keys_file, signing_key), "verify", "--since-checkpoint",
                    str(tmp_path / "junk.json"))  # fmt: skip

    assert no_public_key.exit_code == 2 and "no checkpoint public key configured" in no_public_key.stderr
    assert junk.exit_code == 2 and "is not a relaybus checkpoint" in junk.stderr


def test_a_checkpoint_is_refused_for_a_log_that_does_not_verify(
    db: Database, keys_file: Path, signing_key: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_keyed(db, keys_file)
    write_log(store)
    with as_intruder(db, store) as conn:
        conn.execute(text("UPDATE events SET payload = '{\"amount\":-1}' WHERE position = 5"))

    result = relaybus(monkeypatch, settings_for(db, keys_file, signing_key), "checkpoint")

    assert result.exit_code == 1
    assert "not signing a log that does not verify: position 5" in result.stderr
    assert result.stdout == ""


# -- unkeyed logs and key rotation ----------------------------------------------------------------------------


def test_an_unkeyed_log_verifies_and_says_plainly_that_it_is_unkeyed(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_keyed(db, None)
    recorded = write_log(store)

    result = relaybus(monkeypatch, settings_for(db, None), "verify")

    assert {e.key_id for e in recorded} == {UNKEYED}
    assert result.exit_code == 0
    assert result.stdout.startswith("all chains hold, but the log is UNKEYED: 12 events in 3 streams")
    assert "set RELAYBUS_CHAIN_KEY_FILE" in result.stdout


def test_after_a_key_rotation_old_events_verify_with_the_old_key_and_new_ones_with_the_new(
    db: Database, keys_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = open_keyed(db, keys_file)
    old = write_log(first, per_stream=2)
    result = relaybus(monkeypatch, settings_for(db, keys_file, None), "chain-key", "k2", "--file", str(keys_file))
    assert result.exit_code == 0 and "chain key 'k2' added" in result.stderr
    second = open_keyed(db, keys_file)
    new = write_log(second, per_stream=2)
    only_new_key = keys_file.with_name("k2-only.keys")
    only_new_key.write_text(keys_file.read_text().splitlines()[-1] + "\n")

    both = relaybus(monkeypatch, settings_for(db, keys_file), "verify")
    without_old = relaybus(monkeypatch, settings_for(db, only_new_key), "verify")

    assert second.chain_keys is not None and second.chain_keys.ids == ("k1", "k2")
    assert [e.key_id for e in old] == ["k1"] * 6 and [e.key_id for e in new] == ["k2"] * 6
    assert both.exit_code == 0, both.output
    assert "every link keyed (chain keys: k1, k2)" in both.stdout
    assert without_old.exit_code == 1
    assert "it names a chain key that is not configured (expected k2, found k1)" in without_old.stderr
    assert "k2-secret" not in both.output + without_old.output + keys_file.read_text().split("k2=")[0]


# -- migration ----------------------------------------------------------------------------------------------


def test_a_log_written_before_keyed_chains_upgrades_and_still_verifies(
    db: Database, keys_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrations.upgrade(db.url, schema=db.schema, revision="0004")
    # Events as appends wrote them then: no key id, sha256 over the content; on PostgreSQL positions from a
    # sequence, which a rolled-back append left a gap in (3 and 4).
    positions = [1, 2, 3] if db.kind == "sqlite" else [1, 2, 5]
    engine = create_engine(settings_for(db, None).eventstore_url)
    now = datetime.now(UTC)
    prev: dict[str, str] = {}
    with engine.begin() as conn:
        for i, position in enumerate(positions):
            stream = "old-a" if i != 1 else "old-b"
            fields = {
                "event_id": f"old-{i}", "stream_id": stream, "version": 2 if i == 2 else 1, "type": "t",
                "schema_version": 1, "correlation_id": stream, "causation_id": None, "occurred_at": now,
                "recorded_at": now, "task_id": None, "agent": None, "queue": None, "priority": None,
                "attempt": None, "worker_host": None, "payload": {"i": i}, "metadata": {},
            }  # fmt: skip
            digest = event_hash(fields, prev.get(stream))
            conn.execute(events.insert().values(**fields, position=position, hash=digest, prev_hash=prev.get(stream)))
            prev[stream] = digest
    engine.dispose()

    store = open_keyed(db, keys_file)  # upgrades to 0005
    new = store.append([NewEvent(stream_id="old-a", type="t"), NewEvent(stream_id="new", type="t")])
    result = relaybus(monkeypatch, settings_for(db, keys_file), "verify")

    last = positions[-1]
    assert [(e.position, e.version, e.key_id) for e in new] == [(last + 1, 3, "k1"), (last + 2, 1, "k1")]
    assert [e.key_id for e in store.read_stream("old-a")] == [None, None, "k1"]
    assert result.exit_code == 0, result.output
    assert "all chains hold: 5 events in 3 streams (2 links keyed; 3 from before keyed chains)" in result.stdout
