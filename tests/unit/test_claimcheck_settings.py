"""The claim check's settings: large inputs are accepted when they travel by reference, and only then."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from relaybus.celery import runtime_from
from relaybus.settings import Settings
from relaybus.tasks.errors import PayloadUnreadable, PermanentError, is_transient


def test_a_large_input_limit_needs_no_large_messages_when_values_travel_by_reference() -> None:
    settings = Settings(max_payload_bytes=32 * 1024 * 1024)  # the default message limit is 4 MB
    assert runtime_from(settings).payload_inline_max_bytes == 32 * 1024


def test_without_the_claim_check_a_message_must_hold_the_largest_input() -> None:
    with pytest.raises(ValidationError, match="max_message_bytes"):
        Settings(max_payload_bytes=32 * 1024 * 1024, payload_inline_max_bytes=0)


def test_the_inline_size_is_capped_at_the_input_limit_so_what_stays_inline_fits_a_message() -> None:
    settings = Settings(max_payload_bytes=8 * 1024, max_message_bytes=16 * 1024)
    assert runtime_from(settings).payload_inline_max_bytes == 8 * 1024
    with pytest.raises(ValidationError, match="payload_inline_max_bytes"):
        Settings(max_payload_bytes=64 * 1024, max_message_bytes=16 * 1024)


def test_an_unreadable_payload_is_permanent_and_names_the_ref_the_agent_and_the_task() -> None:
    error = PayloadUnreadable("sha256:" + "a" * 64, "payload-altered", "changed", "writer", "t-1")
    assert isinstance(error, PermanentError) and not is_transient(error)
    assert str(error).startswith("payload-altered: payload sha256:aaaa")
    assert "'writer'" in str(error) and "t-1" in str(error)
    import pickle

    assert str(pickle.loads(pickle.dumps(error))) == str(error)
