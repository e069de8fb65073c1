"""New event ids are time-ordered (UUIDv7), so the ``event_id`` index grows at its right edge; given ids are kept."""

from __future__ import annotations

import time
import uuid

from relaybus.eventstore import NewEvent
from relaybus.eventstore.models import new_event_id


def test_a_new_id_is_a_uuid7_holding_the_current_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    parsed = uuid.UUID(new_event_id())
    after = time.time_ns() // 1_000_000
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert before <= parsed.int >> 80 <= after


def test_ids_of_a_later_millisecond_sort_after_every_earlier_id() -> None:
    earlier = [new_event_id() for _ in range(500)]
    deadline = time.monotonic() + 1
    later = new_event_id()
    while later[:13] == earlier[-1][:13] and time.monotonic() < deadline:  # until the millisecond turns
        later = new_event_id()
    assert all(e < later for e in earlier)


def test_ids_are_unique_and_an_event_keeps_an_id_it_is_given() -> None:
    assert len({new_event_id() for _ in range(10_000)}) == 10_000
    assert uuid.UUID(NewEvent(stream_id="s", type="t").event_id).version == 7
    assert NewEvent(stream_id="s", type="t", event_id="given-1").event_id == "given-1"
