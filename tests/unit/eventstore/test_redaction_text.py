"""The one redaction's text rules: free text, reprs and URLs, as every sink besides the event log sees them."""

from __future__ import annotations

from relaybus.eventstore.redaction import DEFAULT_REDACT_KEYS, Redactor, bounded_repr, mask_url_passwords

redactor = Redactor()


def test_the_default_key_list_masks_credentials_cookies_and_authorization() -> None:
    for key in ("credentials", "Set-Cookie", "set_cookie", "AUTHORIZATION", "x-api-key", "client_secret", "password"):
        assert redactor.is_sensitive(key), key
    assert "credentials" in DEFAULT_REDACT_KEYS
    assert redactor.redact({"credentials": {"user": "u", "pw": "p"}}) == {"credentials": "[REDACTED]"}


def test_values_that_look_like_secrets_are_masked_under_any_key() -> None:
    value = {
        "note": "call it with sk-abcdefghijklmnopqrstuvwx please",
        "headers": ["Bearer eyJraWQiOiIx.abc-def_ghi"],
        "dsn": "postgresql+psycopg://relay:pgS3cret@db:5432/events",
        "aws": "AKIAABCDEFGHIJKLMNOP",
    }
    out = redactor.redact(value)
    text = repr(out)
    for secret in ("sk-abcdefghijklmnopqrstuvwx", "eyJraWQiOiIx.abc-def_ghi", "pgS3cret", "AKIAABCDEFGHIJKLMNOP"):
        assert secret not in text
    assert out["dsn"] == "postgresql+psycopg://relay:[REDACTED]@db:5432/events"  # the user and host stay
    assert out["headers"] == ["Bearer [REDACTED]"]


def test_sensitive_keys_in_free_text_and_reprs_are_masked_with_their_whole_value() -> None:
    cases = {
        "login refused: password=hunter2&next=/": "login refused: password=[REDACTED]&next=/",
        "Authorization: Bearer abc.def rest": "Authorization: [REDACTED] rest",
        "{'api_key': 'k1', 'n': 1}": "{'api_key': '[REDACTED]', 'n': 1}",
        '{"token": "a\\"b", "ok": 2}': '{"token": "[REDACTED]", "ok": 2}',
        "{'credentials': {'user': 'u', 'nested': [1, {'x': 'y'}]}, 'after': 3}":
            "{'credentials': [REDACTED], 'after': 3}",
        "{'out': {'secret': {'cut sho": "{'out': {'secret': [REDACTED]",  # a repr cut short (saferepr)
    }
    for text, want in cases.items():
        assert redactor.redact_text(text) == want, text


def test_text_without_secrets_is_returned_as_it_is() -> None:
    text = "max_tokens: 5, input_tokens=3, a URL https://example.com/a:b and a passage"
    assert redactor.redact_text(text) is text
    value = {"max_tokens": 5, "text": text}
    assert redactor.redact(value) is value


def test_configured_patterns_are_masked_besides_the_built_in_ones() -> None:
    custom = Redactor(DEFAULT_REDACT_KEYS, "***", [r"ACME-[0-9]{6}"])
    assert custom.redact_text("ticket ACME-123456 ok") == "ticket *** ok"


def test_url_passwords_are_masked_for_config_reprs() -> None:
    assert mask_url_passwords("amqp://guest:guest@h:5672//") == "amqp://guest:[REDACTED]@h:5672//"
    assert mask_url_passwords("redis://:pw@h/0") == "redis://:[REDACTED]@h/0"
    assert mask_url_passwords("sqlite:///x.sqlite") == "sqlite:///x.sqlite"


def test_a_bounded_repr_says_how_large_the_whole_was() -> None:
    assert bounded_repr({"a": 1}, 100) == "{'a': 1}"
    cut = bounded_repr({"a": "x" * 200_000}, 1024)
    assert cut.startswith("{'a': 'xxx") and cut.endswith("…(200009 bytes)") and len(cut) < 1100
