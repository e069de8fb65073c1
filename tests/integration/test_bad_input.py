"""Bad input (issue 7): generated malformed payloads and raw broker messages, against the real RabbitMQ
and Redis with a real worker process (never eager mode, no mocks).

Each bad input is refused in the caller with an error naming the field, or dead-lettered with its
reason; the worker never crashes and nothing is ever unpickled.
"""

from __future__ import annotations

import json
import pickle
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from celery import Celery
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from relaybus.settings import Settings
from relaybus.tasks.bus.bus import event_queue_name, send_envelope
from relaybus.tasks.bus.events import EventEnvelope
from relaybus.tasks.errors import InvalidInput
from tests.agents import ProbeInput
from tests.harness import celery_headers, make_settings, queue_depth, raw_publish, read_queue, redis_list, wait_for
from tests.integration.system import System, running_system, system_settings
from tests.services import require_rabbitmq, require_redis

pytestmark = pytest.mark.integration

MAX_PAYLOAD = 8 * 1024
MAX_MESSAGE = 32 * 1024
PICKLE = "application/x-python-serialize"
EXAMPLES = hsettings(max_examples=25, deadline=None, database=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
#: Raw messages and events are generated kind by kind, so that every kind is tried on every run.
PER_KIND = hsettings(EXAMPLES, max_examples=4)
RAW_KINDS = ("garbage", "wrong-shape", "wrong-arg-types", "pickle", "unknown-task", "oversize", "bad-header",
             "no-task-header")
EVENT_KINDS = ("unknown-type", "garbage", "wrong-shape", "wrong-data", "content-type", "oversize")


# -- shared pieces ----------------------------------------------------------------------------------


class Sentinel:
    """Unpickling this creates ``path``: the file existing would prove a worker unpickled a body."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=8))
NOT_A_STRING = st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                         st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(),
                                                                               max_size=2))
NOT_A_NUMBER = st.one_of(st.text(alphabet="abcdefghjkmopqrsuvwxz_-", min_size=1, max_size=8),
                         st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(),
                                                                               max_size=2))
PROBE_FIELDS = set(ProbeInput.model_fields)

#: field -> values that can never validate for it (pydantic's lax mode would coerce "1" or True).
WRONG_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "key": st.one_of(NOT_A_STRING, st.none()),
    "label": st.one_of(NOT_A_STRING, st.none()),
    "api_key": NOT_A_STRING,
    "sleep_s": st.one_of(NOT_A_NUMBER, st.none(), st.floats(max_value=-0.001, allow_nan=False, allow_infinity=False),
                         st.floats(min_value=60.001, allow_nan=False, allow_infinity=False)),
    "fail_first": st.one_of(NOT_A_NUMBER, st.none(), st.integers(max_value=-1),
                            st.integers(-1000, 1000).map(lambda i: i + 0.5)),
    "value": st.one_of(NOT_A_NUMBER, st.none(), st.integers(-1000, 1000).map(lambda i: i + 0.5)),
}


@st.composite
def wrong_kwargs(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """Probe kwargs that are wrong in exactly one field; returns them and the field's name."""
    kwargs: dict[str, Any] = {"key": "k", "label": draw(st.text(max_size=10))}
    how = draw(st.sampled_from(["wrong-type", "unknown-field", "missing-key", "oversize"]))
    if how == "wrong-type":
        name = draw(st.sampled_from(sorted(WRONG_VALUES)))
        kwargs[name] = draw(WRONG_VALUES[name])
    elif how == "unknown-field":
        name = draw(st.text(min_size=1, max_size=12).filter(lambda n: n not in PROBE_FIELDS))
        kwargs[name] = draw(SCALARS)
    elif how == "missing-key":
        name = "key"
        del kwargs["key"]
    else:
        name = "payload"
        kwargs["label"] = "x" * draw(st.integers(MAX_PAYLOAD, MAX_PAYLOAD + 4096))
    return kwargs, name


# -- 1. the caller refuses bad input, naming the field; nothing reaches the broker --------------------


@pytest.fixture
def settings(tmp_path: Path, broker_url: str, redis_url: str) -> Settings:
    return make_settings(tmp_path, broker_url, redis_url, max_payload_bytes=MAX_PAYLOAD, max_message_bytes=MAX_MESSAGE)


def test_wrong_typed_kwargs_are_refused_in_the_caller_naming_the_field_and_nothing_is_published(app: Celery) -> None:
    queue = f"{app.conf.relaybus_runtime.namespace}.probe"
    probe = app.tasks["agents.probe"]
    assert queue_depth(app, queue) == 0

    @EXAMPLES
    @given(wrong_kwargs())
    def refused(case: tuple[dict[str, Any], str]) -> None:
        kwargs, name = case
        with pytest.raises(InvalidInput) as excinfo:
            probe.apply_async(kwargs=kwargs)
        assert name in [str(e["loc"][0]) for e in excinfo.value.errors], excinfo.value.errors
        assert repr(name)[1:-1] in str(excinfo.value) or name in str(excinfo.value)
        assert excinfo.value.agent == "probe"

    refused()
    assert queue_depth(app, queue) == 0, "a refused call must not reach the broker"


@pytest.mark.parametrize("kwargs", [[1, 2], "abc", 5])
def test_kwargs_that_are_not_a_mapping_are_refused_with_invalid_input(app: Celery, kwargs: Any) -> None:
    queue = f"{app.conf.relaybus_runtime.namespace}.probe"
    try:
        with pytest.raises(InvalidInput, match="kwargs"):
            app.tasks["agents.probe"].apply_async(kwargs=kwargs)
    finally:
        assert queue_depth(app, queue) == 0


# -- 2. raw broker messages straight to the agent queue ----------------------------------------------


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    broker, redis = require_rabbitmq(), require_redis()
    tmp: Path = tmp_path_factory.mktemp("bad-input")
    settings = system_settings(tmp, broker, redis, max_payload_bytes=MAX_PAYLOAD, max_message_bytes=MAX_MESSAGE)
    with running_system(settings, tmp, [(("probe", "auditor"), 1)]) as running:
        yield running


@dataclass
class Raw:
    kind: str
    body: bytes | str
    content_type: str
    headers: dict[str, Any]
    reasons: set[str]  # the reasons a dead letter may give (one, except where noted)
    encoding: str = "utf-8"
    correlation_id: str | None = None
    sentinel: Path | None = None


@dataclass
class Letters:
    """Dead letters read off a queue, by the test marker each raw message carries."""

    app: Celery
    queue: str
    seen: dict[str, Any] = field(default_factory=dict)

    def wait(self, marker: str, timeout: float = 30.0) -> Any:
        def arrived() -> Any:
            for message in read_queue(self.app, self.queue):
                self.seen[str((message.headers or {}).get("x_test_marker"))] = message
            return self.seen.get(marker)

        return wait_for(arrived, timeout, 0.05, f"the dead letter of {marker} in {self.queue}")


def valid_body(**kwargs: Any) -> str:
    return json.dumps([[], {"key": "k", **kwargs}, {"callbacks": None, "errbacks": None, "chain": None,
                                                   "chord": None}])


@st.composite
def raw_messages(draw: st.DrawFn, kind: str, sentinel_dir: Path, known_tasks: frozenset[str]) -> Raw:
    headers = celery_headers("agents.probe")
    if kind == "garbage":  # never valid UTF-8, so never JSON
        body = b"\xff" + draw(st.binary(max_size=200))
        if draw(st.booleans()):
            headers = {}
        return Raw(kind, body, "application/json", headers, {"undecodable-message"}, encoding="binary")
    if kind == "wrong-shape":
        not_a_list = st.one_of(SCALARS, st.dictionaries(st.text(max_size=4), SCALARS, max_size=2))
        shape = draw(st.sampled_from(["scalar", "length", "args", "kwargs", "embed"]))
        value: Any
        if shape == "scalar":
            value = draw(st.one_of(SCALARS, st.dictionaries(st.text(max_size=4), SCALARS, max_size=2)))
        elif shape == "length":
            value = draw(st.lists(SCALARS, max_size=6).filter(lambda v: len(v) != 3))
        elif shape == "args":
            value = [draw(not_a_list), {"key": "k"}, {}]
        elif shape == "kwargs":
            value = [[], draw(st.one_of(SCALARS, st.lists(SCALARS, max_size=3))), {}]
        else:
            value = [[], {"key": "k"}, draw(st.one_of(SCALARS.filter(lambda v: v is not None),
                                                      st.lists(SCALARS, max_size=3)))]
        return Raw(kind, json.dumps(value), "application/json", headers, {"invalid-task-message"})
    if kind == "wrong-arg-types":
        kwargs, _ = draw(wrong_kwargs().filter(lambda case: case[1] != "payload"))
        correlation_id = f"corr-{uuid.uuid4().hex}"
        headers["x_correlation_id"] = correlation_id
        return Raw(kind, json.dumps([[], kwargs, {}]), "application/json", headers, {"permanent-error"},
                   correlation_id=correlation_id)
    if kind == "pickle":
        sentinel = sentinel_dir / f"unpickled-{uuid.uuid4().hex}"
        body_bytes = pickle.dumps(([], {"key": Sentinel(sentinel)}, {}), protocol=draw(st.integers(2, 5)))
        content_type = draw(st.sampled_from([PICKLE, "application/x-yaml", "application/x-msgpack", "text/plain",
                                             "application/json", "application/data"]))
        reasons = {"application/json": "undecodable-message",  # pickle bytes are not UTF-8
                   "application/data": "invalid-task-message"}  # kombu hands raw bytes over undecoded
        return Raw(kind, body_bytes, content_type, headers, {reasons.get(content_type, "disallowed-content-type")},
                   encoding="binary", sentinel=sentinel)
    if kind == "unknown-task":
        name = draw(st.text(max_size=40).filter(lambda n: n not in known_tasks))
        return Raw(kind, valid_body(), "application/json", celery_headers(name), {"unknown-task"})
    if kind == "oversize":
        size = draw(st.integers(MAX_MESSAGE + 1, MAX_MESSAGE + 4096))
        if draw(st.booleans()):
            sentinel = sentinel_dir / f"unpickled-{uuid.uuid4().hex}"
            body_bytes = pickle.dumps(([], {"key": Sentinel(sentinel), "pad": b"x" * size}, {}))
            return Raw(kind, body_bytes, PICKLE, headers, {"message-too-large"}, encoding="binary",
                       sentinel=sentinel)
        return Raw(kind, valid_body(label="x" * size), "application/json", headers, {"message-too-large"})
    if kind == "bad-header":
        name, bad = draw(st.sampled_from([
            ("id", None), ("id", 5), ("id", ""), ("retries", "x"), ("retries", -1), ("timelimit", "abc"),
            ("timelimit", [1, 2, 3]), ("timelimit", ["a", None]), ("eta", "not a date"), ("eta", 12345),
            ("task", 7), ("task", ["agents.probe"]), ("root_id", 3), ("x_correlation_id", 42),
        ]))
        headers[name] = bad
        return Raw(kind, valid_body(), "application/json", headers, {"invalid-task-message"})
    del headers["task"]  # no task header and not a protocol-1 body
    return Raw(kind, json.dumps(draw(st.lists(SCALARS, max_size=3))), "application/json", headers,
               {"unknown-message-format"})


def good_task(system: System, redis_client: redis_lib.Redis) -> dict[str, Any]:
    k = f"test:bad-input:{uuid.uuid4().hex}"
    system.app.tasks["agents.probe"].apply_async(kwargs={"key": k, "label": "good"})
    notes = wait_for(lambda: [n for n in redis_list(redis_client, k) if n["event"] == "done"], 60,
                     what=f"a valid task to succeed\n{system.logs()}")
    return dict(notes[0])


def records_of(system: System, correlation_id: str) -> list[str]:
    from relaybus.eventstore import open_store

    store = open_store(system.settings.eventstore_url)
    try:
        return [e.type for e in store.by_correlation(correlation_id)]
    finally:
        store.close()


def dead_letter_recorded(system: System, correlation_id: str) -> bool:
    return "task.dead_lettered" in records_of(system, correlation_id)


def test_raw_malformed_messages_are_each_dead_lettered_with_their_reason_and_the_worker_goes_on(
    system: System, redis_client: redis_lib.Redis, tmp_path: Path
) -> None:
    queue = f"{system.namespace}.probe"
    letters = Letters(system.app, f"{queue}.dlq")
    worker = system.workers[0]
    before = good_task(system, redis_client)
    failed_correlations: list[str] = []
    sentinels: list[Path] = []
    kinds: set[str] = set()

    def dead_lettered(raw: Raw) -> None:
        marker = uuid.uuid4().hex
        raw_publish(system.app, queue, raw.body, content_type=raw.content_type,
                    headers={**raw.headers, "x_test_marker": marker}, content_encoding=raw.encoding)
        letter = letters.wait(marker)
        headers = letter.headers
        context = f"{raw.kind}: {headers.get('x_error_message')!r}"
        assert headers["x_dead_letter_reason"] in raw.reasons, context
        assert headers["x_error_message"], context
        assert headers["x_original_queue"] == queue, context
        if raw.kind == "oversize":
            size = len(raw.body if isinstance(raw.body, bytes) else raw.body.encode())
            assert f"{size} bytes" in headers["x_error_message"]
            assert f"limit of {MAX_MESSAGE} bytes" in headers["x_error_message"]
        if raw.kind == "wrong-arg-types":
            assert headers["x_error_type"] == "InvalidInput" and headers["x_attempts"] == 1, context
            assert raw.correlation_id is not None
            failed_correlations.append(raw.correlation_id)
        if raw.sentinel is not None:
            sentinels.append(raw.sentinel)
            assert not raw.sentinel.exists(), "a worker unpickled a message body"
        assert worker.proc.poll() is None, f"the worker exited:\n{worker.log()[-4000:]}"
        kinds.add(raw.kind)

    for kind in RAW_KINDS:
        PER_KIND(given(raw_messages(kind, tmp_path, frozenset(system.app.tasks)))(dead_lettered))()

    after = good_task(system, redis_client)
    assert worker.proc.poll() is None
    assert after["pid"] == before["pid"], "the pool process was replaced: something crashed it"
    assert not any(s.exists() for s in sentinels), "a worker unpickled a message body"
    assert queue_depth(system.app, queue) == 0
    # The body notes "done" before the task's terminal event is written: wait for the log.
    wait_for(lambda: {"task.started", "task.succeeded"} <= set(records_of(system, after["correlation_id"])), 30,
             what="the valid task's start and success in the event log")
    for correlation_id in failed_correlations:  # the task's failure is recorded after its dead letter
        wait_for(partial(dead_letter_recorded, system, correlation_id), 30,
                 what=f"the dead letter of {correlation_id} in the event log")
    assert kinds == set(RAW_KINDS)
    assert sentinels, "no pickle body was tried"


# -- 3. raw events straight to a subscriber's event queue ---------------------------------------------


@st.composite
def raw_events(draw: st.DrawFn, kind: str) -> tuple[bytes | str, str, dict[str, Any], str]:
    """(body, content type, headers, expected reason) of an event the auditor cannot take."""
    correlation_id = f"corr-{uuid.uuid4().hex}"
    envelope: dict[str, Any] = {"event_id": str(uuid.uuid4()), "type": "probe.observed", "version": 2,
                                "correlation_id": correlation_id, "data": {"key": "k", "name": "n", "source": "s"}}
    if kind == "unknown-type":
        envelope["type"] = "probe." + draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
                                           .filter(lambda t: t != "observed"))
        return json.dumps(envelope), "application/json", {}, "unknown-event-type"
    if kind == "garbage":
        return b"\xff" + draw(st.binary(max_size=100)), "application/json", {}, "invalid-event"
    if kind == "wrong-shape":
        shape = draw(st.one_of(SCALARS, st.lists(SCALARS, max_size=3),
                               st.dictionaries(st.text(max_size=5), SCALARS, max_size=3)))
        return json.dumps(shape), "application/json", {}, "invalid-event"
    if kind == "wrong-data":
        envelope["data"]["name"] = draw(NOT_A_STRING)
        return json.dumps(envelope), "application/json", {}, "invalid-event"
    if kind == "oversize":  # a valid envelope, too large for the workers
        envelope["data"]["name"] = "x" * draw(st.integers(MAX_MESSAGE + 1, MAX_MESSAGE + 4096))
        return json.dumps(envelope), "application/json", {}, "message-too-large"
    content_type = draw(st.sampled_from([PICKLE, "application/x-yaml", "text/plain"]))
    return pickle.dumps(envelope), content_type, {}, "invalid-event"


