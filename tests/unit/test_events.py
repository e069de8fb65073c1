from __future__ import annotations

from typing import Any, ClassVar

import pytest

from relaybus.tasks.bus.events import Event, EventEnvelope, EventRegistry, envelope_for, parse_envelope, topic_matches
from relaybus.tasks.errors import InvalidEvent, UnknownEventType, UnsupportedEventVersion


def make_registry() -> tuple[EventRegistry, type[Event]]:
    reg = EventRegistry()

    class Shipped(Event):
        type: ClassVar[str] = ""  # not in the global registry; registered by hand below
        version: ClassVar[int] = 3

        order: str
        carrier: str
        parcels: int

    Shipped.type = "order.shipped"  # type: ignore[misc]
    reg.register(Shipped)

    @reg.upcaster("order.shipped", 1)
    def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "carrier": "unknown"}

    @reg.upcaster("order.shipped", 2)
    def v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
        rest = dict(data)
        parcel_ids = rest.pop("parcel_ids", [])
        return {**rest, "parcels": len(parcel_ids)}

    return reg, Shipped


def envelope(version: int, type_: str = "order.shipped", **data: Any) -> EventEnvelope:
    return EventEnvelope(event_id="e1", type=type_, version=version, correlation_id="c1", data=data)


def test_an_old_version_is_upcast_step_by_step_to_the_current_class():
    reg, shipped = make_registry()
    event = reg.load(envelope(1, order="o-1", parcel_ids=["a", "b"]))
    assert event == shipped(order="o-1", carrier="unknown", parcels=2)


def test_a_current_version_is_read_as_it_is():
    reg, shipped = make_registry()
    current = envelope(3, order="o-1", carrier="ups", parcels=1)
    assert reg.upcast(current) is current
    assert reg.load(current) == shipped(order="o-1", carrier="ups", parcels=1)


def test_an_unknown_type_is_refused_with_its_dead_letter_reason():
    reg, _ = make_registry()
    with pytest.raises(UnknownEventType, match=r"order\.lost") as excinfo:
        reg.load(envelope(1, type_="order.lost"))
    assert excinfo.value.reason == "unknown-event-type"


def test_a_version_newer_than_the_code_is_refused():
    reg, _ = make_registry()
    with pytest.raises(UnsupportedEventVersion, match="v4 is newer than this code") as excinfo:
        reg.load(envelope(4, order="o-1"))
    assert excinfo.value.reason == "unsupported-event-version"


def test_a_version_without_an_upcaster_path_is_refused():
    reg = EventRegistry()

    class Paid(Event):
        version: ClassVar[int] = 2
        amount: int

    Paid.type = "order.paid"  # type: ignore[misc]
    reg.register(Paid)
    with pytest.raises(UnsupportedEventVersion, match="no upcaster from v1 to v2"):
        reg.load(envelope(1, type_="order.paid", amount=3))


def test_data_that_fails_the_model_is_an_invalid_event_naming_the_field():
    reg, _ = make_registry()
    with pytest.raises(InvalidEvent, match="carrier") as excinfo:
        reg.load(envelope(3, order="o-1", parcels=1))
    assert excinfo.value.reason == "invalid-event"


def test_events_are_frozen_and_refuse_unknown_fields():
    _, shipped = make_registry()
    with pytest.raises(ValueError, match="extra"):
        shipped(order="o", carrier="c", parcels=1, surprise=True)
    event = shipped(order="o", carrier="c", parcels=1)
    with pytest.raises(ValueError, match="frozen"):
        event.order = "p"  # type: ignore[misc]


def test_a_second_class_for_one_type_is_refused():
    reg, _ = make_registry()

    class Impostor(Event):
        version: ClassVar[int] = 1

    Impostor.type = "order.shipped"  # type: ignore[misc]
    with pytest.raises(ValueError, match="already defined"):
        reg.register(Impostor)


def test_the_envelope_carries_type_version_ids_and_data():
    _, shipped = make_registry()
    env = envelope_for(shipped(order="o", carrier="c", parcels=1), event_id="e", correlation_id="c", priority=2)
    assert (env.type, env.version, env.priority, env.data["order"]) == ("order.shipped", 3, 2, "o")
    assert parse_envelope(env.model_dump_json()) == env


@pytest.mark.parametrize("body", [b"{not json", b'{"type": "x"}', b'{"event_id": "e", "type": "Bad Type!", '
                                  b'"version": 1, "correlation_id": "c"}'])
def test_anything_but_an_envelope_is_an_invalid_event(body):
    with pytest.raises(InvalidEvent, match="not an event envelope"):
        parse_envelope(body)


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("research.completed", "research.completed", True),
        ("research.*", "research.completed", True),
        ("research.*", "research", False),
        ("research.*", "research.completed.late", False),
        ("research.#", "research", True),
        ("research.#", "research.completed.late", True),
        ("#", "anything.at.all", True),
        ("*.completed", "pipeline.completed", True),
        ("#.completed", "a.b.completed", True),
        ("#.completed", "a.b.failed", False),
        ("draft.*.x", "draft.a.x", True),
    ],
)
def test_patterns_match_like_a_rabbitmq_topic_exchange(pattern, key, matches):
    assert topic_matches(pattern, key) is matches
