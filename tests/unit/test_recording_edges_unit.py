"""The pure parts of issue 13's recording edges: storable values, id checks, header checks, delay checks."""

from __future__ import annotations

import math

import pytest
from celery import Celery

from relaybus.eventstore.storable import restore, storable
from relaybus.tasks.errors import InvalidInput
from relaybus.tasks.runtime.config import RuntimeConfig
from relaybus.tasks.runtime.consumer import header_problem
from relaybus.tasks.runtime.context import CORRELATION_HEADER, id_problem, workflow_context
from relaybus.tasks.runtime.recording import records
from relaybus.tasks.runtime.task import AgentModel, AgentSpec, AgentTask, _unencodable

SURROGATE = b"caf\xe9".decode("utf-8", "surrogateescape")


@pytest.mark.parametrize(
    "value",
    [
        {"x": float("nan"), "y": [float("inf"), float("-inf")], "ok": 1.5},
        {"text": SURROGATE, "nested": [{"deep": "a\udc80b"}], "plain": "fine"},
        {SURROGATE: "a key UTF-8 cannot encode", "nul": "a\x00b"},
    ],
)
def test_storable_values_encode_as_utf8_json_and_restore_losslessly(value):
    import json

    escaped = storable(value)
    json.dumps(escaped, allow_nan=False).encode("utf-8")  # what the store writes
    back = restore(escaped)
    assert back.keys() == value.keys()
    for key, original in value.items():
        if isinstance(original, list) and original and isinstance(original[0], float):
            assert all(math.isinf(a) and a == b for a, b in zip(back[key], original, strict=True))
        elif isinstance(original, float) and math.isnan(original):
            assert math.isnan(back[key])
        else:
            assert back[key] == original


def test_a_value_with_nothing_to_escape_is_returned_as_it_is():
    value = {"a": [1, 2.5, "text", {"b": None}]}
    assert storable(value) is value


@pytest.mark.parametrize(
    ("value", "problem"),
    [("x" * 256, "over the limit of 255"), ("a\x00b", "control character"), ("a\nb", "control character"),
     ("lone\udcff", "lone surrogate"), ("", "must not be empty"), (7, "must be a string")],
)
def test_ids_the_event_log_cannot_store_are_named(value, problem):
    assert problem in (id_problem(value) or "")


def test_an_ordinary_id_passes():
    assert id_problem("3f0c-ok_id.with:punctuation/é") is None
    assert id_problem("x" * 255) is None


def test_workflow_context_refuses_an_id_the_log_cannot_store():
    with pytest.raises(InvalidInput, match="correlation_id"), workflow_context("x" * 300):
        pass


@pytest.mark.parametrize(
    ("headers", "problem"),
    [({CORRELATION_HEADER: "c" * 300}, "over the limit"), ({CORRELATION_HEADER: "a\x00b"}, "control character"),
     ({"retries": 2**40}, "'retries' must be an integer from 0 to"), ({"id": "i" * 300}, "header 'id'")],
)
def test_the_consumer_refuses_headers_the_log_could_not_record(headers, problem):
    assert problem in (header_problem({"task": "agents.probe", "id": "t-1", **headers}) or "")


def test_a_consumer_dead_letter_without_usable_ids_is_recorded_in_its_queue_stream():
    event = records.refused({"id": "x" * 300, CORRELATION_HEADER: "a\x00b", "task": "agents.probe"}, "ns.probe",
                            "invalid-task-message", ValueError("bad"), "host", body_digest="d" * 32)
    assert event.stream_id == "dead-letters.ns.probe" and event.task_id is None
    assert event.payload["reason"] == "invalid-task-message"


def test_an_output_with_a_lone_surrogate_is_found_by_path():
    assert _unencodable({"a": ["fine", {"b": SURROGATE}]}) == "a[1].b"
    assert _unencodable({"a": ["fine", "é"]}) is None


class _In(AgentModel):
    key: str


def _echo(inp: _In, ctx: object) -> _In:
    return inp


def _unused() -> None:
    """The body is AgentTask.__call__."""


def test_a_countdown_past_the_consumer_timeout_is_refused_at_the_caller():
    app = Celery("delay-test", broker="memory://", set_as_current=False)
    app.conf.relaybus_runtime = RuntimeConfig(consumer_timeout_s=100.0, time_limit_s=30.0, retry_backoff_max_s=10.0,
                                              record_events=False)
    task = app.task(name="agents.delayed", base=AgentTask, spec=AgentSpec("delayed", _In, _In, _echo), bind=False,
                    shared=False)(_unused)
    with pytest.raises(InvalidInput, match="countdown 80 s is too far"):
        task.apply_async(kwargs={"key": "k"}, countdown=80)


def test_relaybus_run_says_the_broker_is_unreachable_and_exits_3(monkeypatch, tmp_path):
    import subprocess
    import sys

    from tests.chaos.services import free_port

    env = {"RELAYBUS_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}//", "RELAYBUS_PUBLISH_TIMEOUT_S": "2",
           "RELAYBUS_EVENTSTORE_URL": f"sqlite:///{tmp_path / 'e.sqlite'}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "relaybus.cli", "run", "research", "--input",
                           '{"request": "How do sagas work?"}'], capture_output=True, text=True, env=env,
                          timeout=60, cwd=tmp_path)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "the pipeline was not started: cannot reach the broker" in done.stderr


def test_a_failure_recorded_before_a_redelivery_is_described_as_the_recorded_error():
    """A redelivered task whose failure was recorded fails with FailedBefore; every record, letter and saga
    outcome made from it names the error that was recorded, not FailedBefore, and it crosses processes whole."""
    import pickle

    from relaybus.tasks.errors import FailedBefore, PermanentError, error_message_of, error_type_of
    from relaybus.tasks.runtime.deadletter import ERROR_MESSAGE_HEADER, ERROR_TYPE_HEADER, reason_headers

    before = FailedBefore("ProviderRejected", "400 bad request", "permanent-error", lettered=True)
    assert isinstance(before, PermanentError)
    assert (error_type_of(before), error_message_of(before)) == ("ProviderRejected", "400 bad request")
    plain = ValueError("no")
    assert (error_type_of(plain), error_message_of(plain)) == ("ValueError", "no")
    back = pickle.loads(pickle.dumps(before))  # from the pool child to the worker's main process
    assert (back.error_type, back.error_message, back.reason, back.lettered) == (
        "ProviderRejected", "400 bad request", "permanent-error", True)
    headers = reason_headers(reason=before.reason, error=before, attempts=1, original_queue="agents.x")
    assert headers[ERROR_TYPE_HEADER] == "ProviderRejected", headers
    assert headers[ERROR_MESSAGE_HEADER] == "400 bad request"
    payload = records._error_payload(before)
    assert payload == {"error_type": "ProviderRejected", "error_message": "400 bad request"}