def test_raw_events_of_unknown_types_or_malformed_envelopes_are_dead_lettered_with_their_reason(
    system: System, redis_client: redis_lib.Redis
) -> None:
    queue = event_queue_name(system.namespace, "auditor")
    letters = Letters(system.app, f"{queue}.dlq")
    seen: set[str] = set()

    def dead_lettered(event: tuple[bytes | str, str, dict[str, Any], str]) -> None:
        body, content_type, headers, reason = event
        marker = uuid.uuid4().hex
        encoding = "binary" if isinstance(body, bytes) else "utf-8"
        with system.app.producer_or_acquire() as producer:  # straight to the queue, past the exchange
            producer.publish(body, exchange="", routing_key=queue, content_type=content_type,
                             content_encoding=encoding, serializer=None, delivery_mode=2,
                             headers={**headers, "x_test_marker": marker})
        letter = letters.wait(marker)
        assert letter.headers["x_dead_letter_reason"] == reason, letter.headers.get("x_error_message")
        assert letter.headers["x_original_queue"] == queue
        assert letter.headers["x_error_message"]
        assert system.workers[0].proc.poll() is None
        seen.add(reason)

    for kind in EVENT_KINDS:
        PER_KIND(given(raw_events(kind))(dead_lettered))()
    assert queue_depth(system.app, queue) == 0
    good_task(system, redis_client)
    envelope = EventEnvelope(event_id=str(uuid.uuid4()), type="probe.observed", version=2,
                             correlation_id=f"corr-{uuid.uuid4().hex}",
                             data={"key": f"test:bad-input:{uuid.uuid4().hex}", "name": "after", "source": "t"})
    send_envelope(system.app, envelope)
    wait_for(lambda: redis_list(redis_client, envelope.data["key"]), 30, what="a valid event after the bad ones")
    assert seen == {"unknown-event-type", "invalid-event", "message-too-large"}
