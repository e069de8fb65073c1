"""A saga step's ``task.sent``, left by its publisher to the worker that receives it: the headers the publisher
sets (and never lets a republished message inherit), and the copy the receiver builds from them."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from relaybus.celery import create_app
from relaybus.settings import Settings
from relaybus.tasks.runtime.context import PUBLISHED_AT_HEADER, PUBLISHED_BY_HEADER, SENT_AT_HEADER
from relaybus.tasks.runtime.recording import receiver_records_sent, recorder_for, records, wiring

AT = 1_796_000_000_123
PUBLISHED = AT * 1000 + 250_017  # Unix microseconds
TASK = SimpleNamespace(name="agents.writer.saga_draft", spec=SimpleNamespace(name="writer", start_records=None))


def _headers(**extra: Any) -> dict[str, Any]:
    return {"task": TASK.name, "id": "task-1", "retries": 0, "x_correlation_id": "wf-1", SENT_AT_HEADER: AT, **extra}


def _request(headers: dict[str, Any]) -> Any:
    return SimpleNamespace(
        id="task-1", retries=0, delivery_info={"routing_key": "agents.writer", "priority": 2}, hostname="w@worker",
        headers=headers, x_correlation_id=None, x_causation_id=None, group=None, eta=None,
        callbacks=None, errbacks=None, chain=None, chord=None,
    )  # fmt: skip


def test_the_receivers_copy_has_the_publishers_time_and_host_and_the_publishers_id() -> None:
    left = _headers(**{PUBLISHED_AT_HEADER: PUBLISHED, PUBLISHED_BY_HEADER: "publisher-host"})
    copy = records.started(TASK, _request(left), [], {"step": "draft"}, "worker-host")[0]
    assert copy.type == "task.sent"
    assert copy.occurred_at == datetime.fromtimestamp(AT // 1000, UTC).replace(microsecond=373_017)
    assert copy.worker_host == "publisher-host"
    assert copy.payload["input"] == {"args": [], "kwargs": {"step": "draft"}}
    # The id the publisher would have written it under: whichever copy comes first is kept.
    assert copy.event_id == records.sent(_headers(), [[], {}, {}], "agents.writer", 2, "publisher-host").event_id
    # The main process's copy (a revoke, a time limit) and the consumer's (a dead letter) are the same record.
    again = records.sent_left_to_receiver(TASK, _request(left), [], {"step": "draft"}, "main-process")
    assert again == copy
    raw = records.sent_from_message(left, [[], {"step": "draft"}, {}], "agents.writer", 2, "consumer")
    assert raw is not None and (raw.event_id, raw.occurred_at, raw.worker_host) == (
        copy.event_id, copy.occurred_at, "publisher-host")


def test_a_message_whose_publisher_wrote_its_record_gets_no_second_copy_at_its_end() -> None:
    assert records.sent_left_to_receiver(TASK, _request(_headers()), [], {}, "main-process") is None
    assert records.sent_from_message(_headers(), [[], {}, {}], "agents.writer", 2, "consumer") is None
    # Without a usable task id the consumer's refusal goes to a stream of its own, with no copy.
    no_id = _headers(**{PUBLISHED_AT_HEADER: PUBLISHED, "id": None})
    assert records.sent_from_message(no_id, [[], {}, {}], "agents.writer", 2, "consumer") is None


@pytest.mark.parametrize("value", [None, True, "1796000000123000", -5, 0, 2**62, 2**61, 1.5e15])
def test_a_published_time_that_is_not_plausible_unix_milliseconds_is_ignored(value: Any) -> None:
    assert records.published_at({PUBLISHED_AT_HEADER: value}) is None
    copy = records.started(TASK, _request(_headers(**{PUBLISHED_AT_HEADER: value})), [], {}, "worker-host")[0]
    assert copy.worker_host == "worker-host"  # an ordinary copy: the worker's clock and host


def _publish(app: Any, headers: dict[str, Any]) -> Any:
    wiring.on_before_task_publish(app, body=[[], {}, {}], headers=headers, properties={}, routing_key="agents.writer")
    return wiring._PENDING_SENT.get()


def test_the_publisher_sets_the_headers_only_inside_the_block_and_never_lets_a_republished_message_keep_them(
    tmp_path: Path,
) -> None:
    app = create_app(Settings(eventstore_url=f"sqlite:///{tmp_path / 'events.sqlite'}", record_events=True))
    try:
        assert recorder_for(app).enabled
        with receiver_records_sent():
            left = _headers()
            assert _publish(app, left) is None, "nothing for after_task_publish to write"
        assert isinstance(left[PUBLISHED_AT_HEADER], int) and left[PUBLISHED_BY_HEADER]
        # A retry or a deferral republishes its task's headers: outside the block, the publisher records it.
        republished = dict(left)
        pending = _publish(app, republished)
        assert pending is not None and pending[2].type == "task.sent"
        assert PUBLISHED_AT_HEADER not in republished and PUBLISHED_BY_HEADER not in republished
        # Celery's own tasks are not recorded by anyone: the block does not mark them.
        with receiver_records_sent():
            celerys = {**_headers(), "task": "celery.chord_unlock"}
            assert _publish(app, celerys) is None
        assert PUBLISHED_AT_HEADER not in celerys
    finally:
        app.close()
