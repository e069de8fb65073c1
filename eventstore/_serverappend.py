"""PostgreSQL: a small append in one round trip, numbered, chained and written by the server (migration 0012).

The client path (:mod:`_insert`) needs two round trips and six statements for a task's few records: the lock and
the start statement (stored ids, heads, the last position), whose answers it hashes the links from, then the
INSERTs and the commit. ``eventstore_append_v1`` takes the events' columns and their canonical content in pieces
(:func:`~eventstore.hashing.content_fragments`), and under the lock looks the ids up, reads the heads, numbers the
events, joins each one's content around its previous hash and version, hashes the link with ``sha256()`` and
inserts it. One statement, run as its own transaction (autocommit: no ``BEGIN``, no ``COMMIT``; the server commits
before it answers, and psycopg waits for that answer). What it stores is what the client path would have: ``verify``
recomputes every link in Python.

Used for unkeyed chains (a keyed link needs the chain key, which stays in the client), up to
:data:`MAX_EVENTS` events (larger batches go by ``COPY``, faster per row), on a UTF-8 database whose schema has the
function: :func:`available` asks once per store, and again every :data:`ASK_AGAIN_S` while the answer is no; a
database not yet upgraded is appended to as before.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from psycopg.pq import TransactionStatus
from sqlalchemy import Connection

from relaybus.eventstore._insert import SMALL_BATCH, autocommit, driver_errors, pipeline, preparing
from relaybus.eventstore.hashing import content_fragments, format_time

FUNCTION = "eventstore_append_v1"
SIGNATURE = "json, timestamptz, text, text, text, integer"
"""Its argument types (migration 0012 spells the same out: revisions are snapshots)."""
MAX_EVENTS = SMALL_BATCH
#: A store that found the function missing asks again after this long: a database upgraded under running workers
#: (a rolling upgrade) gets their appends in one round trip without a restart.
ASK_AGAIN_S = 300.0

# The events go as one JSON document, which the server reads with json_to_recordset: psycopg dumps arrays element by
# element in Python (20 arrays of a few events cost a task more client CPU than the two round trips this saves).
_CALL = (
    f"SELECT o_idx, o_state, o_position, o_version, o_hash, o_prev "
    f"FROM {FUNCTION}(%s::json, %s::timestamptz, %s::text, %s::text, %s::text, %s::integer)"
)
_AVAILABLE = (
    "SELECT to_regprocedure(%s) IS NOT NULL AND current_setting('server_encoding') = 'UTF8' "
    "AND has_function_privilege(to_regprocedure(%s), 'EXECUTE')"
)
#: What PostgreSQL answers a call of a function that is not there (a downgrade under a running store).
MISSING_STATES = frozenset({"42883"})
_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


class Written(NamedTuple):
    at: int
    """The event's index in the batch given."""
    position: int
    version: int
    hash: str
    prev_hash: str | None


class Outcome(NamedTuple):
    written: list[Written]
    stored: list[int]
    """Indexes of the events found stored already (not written)."""
    conflict: int | None
    """The checked stream's actual version when the check failed (nothing written), else None."""


_TEXT_FIELDS = ("event_id", "stream_id", "type", "correlation_id", "causation_id", "task_id", "agent", "queue",
                "worker_host")  # fmt: skip


def fits(batch: Sequence[tuple[dict[str, Any], str, str]]) -> bool:
    """Whether this batch is for the function: small, and no NUL in a text column. PostgreSQL's text cannot hold
    one either way, but the client path's error names it ("0x00"); a JSON document's ``\\u0000`` would be refused
    with a message about JSON instead."""
    if len(batch) > MAX_EVENTS:
        return False
    for f, _payload, _metadata in batch:
        for name in _TEXT_FIELDS:
            value = f[name]
            if value is not None and "\x00" in value:
                return False
    return True


def available(conn: Connection) -> bool:
    """Whether this database has the function, takes UTF-8 and lets this role call it."""
    driver = conn.connection.driver_connection
    assert driver is not None
    name = f"{FUNCTION}({SIGNATURE})"
    with driver_errors(conn, _AVAILABLE):
        row = driver.execute(_AVAILABLE, (name, name)).fetchone()
    return bool(row and row[0])


def append(
    conn: Connection,
    batch: Sequence[tuple[dict[str, Any], str, str]],
    recorded_at: datetime,
    link_prefix: str,
    key_id: str,
    *,
    check: tuple[str, int] | None = None,
    must_be_new: frozenset[str] = frozenset(),
    prepare: bool = False,
) -> Outcome:
    """Append ``batch`` ((fields, payload JSON, metadata JSON) of each event, distinct event ids) and commit, in one
    round trip; ``check``: (stream, expected version), see the migration. ``recorded_at`` must be aware UTC."""
    recorded_text = format_time(recorded_at)
    rows = []
    last_of: dict[str, int] = {}
    occurred_at: datetime | None = None
    occurred_text = ""
    for k, (f, payload_json, metadata_json) in enumerate(batch, 1):
        stream = f["stream_id"]
        if f["occurred_at"] is not occurred_at:  # a batch's events often share their time
            occurred_at = f["occurred_at"]
            occurred_text = format_time(occurred_at)
        a, b, c, d = content_fragments(f, occurred_text, recorded_text)
        rows.append({
            "k": k, "id": f["event_id"], "st": stream, "pv": last_of.get(stream, 0), "ty": f["type"],
            "sv": f["schema_version"], "co": f["correlation_id"], "ca": f["causation_id"], "oc": occurred_text,
            "ti": f["task_id"], "ag": f["agent"], "qu": f["queue"], "pr": f["priority"], "at": f["attempt"],
            "wh": f["worker_host"], "pl": payload_json, "md": metadata_json, "a": a, "b": b, "c": c, "d": d,
            "nw": f["event_id"] in must_be_new,
        })  # fmt: skip
        last_of[stream] = k
    stream_checked, expected = check if check is not None else (None, None)
    arguments = (_dumps(rows), recorded_at, link_prefix, key_id, stream_checked, expected)
    driver = conn.connection.driver_connection
    assert driver is not None
    if driver.info.transaction_status == TransactionStatus.IDLE:
        # One statement is its own transaction: no BEGIN, no COMMIT, no pipeline. The server commits (and flushes
        # the WAL) before it answers ReadyForQuery, which psycopg waits for; an error at commit is raised here.
        with driver_errors(conn, _CALL), preparing(driver, prepare), autocommit(conn, driver):
            answer = driver.execute(_CALL, arguments).fetchall()
    else:  # in a transaction already (this store's first append asked for the function in it)
        with driver_errors(conn, _CALL), preparing(driver, prepare), pipeline(conn, driver):
            cursor = driver.execute(_CALL, arguments)
            driver.commit()  # queued in the pipeline: SQLAlchemy's commit at the end of the block finds nothing to do
        answer = cursor.fetchall()
    written: list[Written] = []
    stored: list[int] = []
    for index, state, position, version, hash_, prev_hash in answer:
        if state == "w":
            written.append(Written(index - 1, position, version, hash_, prev_hash))
        elif state == "s":
            stored.append(index - 1)
        else:
            return Outcome([], [], int(version))
    return Outcome(written, stored, None)
