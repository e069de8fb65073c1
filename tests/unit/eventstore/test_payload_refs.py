"""offload / resolve (eventstore.payloads): pure, with a dict as the storage."""

from __future__ import annotations

from typing import Any

import pytest

from relaybus.eventstore.hashing import canonical_json, sha256_hex
from relaybus.eventstore.payloads import PayloadRef, is_ref, json_size, offload, refs_in, refs_in_text, resolve


class Shelf:
    def __init__(self) -> None:
        self.rows: dict[str, str] = {}

    def put(self, value: Any) -> PayloadRef:
        text = canonical_json(value)
        self.rows[sha256_hex(text)] = text
        return PayloadRef.model_validate({"$ref": "sha256:" + sha256_hex(text), "bytes": len(text.encode())})

    def get(self, ref: PayloadRef) -> Any:
        import json

        return json.loads(self.rows[ref.digest])


def test_a_small_value_is_left_as_it_is() -> None:
    shelf = Shelf()
    value = {"a": "x" * 100}
    assert offload(value, 1024, shelf.put) is value and not shelf.rows


def test_a_large_field_becomes_a_reference_and_its_neighbours_stay() -> None:
    shelf = Shelf()
    value = {"document": "d" * 50_000, "title": "t"}
    out = offload(value, 1024, shelf.put)
    assert out["title"] == "t" and is_ref(out["document"]) and out["document"]["bytes"] == 50_002
    assert json_size(out) < 1024
    assert resolve(out, shelf.get) == value


def test_a_list_of_small_items_too_large_as_a_whole_is_stored_as_a_whole() -> None:
    shelf = Shelf()
    value = {"items": [f"item {i}" for i in range(1000)]}
    out = offload(value, 1024, shelf.put)
    assert is_ref(out["items"]) and len(shelf.rows) == 1
    assert resolve(out, shelf.get) == value


def test_nested_references_resolve_all_the_way_down() -> None:
    shelf = Shelf()
    value = [{"big": "b" * 5000, "more": ["m" * 600] * 3}, "tail"]
    out = offload(value, 1000, shelf.put)
    assert json_size(out) <= 1000
    assert len(refs_in(out)) >= 1
    assert resolve(out, shelf.get) == value


def test_only_a_well_formed_reference_is_one() -> None:
    assert is_ref({"$ref": "sha256:" + "0" * 64, "bytes": 3})
    assert not is_ref({"$ref": "#/definitions/x", "bytes": 3})  # JSON Schema's $ref is data
    assert not is_ref({"$ref": "sha256:" + "0" * 64, "bytes": 3, "x": 1})
    assert not is_ref({"$ref": "sha256:" + "G" * 64, "bytes": 3})
    with pytest.raises(ValueError):
        PayloadRef.model_validate({"$ref": "sha256:abc", "bytes": 1})


def test_references_are_found_in_stored_event_text() -> None:
    ref = {"$ref": "sha256:" + "a" * 64, "bytes": 12}
    assert list(refs_in_text(canonical_json({"output": {"text": ref}}))) == [ref["$ref"]]
    assert list(refs_in_text('{"plain":1}')) == []
