"""A small append in one statement: ``eventstore_append_v1``, which numbers, chains and writes a batch under the lock.

An append of a few events (a task's records, a saga's move) took two round trips and six statements on PostgreSQL:
the lock and the start statement (ids stored, heads, the last position), then the INSERTs and the commit, because
the client needed the heads and positions to hash each event's link. This function does it all in the server, in
one statement (the client runs it as its own transaction): one round trip. The client sends each event's columns
and its canonical content in four pieces around the parts only the log knows (``prev_hash`` and ``version``; the
position is in the link's prefix), and the server joins them and hashes them with ``sha256()``. What it stores is byte
for byte what the client path stores: ``verify`` recomputes every link in Python (:mod:`eventstore.hashing`).

Unkeyed links only (``key_id = 'sha256'``): a keyed link's HMAC needs the chain key, which never leaves the
client. A database whose encoding is not UTF-8 is not given it either (the link hashes UTF-8 bytes).

``SECURITY INVOKER``: it runs with the caller's rights (INSERT and SELECT on ``events``, EXECUTE on the lock
function), so it gives the app role nothing it did not hold. Names are schema-qualified in its body. The ``_v1``
is its contract: a change of arguments or results is a new function, so that workers of two releases can share a
log during a rolling upgrade. A worker on a database without it (not yet upgraded) appends as before.

Results, one row per event it was given (``o_state``: ``w`` written, with its position, version, hash and
previous hash; ``s`` stored already, not written), or a single ``c`` row (conflict: nothing written, ``o_version``
the stream's actual version) when ``p_check_stream`` is not at ``p_expected`` while some event is new, or holds an
event marked ``p_new`` (must be new) already.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

FUNCTION = "eventstore_append_v1"
SIGNATURE = "json, timestamptz, text, text, text, integer"

# p_rows: a JSON array of one object per event, in the batch's order (k = 1, 2, ...): its columns, pv (the index
# of the batch's previous event of its stream, 0 if none), nw (must be new), and its content's pieces a, b, c, d.
_ROWS = (
    "json_to_recordset(p_rows) AS x(k integer, id text, st text, pv integer, ty text, sv integer, co text, ca text, "
    "oc timestamptz, ti text, ag text, qu text, pr integer, at integer, wh text, pl text, md text, a text, b text, "
    "c text, d text, nw boolean)"
)


def _body(schema: str) -> str:
    events = f'"{schema}".events'
    return f"""
DECLARE
  n integer := json_array_length(p_rows);
  stored boolean[];
  heads_v integer[] := array_fill(0, ARRAY[n]);
  heads_h text[] := array_fill(NULL::text, ARRAY[n]);
  any_fresh boolean;
  rival boolean;
  last_position bigint;
  actual integer;
  r record;
  pv integer;
  ph text;
  digest text;
BEGIN
  PERFORM "{schema}".eventstore_lock_events();
  SELECT array_agg(q.held ORDER BY q.k), bool_or(q.nw AND q.held) INTO stored, rival
    FROM (SELECT x.k, x.nw, EXISTS (SELECT 1 FROM {events} AS e WHERE e.event_id = x.id) AS held FROM {_ROWS}) AS q;
  any_fresh := false = ANY (stored);
  IF p_check_stream IS NOT NULL THEN
    SELECT e.version INTO actual FROM {events} AS e WHERE e.stream_id = p_check_stream
      ORDER BY e.version DESC LIMIT 1;
    actual := coalesce(actual, 0);
    IF (any_fresh AND actual <> p_expected) OR rival THEN
      o_idx := 0; o_state := 'c'; o_version := actual;
      RETURN NEXT;
      RETURN;
    END IF;
  END IF;
  IF any_fresh THEN
    SELECT coalesce(max(e.position), 0) INTO last_position FROM {events} AS e;
  END IF;
  FOR r IN SELECT * FROM {_ROWS} ORDER BY x.k LOOP
    IF r.pv = 0 THEN
      pv := NULL;
      SELECT e.version, e.hash INTO pv, ph FROM {events} AS e WHERE e.stream_id = r.st
        ORDER BY e.version DESC LIMIT 1;
      IF pv IS NULL THEN pv := 0; ph := NULL; END IF;
    ELSE
      pv := heads_v[r.pv];
      ph := heads_h[r.pv];
    END IF;
    o_idx := r.k;
    IF stored[r.k] THEN
      heads_v[r.k] := pv; heads_h[r.k] := ph;
      o_state := 's'; o_position := NULL; o_version := NULL; o_hash := NULL; o_prev := NULL;
      RETURN NEXT;
      CONTINUE;
    END IF;
    last_position := last_position + 1;
    pv := pv + 1;
    digest := encode(sha256(convert_to(
      p_link_prefix || last_position || ' ' || r.a || r.md || r.b || r.pl
      || ',"prev_hash":' || CASE WHEN ph IS NULL THEN 'null' ELSE '"' || ph || '"' END
      || r.c || pv || r.d, 'UTF8')), 'hex');
    INSERT INTO {events} (position, event_id, stream_id, version, type, schema_version, correlation_id,
      causation_id, occurred_at, recorded_at, task_id, agent, queue, priority, attempt, worker_host, payload,
      metadata, hash, prev_hash, key_id)
    VALUES (last_position, r.id, r.st, pv, r.ty, r.sv, r.co, r.ca, r.oc, p_recorded_at, r.ti, r.ag, r.qu, r.pr,
      r.at, r.wh, r.pl::json, r.md::json, digest, ph, p_key_id);
    heads_v[r.k] := pv; heads_h[r.k] := digest;
    o_state := 'w'; o_position := last_position; o_version := pv; o_hash := digest; o_prev := ph;
    RETURN NEXT;
  END LOOP;
END
"""


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    schema = bind.execute(sa.text("SELECT current_schema()")).scalar_one()
    op.execute(
        f'CREATE OR REPLACE FUNCTION "{schema}".{FUNCTION}('
        "p_rows json, p_recorded_at timestamptz, p_link_prefix text, p_key_id text, p_check_stream text, "
        "p_expected integer) "
        "RETURNS TABLE(o_idx integer, o_state text, o_position bigint, o_version integer, o_hash text, "
        "o_prev text) LANGUAGE plpgsql SECURITY INVOKER AS $fn$" + _body(schema) + "$fn$"
    )
    op.execute(f'REVOKE ALL ON FUNCTION "{schema}".{FUNCTION}({SIGNATURE}) FROM PUBLIC')


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    schema = bind.execute(sa.text("SELECT current_schema()")).scalar_one()
    op.execute(f'DROP FUNCTION IF EXISTS "{schema}".{FUNCTION}({SIGNATURE})')
