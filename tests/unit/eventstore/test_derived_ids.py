"""Derived event ids: deterministic (a redelivery finds its first copy) yet time-ordered by the origin's time."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from relaybus.eventstore.ids import derived_event_id, new_event_id, time_ms, uuid7_ms

NS = uuid.UUID("6f1c1d0e-5b7e-4a55-9d0b-2f1c0a7e4b11")
AT = 1_796_000_000_123  # a millisecond in 2026


def test_the_same_parts_and_time_give_the_same_id_in_every_process() -> None:
    here = derived_event_id(NS, ("task-1", "started", "0:0:0"), AT)
    assert here == derived_event_id(NS, ["task-1", "started", "0:0:0"], AT)
    code = (
        "import uuid; from relaybus.eventstore.ids import derived_event_id; "
        f"print(derived_event_id(uuid.UUID('{NS}'), ('task-1', 'started', '0:0:0'), {AT}))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "7"}
    )
    assert other.stdout.strip() == here
    # Pinned: a release that changed the derivation would record redelivered messages twice.
    assert here == "01a229f1-287b-76d0-8c6f-706324993c09"


def test_a_derived_id_is_a_uuid7_whose_prefix_is_the_given_time_and_whose_rest_is_the_hash() -> None:
    parsed = uuid.UUID(derived_event_id(NS, ("task-1", "terminal", 0), AT))
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert parsed.int >> 80 == AT
    hashed = uuid.uuid5(NS, "task-1:terminal:0").int
    assert parsed.int >> 64 & 0xFFF == hashed >> 64 & 0xFFF
    assert parsed.int & ((1 << 62) - 1) == hashed & ((1 << 62) - 1)
    assert uuid7_ms(str(parsed)) == AT


def test_without_a_time_it_is_the_uuid5_every_derived_id_was_before() -> None:
    assert derived_event_id(NS, ("task-1", "started", "0:0:0"), None) == str(uuid.uuid5(NS, "task-1:started:0:0:0"))
    assert uuid7_ms(derived_event_id(NS, ("x",), None)) is None


def test_other_parts_or_another_time_give_another_id_and_later_times_sort_after() -> None:
    ids = {derived_event_id(NS, ("task-1", kind, 0), AT) for kind in ("sent", "received", "started", "terminal")}
    assert len(ids) == 4
    earlier = derived_event_id(NS, ("task-1", "sent", 0), AT)
    later = derived_event_id(NS, ("task-0", "sent", 0), AT + 1)
    assert earlier != derived_event_id(NS, ("task-1", "sent", 0), AT + 1)
    assert earlier < later  # index order is time order, whatever the hash
    assert earlier < new_event_id()  # and fresh ids of now come after the past's


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (AT, AT), (str(AT), AT), (0, 0), ((1 << 48) - 1, (1 << 48) - 1),
        (None, None), (True, None), (-1, None), (1 << 48, None), (1.5e12, None), ("", None), ("12a", None),
        ("-5", None), ("١٢٣", None), ("9" * 40, None), ([AT], None),
    ],
)  # fmt: skip
def test_a_header_time_is_whole_milliseconds_or_nothing(value: object, expected: int | None) -> None:
    assert time_ms(value) == expected


def test_only_a_uuid7_gives_a_time() -> None:
    assert uuid7_ms(new_event_id()) is not None
    assert uuid7_ms(str(uuid.uuid4())) is None
    assert uuid7_ms(str(uuid.uuid5(NS, "x"))) is None
    assert uuid7_ms(uuid.UUID(derived_event_id(NS, ("x",), AT)).hex) == AT
    for value in (None, "", "not-a-uuid", "g" * 32, 42, "saga-1"):
        assert uuid7_ms(value) is None


def _uuid5_derived(namespace: uuid.UUID, parts: tuple[object, ...], at_ms: int) -> str:
    """The derivation as it was written first: uuid7_of over the uuid5 object's bits."""
    from relaybus.eventstore.ids import uuid7_of

    return uuid7_of(at_ms, uuid.uuid5(namespace, ":".join(str(p) for p in parts)).int)


def test_a_derived_id_is_the_one_the_uuid5_object_gave_for_any_parts_and_time() -> None:
    # The hash is taken without building the UUID: every bit the id keeps must be uuid5's.
    rng = __import__("random").Random(14)
    other = uuid.UUID("00000000-0000-4000-8000-000000000000")
    for i in range(3000):
        parts = (
            str(uuid.UUID(int=rng.getrandbits(128))), rng.choice(("sent", "received", "terminal", "llm")),
            rng.randrange(0, 10), f"{rng.randrange(3)}:{rng.randrange(3)}:{rng.randrange(2)}", "é→" * (i % 3),
        )  # fmt: skip
        at = rng.randrange(0, 1 << 48)
        for namespace in (NS, other):
            assert derived_event_id(namespace, parts, at) == _uuid5_derived(namespace, parts, at)
    assert derived_event_id(NS, (), AT) == _uuid5_derived(NS, (), AT)


def test_a_name_utf8_cannot_encode_is_refused_as_uuid5_refused_it() -> None:
    with pytest.raises(UnicodeEncodeError):
        uuid.uuid5(NS, "task-\ud800")
    with pytest.raises(UnicodeEncodeError):
        derived_event_id(NS, ("task-\ud800",), AT)


def test_a_uuid7_time_read_again_is_the_same_and_is_each_ids_own() -> None:
    # uuid7_ms remembers what it parsed: every value must still get its own answer, the second time as the first.
    from relaybus.eventstore.ids import uuid7_of

    rng = __import__("random").Random(7)
    values: list[tuple[str, int | None]] = []
    for _ in range(3000):  # more than it remembers: values are dropped and parsed again
        at = rng.randrange(0, 1 << 48)
        seven = uuid7_of(at, rng.getrandbits(128))
        values += [(seven, at), (seven.replace("-", ""), at), (str(uuid.uuid4()), None), (seven.upper(), at)]
    for value, expected in values + values[::-1]:
        assert uuid7_ms(value) == expected


def test_a_str_subclass_is_parsed_as_its_text_and_not_remembered() -> None:
    from relaybus.eventstore.ids import _uuid7_ms_of

    class Odd(str):
        def __hash__(self) -> int:  # every value in one bucket: a cache keyed on it would still hold
            return 0

    seven = derived_event_id(NS, ("x",), AT)
    before = _uuid7_ms_of.cache_info().currsize
    assert uuid7_ms(Odd(str(uuid.uuid4()))) is None
    assert uuid7_ms(Odd(seven)) == AT
    assert _uuid7_ms_of.cache_info().currsize == before
