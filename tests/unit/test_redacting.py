"""The sinks Celery writes to, redacted (tasks.runtime.redacting): headers, task events, log records, stored results."""

from __future__ import annotations

import logging
import sys
from typing import Any

import pytest
from celery.events.dispatcher import EventDispatcher

from relaybus.celery import create_app
from relaybus.settings import Settings
from relaybus.tasks.runtime.config import runtime_config
from relaybus.tasks.runtime.redacting import (
    REPR_MAX_CHARS,
    RedactingEventDispatcher,
    RedactingLogFilter,
    redact_stored,
    redact_task_headers,
)

SECRET = "sk-abcdefghijklmnopqrstuvwx"
app = create_app(Settings(redact_patterns=(r"ACME-[0-9]{6}",)))


def test_task_headers_are_rebuilt_from_the_body_redacted_and_bounded() -> None:
    headers: dict[str, Any] = {"argsrepr": repr([SECRET]), "kwargsrepr": "whatever the caller set"}
    body = ([SECRET], {"api_key": "k", "note": "ticket ACME-123456", "big": "x" * 200_000}, {})
    redact_task_headers(app, body, headers)
    assert headers["argsrepr"] == "['[REDACTED]']"
    assert "'api_key': '[REDACTED]'" in headers["kwargsrepr"] and "ACME-123456" not in headers["kwargsrepr"]
    assert len(headers["kwargsrepr"]) <= REPR_MAX_CHARS + 20 and headers["kwargsrepr"].endswith(" bytes)")


def test_task_events_are_redacted_whether_sent_by_a_worker_or_published_by_a_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[tuple[str, dict[str, Any]]] = []

    class Capturing(RedactingEventDispatcher):  # type: ignore[misc]
        def __init__(self) -> None:
            self.app = app

    def fake_send(self: Any, type: str, *args: Any, **fields: Any) -> None:
        sent.append((type, fields))

    def fake_publish(self: Any, type: str, fields: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        sent.append((type, fields))

    monkeypatch.setattr(EventDispatcher, "send", fake_send)  # what would go to the broker
    monkeypatch.setattr(EventDispatcher, "publish", fake_publish)
    dispatcher = Capturing()
    dispatcher.send("task-succeeded", uuid="1", result=repr({"token": "t0k", "text": SECRET}), runtime=0.1)
    dispatcher.send("task-failed", uuid="2", exception=f"PermanentError('password=hunter2 {SECRET}')",
                    traceback=f"Traceback ...\nPermanentError: password=hunter2 {SECRET}")
    dispatcher.publish("task-sent", {"uuid": "3", "args": repr([SECRET]), "kwargs": "{'x': 'y' }"}, None)
    dispatcher.send("worker-heartbeat", freq=2.0)
    text = repr(sent)
    assert "t0k" not in text and SECRET not in text and "hunter2" not in text
    assert sent[0][1]["runtime"] == 0.1 and sent[3] == ("worker-heartbeat", {"freq": 2.0})


def test_a_log_record_is_written_with_its_message_and_traceback_masked() -> None:
    record_filter = RedactingLogFilter(runtime_config(app).redactor)
    try:
        raise RuntimeError(f"connect to postgresql://u:pgS3cret@db/x failed with {SECRET}")
    except RuntimeError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "Task %s raised: %r", ("x", {"token": "t0k"}),
                                   sys.exc_info())
    record.data = {"return_value": repr({"token": "t0k"}), "args": repr([SECRET])}  # Celery's extra={"data": ...}
    assert record_filter.filter(record)
    assert "t0k" not in repr(record.data) and SECRET not in repr(record.data)
    line = logging.Formatter().format(record)
    assert "t0k" not in line and "pgS3cret" not in line and SECRET not in line
    assert "Traceback" in line and "postgresql://u:[REDACTED]@db/x" in line


def test_stored_results_exceptions_and_tracebacks_are_redacted() -> None:
    result, tb = redact_stored(app, {"account": {"credentials": {"a": 1}}, "summary": SECRET}, None)
    assert result == {"account": {"credentials": "[REDACTED]"}, "summary": "[REDACTED]"}
    failure = {"exc_type": "PermanentError", "exc_message": ("password=hunter2",), "exc_module": "x"}
    result, tb = redact_stored(app, failure, "Traceback\nPermanentError: password=hunter2")
    assert result["exc_message"] == ["password=[REDACTED]"] and "hunter2" not in tb
