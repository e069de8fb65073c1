"""Dead letters are bad messages: reading one must not fail on headers of unexpected types."""

from __future__ import annotations

from types import SimpleNamespace

from relaybus.dlq import _to_model


def test_a_dead_letter_with_headers_of_any_type_is_still_listed() -> None:
    message = SimpleNamespace(
        headers={
            "id": 5,
            "task": ["not", "a", "name"],
            "x_dead_letter_reason": "invalid-task-message",
            "x_error_message": b"bytes \xff",
            "x_attempts": "many",
            "x_redrive": "x",
            "x-death": "not a list",
        },
        body=b"\xff\xfe",
    )
    letter = _to_model("agents.probe.dlq", message)
    assert letter.task_id == "5"
    assert letter.task == '["not", "a", "name"]'
    assert letter.reason == "invalid-task-message"
    assert letter.error_message is not None and letter.error_message.startswith("bytes ")
    assert letter.attempts is None and letter.redrives == 0
    assert letter.body_preview == "<2 bytes of binary>"


def test_a_well_formed_dead_letter_keeps_its_fields() -> None:
    message = SimpleNamespace(
        headers={"id": "abc", "task": "agents.probe", "x_attempts": 3, "x_redrive": 1,
                 "x-death": [{"reason": "rejected", "queue": "agents.probe"}]},
        body='{"a": 1}',
    )
    letter = _to_model("agents.probe.dlq", message)
    assert (letter.task_id, letter.task, letter.attempts, letter.redrives) == ("abc", "agents.probe", 3, 1)
    assert (letter.reason, letter.original_queue) == ("rejected", "agents.probe")
