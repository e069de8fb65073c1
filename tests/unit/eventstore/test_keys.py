"""Chain keys and links: what a key file may hold, and that appends and verify compute the same link."""

from __future__ import annotations

import hmac

import pytest

from relaybus.eventstore import ChainKeyError, ChainKeys
from relaybus.eventstore._append import linker as _linker
from relaybus.eventstore.hashing import hmac_sha256_hex, link_hash, link_message
from relaybus.eventstore.keys import UNKEYED

SECRET = "s" * 32


def test_the_last_key_of_a_file_signs_and_every_key_verifies() -> None:
    keys = ChainKeys.parse(f"# comment\n\nold={SECRET}1\n new = {SECRET}2 \n")

    assert keys.ids == ("old", "new") and keys.signing_id == "new"
    assert keys.secret("old") == f"{SECRET}1".encode() and keys.secret("gone") is None


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "holds no key"),
        (f"k1 {SECRET}", "line 1 of the chain key file: expected <key id>=<secret>"),
        ("k1=short-secret", "line 1 of the chain key file: key 'k1' is too short"),
        (f"k1={SECRET}\nk1={SECRET}", "line 2 of the chain key file: key id 'k1' given twice"),
        (f"{UNKEYED}={SECRET}", "reserved"),
        (f"a b={SECRET}", "bad key id 'a b'"),
    ],
)
def test_a_malformed_key_file_is_refused_without_showing_a_secret(text: str, says: str) -> None:
    with pytest.raises(ChainKeyError, match=says) as raised:
        ChainKeys.parse(text)
    assert SECRET not in str(raised.value) and "short-secret" not in str(raised.value)


def test_keys_never_show_their_secrets() -> None:
    keys = ChainKeys({"k1": SECRET.encode()})
    assert SECRET not in repr(keys) and "k1" in repr(keys)


@pytest.mark.parametrize("keys", [None, ChainKeys({"k1": SECRET.encode()})])
def test_an_append_links_exactly_as_verify_recomputes(keys: ChainKeys | None) -> None:
    key_id, link = _linker(keys)
    secret = keys.signing_secret if keys is not None else None

    assert link(7, '{"a":1}') == link_hash(secret, key_id, 7, '{"a":1}')
    assert link(7, '{"a":1}') != link(8, '{"a":1}')  # the position is covered
    assert link_message(key_id, 7, "{}") == f"relaybus.link.v2 {key_id} 7 {{}}".encode()


@pytest.mark.parametrize("secret", [b"k" * 32, b"k" * 64, b"k" * 65, bytes(range(200))])
def test_the_precomputed_hmac_is_hmac_sha256(secret: bytes) -> None:
    for message in (b"", b"x", "é".encode() * 1000):
        assert hmac_sha256_hex(secret, message) == hmac.digest(secret, message, "sha256").hex()
