from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from relaybus.eventstore.hashing import (
    HASHED_FIELDS,
    PREV_HASH_KEY,
    canonical_json,
    content_fragments,
    content_json,
    event_hash,
    format_time,
)

FIELDS = {name: None for name in HASHED_FIELDS} | {
    "event_id": "e1",
    "stream_id": "s",
    "version": 1,
    "type": "t",
    "schema_version": 1,
    "correlation_id": "s",
    "occurred_at": datetime(2025, 1, 1, tzinfo=UTC),
    "recorded_at": datetime(2025, 1, 1, 0, 0, 1, tzinfo=UTC),
    "payload": {"b": 1, "a": [1, 2]},
    "metadata": {},
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


def test_canonical_json_sorts_keys_and_has_no_whitespace() -> None:
    assert canonical_json({"b": 1, "a": {"d": [1, "é"], "c": None}}) == '{"a":{"c":null,"d":[1,"é"]},"b":1}'


def test_times_are_utc_with_microseconds_whatever_their_zone() -> None:
    paris = timezone(timedelta(hours=1))
    assert format_time(datetime(2025, 1, 1, 13, 0, tzinfo=paris)) == "2025-01-01T12:00:00.000000Z"
    assert format_time(datetime(2025, 1, 1, 12, 0, 0, 5)) == "2025-01-01T12:00:00.000005Z"


def test_the_hash_covers_every_content_field_and_the_previous_hash() -> None:
    base = event_hash(FIELDS, None)
    assert base == event_hash(dict(reversed(list(FIELDS.items()))), None)  # key order is irrelevant
    assert event_hash(FIELDS, "0" * 64) != base
    for name in HASHED_FIELDS:
        changed = dict(FIELDS)
        value = FIELDS[name]
        if isinstance(value, datetime):
            changed[name] = value + timedelta(microseconds=1)
        elif isinstance(value, dict):
            changed[name] = {**value, "x": 1}
        elif isinstance(value, int):
            changed[name] = value + 1
        else:
            changed[name] = "other"
        assert event_hash(changed, None) != base, name


@settings(deadline=None)  # a loaded CI machine must not turn slowness into failure
@given(json_values)
def test_a_json_round_trip_keeps_the_hash(payload: object) -> None:
    import json

    fields = FIELDS | {"payload": {"v": payload}}
    reloaded = FIELDS | {"payload": json.loads(json.dumps({"v": payload}))}
    assert event_hash(fields, None) == event_hash(reloaded, None)


scalars = st.none() | st.integers(min_value=-(2**40), max_value=2**40) | st.text(max_size=20)
times = st.datetimes(timezones=st.just(UTC))


@settings(deadline=None)  # a loaded CI machine must not turn slowness into failure
@given(
    fields=st.fixed_dictionaries(
        {name: scalars for name in HASHED_FIELDS if name not in {"payload", "metadata", "occurred_at", "recorded_at"}}
        | {"occurred_at": times, "recorded_at": times, "payload": json_values, "metadata": json_values}
    ),
    prev_hash=st.none() | st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
)
def test_the_fast_content_json_is_exactly_the_canonical_json_of_the_content(
    fields: dict[str, object], prev_hash: str | None
) -> None:
    content = dict(fields)
    content["occurred_at"] = format_time(fields["occurred_at"])  # type: ignore[arg-type]
    content["recorded_at"] = format_time(fields["recorded_at"])  # type: ignore[arg-type]
    content["prev_hash"] = prev_hash
    expected = canonical_json(content)

    actual = content_json(fields, canonical_json(fields["payload"]), canonical_json(fields["metadata"]), prev_hash)

    assert actual == expected
    assert event_hash(fields, prev_hash) == hashlib.sha256(expected.encode()).hexdigest()


@settings(max_examples=200, deadline=None)
@given(
    fields=st.fixed_dictionaries(
        {name: scalars for name in HASHED_FIELDS if name not in {"payload", "metadata", "occurred_at", "recorded_at"}}
        | {"occurred_at": times, "recorded_at": times, "payload": json_values, "metadata": json_values}
        | {"version": st.integers(min_value=1, max_value=2**31 - 1)}  # the server prints an integer
    ),
    prev_hash=st.none() | st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
)
def test_the_fragments_the_server_joins_make_the_content_json(fields: dict[str, object], prev_hash: str | None) -> None:
    """Migration 0012's function joins them around the metadata, payload, previous hash and version it knows."""
    payload, metadata = canonical_json(fields["payload"]), canonical_json(fields["metadata"])
    occurred, recorded = format_time(fields["occurred_at"]), format_time(fields["recorded_at"])  # type: ignore[arg-type]
    a, b, c, d = content_fragments(fields, occurred, recorded)
    prev = "null" if prev_hash is None else f'"{prev_hash}"'
    joined = a + metadata + b + payload + PREV_HASH_KEY + prev + c + str(fields["version"]) + d
    assert joined == content_json(fields, payload, metadata, prev_hash)
