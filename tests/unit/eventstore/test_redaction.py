from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from relaybus.eventstore.hashing import canonical_json
from relaybus.eventstore.models import DEFAULT_REDACT_KEYS
from relaybus.eventstore.redaction import Redactor, bound_size, words

SECRET = "hunter2-SECRET"
redactor = Redactor(DEFAULT_REDACT_KEYS, "***")


def test_keys_are_split_into_words_whatever_their_case_style() -> None:
    assert words("X-Api-Key") == ("x", "api", "key")
    assert words("openaiApiKey") == ("openai", "api", "key")
    assert words("ACCESS_TOKEN") == ("access", "token")


def test_sensitive_keys_match_by_whole_words_ignoring_case() -> None:
    for key in (
        "api_key",
        "API_KEY",
        "apiKey",
        "x-api-key",
        "db_password",
        "Authorization",
        "github_token",
        "client_secret",
        "Set-Cookie",
    ):
        assert redactor.is_sensitive(key), key
    for key in ("max_tokens", "input_tokens", "tokenizer", "passage", "secretary", "keyword"):
        assert not redactor.is_sensitive(key), key


def test_values_are_masked_recursively_through_dicts_and_lists() -> None:
    value = {"a": [{"token": SECRET}, {"ok": 1, "nested": {"Password": {"deep": SECRET}}}], "apiKey": [SECRET]}
    assert redactor.redact(value) == {
        "a": [{"token": "***"}, {"ok": 1, "nested": {"Password": "***"}}],
        "apiKey": "***",
    }
    assert value["apiKey"] == [SECRET]  # the input is not modified


def test_no_configured_keys_means_no_redaction() -> None:
    value = {"password": SECRET}
    assert Redactor([]).redact(value) is value


keys = st.sampled_from(["password", "api_key", "note", "items", "Token", "name"])
trees = st.recursive(
    st.just(SECRET) | st.integers() | st.text(alphabet="abc", max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=3),
    max_leaves=15,
)


@settings(deadline=None)  # a loaded CI machine must not turn slowness into failure
@given(st.dictionaries(keys, trees, max_size=4))
def test_no_secret_survives_under_a_sensitive_key(payload: dict[str, object]) -> None:
    redacted = redactor.redact(payload)

    def leaks(value: object, under_sensitive: bool) -> bool:
        if isinstance(value, dict):
            return any(leaks(v, redactor.is_sensitive(k)) for k, v in value.items())
        if isinstance(value, list):
            return any(leaks(v, under_sensitive) for v in value)
        return under_sensitive and value == SECRET

    assert not leaks(redacted, False)


def test_small_payloads_are_kept_and_large_ones_truncated_with_size_and_hash() -> None:
    small = {"a": "x" * 10}
    assert bound_size(small, 100, 20) is small
    large = {"a": "ü" * 100}
    text = canonical_json(large)
    record = bound_size(large, 150, 20)
    assert record == {
        "_truncated": True,
        "size": len(text.encode()),
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "preview": text[:20],
    }
    assert bound_size(large, len(text.encode()), 20) is large  # exactly at the limit: kept


tricky_keys = st.sampled_from(
    ["api_key", "apiKey", "API-KEY", "api\nkey", 'api"key', "api\\key", "x_api_key_id", "Token", "max_tokens",
     "secretary", "pass", "word", "İ", "kéy", "auth", "note"]
)  # fmt: skip
tricky = st.recursive(
    st.none() | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(tricky_keys, children, max_size=3),
    max_leaves=12,
)


@settings(deadline=None)  # a loaded CI machine must not turn slowness into failure
@given(st.dictionaries(tricky_keys, tricky, max_size=4))
def test_the_quick_check_never_skips_a_value_that_has_something_to_mask(payload: dict[str, object]) -> None:
    redacted, text = redactor.redact_to_json(payload)
    assert redacted == redactor.redact(payload) == walked(payload)
    assert text == canonical_json(redacted)
    if not redactor.may_redact(canonical_json(payload)):
        assert redactor.redact(payload) is payload


texts = st.sampled_from(
    ["token=abc123", "Authorization: Bearer abc.def", "sk-" + "a" * 20, "https://u:pw@host/x", "api key: x", "note",
     "", "x\ny", "password", "ghp_" + "b" * 36, "ok: fine", "apiKey='v'", "İ token=x"]
)  # fmt: skip
shaped = st.recursive(
    st.none() | st.integers() | texts | st.text(max_size=6),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(tricky_keys, children, max_size=3),
    max_leaves=12,
)


@settings(deadline=None)  # a loaded CI machine must not turn slowness into failure
@given(st.dictionaries(tricky_keys, shaped, max_size=4))
def test_redact_to_json_masks_what_redact_masks_in_strings_too(payload: dict[str, object]) -> None:
    """The keys are masked before the JSON is made and the strings looked at only if they may hold something:
    the result is still redact's, and the JSON its canonical JSON."""
    redacted, text = redactor.redact_to_json(payload)
    assert redacted == redactor.redact(payload) == walked(payload)
    assert text == canonical_json(redacted)


@settings(deadline=None)
@given(st.lists(shaped, max_size=4) | st.dictionaries(tricky_keys, shaped, max_size=4))
def test_redact_masks_what_walking_every_string_masks(value: object) -> None:
    """``redact`` of a container looks at its strings only if, all together, one may hold something to mask:
    what it gives is what walking every string gives, and the value itself when nothing was masked."""
    expected = walked(value)
    assert redactor.redact(value) == expected
    assert (redactor.redact(value) is value) == (expected is value)


def walked(value: object) -> object:
    """The reference: every key and every string of ``value`` looked at, one by one."""
    return redactor._walk(value, True)
