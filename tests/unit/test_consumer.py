"""The worker consumer's guard in front of Celery's task handler (project.consumer), without a broker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from celery.worker.consumer.consumer import Consumer
from pydantic import ValidationError

from relaybus.celery import create_app
from relaybus.settings import DEFAULT_MAX_MESSAGE_BYTES, Settings
from relaybus.tasks.runtime import deadletter
from relaybus.tasks.runtime.config import runtime_config
from relaybus.tasks.runtime.consumer import (
    DeadLetteringConsumer,
    MalformedTaskMessage,
    MessageTooLarge,
    body_problem,
    header_problem,
)
from relaybus.tasks.runtime.deadletter import body_size


@dataclass
class FakeMessage:
    body: bytes | str
    acknowledged: bool = False
    headers: dict[str, Any] | None = None
    payload: Any = None


@dataclass
class Guarded:
    handle: Callable[[Any], Any]
    received: list[Any] = field(default_factory=list)
    dead: list[tuple[Any, str, BaseException | None]] = field(default_factory=list)


@pytest.fixture
def guarded(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Guarded]]:
    def build(limit: int = 1000, inner_error: BaseException | None = None) -> Guarded:
        settings = Settings(broker_url="memory://", max_payload_bytes=limit // 2, max_message_bytes=limit)
        consumer: Any = DeadLetteringConsumer.__new__(DeadLetteringConsumer)  # no worker around it
        consumer.app = create_app(settings)
        consumer.connection_errors = (ConnectionResetError,)
        consumer.strategies = {"agents.probe": None}
        result = Guarded(handle=lambda m: None)

        def inner_handler(self: Any, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
            def on_task_received(message: Any) -> None:
                result.received.append(message)
                if inner_error is not None:
                    raise inner_error

            return on_task_received

        monkeypatch.setattr(Consumer, "create_task_handler", inner_handler)
        consumer._dead_letter = lambda message, reason, error: result.dead.append((message, reason, error))
        result.handle = consumer.create_task_handler()
        return result

    yield build


def test_a_body_over_the_limit_is_dead_lettered_and_never_reaches_celery(guarded: Callable[..., Guarded]) -> None:
    g = guarded(limit=1000)
    big = FakeMessage(b"\x80" * 1001)  # a pickle opcode: it must not even be looked at
    g.handle(big)
    assert g.received == []
    ((message, reason, error),) = g.dead
    assert message is big and reason == "message-too-large"
    assert isinstance(error, MessageTooLarge)
    assert "1001 bytes" in str(error) and "limit of 1000 bytes" in str(error)


def test_a_body_at_the_limit_goes_on_to_celery(guarded: Callable[..., Guarded]) -> None:
    g = guarded(limit=1000)
    exact, text = FakeMessage(b"x" * 1000), FakeMessage("é" * 500)  # 1000 bytes as UTF-8
    g.handle(exact)
    g.handle(text)
    assert g.received == [exact, text]
    assert g.dead == []


def test_a_str_body_is_measured_in_utf8_bytes() -> None:
    assert body_size("é" * 3) == 6
    assert body_size(b"abc") == 3
    assert body_size(bytearray(b"ab")) == 2


def test_an_error_celery_raises_out_of_its_handler_dead_letters_the_message_instead_of_stopping_the_consumer(
    guarded: Callable[..., Guarded],
) -> None:
    g = guarded(inner_error=KeyError("id"))
    message = FakeMessage(b"[[], {}, {}]")
    g.handle(message)
    ((dead, reason, error),) = g.dead
    assert dead is message and reason == "invalid-task-message" and isinstance(error, KeyError)


def test_an_error_after_the_message_was_acknowledged_is_only_logged(guarded: Callable[..., Guarded]) -> None:
    g = guarded(inner_error=TypeError("late"))
    g.handle(FakeMessage(b"[[], {}, {}]", acknowledged=True))
    assert g.dead == []


def test_a_connection_error_still_reaches_the_consumer_so_it_reconnects(guarded: Callable[..., Guarded]) -> None:
    g = guarded(inner_error=ConnectionResetError("broker went away"))
    with pytest.raises(ConnectionResetError):
        g.handle(FakeMessage(b"[[], {}, {}]"))
    assert g.dead == []


def test_the_message_limit_must_be_above_the_payload_limit() -> None:
    assert Settings().max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES > Settings().max_payload_bytes
    with pytest.raises(ValidationError, match="max_message_bytes"):
        Settings(max_payload_bytes=1000, max_message_bytes=1000)


def test_the_app_hands_the_limit_to_its_workers() -> None:
    app = create_app(Settings(broker_url="memory://", max_payload_bytes=10, max_message_bytes=12345))
    assert runtime_config(app).max_message_bytes == 12345
    assert app.conf.worker_consumer == "relaybus.tasks.runtime.consumer:DeadLetteringConsumer"


GOOD_HEADERS: dict[str, Any] = {"task": "agents.probe", "id": "t1", "retries": 0, "timelimit": [None, None],
                                "root_id": "t1", "parent_id": None, "group": None}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"id": 5}, "'id'"), ({"id": ""}, "'id'"), ({"task": ["a"]}, "'task'"), ({"retries": "x"}, "'retries'"),
        ({"retries": True}, "'retries'"), ({"timelimit": "abc"}, "'timelimit'"),
        ({"timelimit": [1, "x"]}, "'timelimit'"),
        ({"timelimit": [float("nan"), None]}, "'timelimit'"), ({"root_id": 3}, "'root_id'"),
        ({"x_correlation_id": {"a": 1}}, "'x_correlation_id'"),
    ],
)
def test_headers_celery_would_fail_on_later_are_named(change: dict[str, Any], named: str) -> None:
    assert header_problem(GOOD_HEADERS) is None
    assert named in (header_problem({**GOOD_HEADERS, **change}) or "")


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (1, "[args, kwargs, embed]"), ([[], {}], "[args, kwargs, embed]"), ([5, {}, {}], "args"),
        ([[], [1], {}], "kwargs"), ([[], "s", None], "kwargs"), ([[], {}, 7], "third element"),
        ([[], {}, {"chain": "x"}], "'chain'"), ([[], {}, {"callbacks": [1]}], "'callbacks'"),
        ([[], {}, {"chord": []}], "'chord'"),
    ],
)
def test_bodies_of_the_wrong_shape_are_named(body: Any, named: str) -> None:
    assert body_problem([[], {"key": "k"}, {"callbacks": None, "chain": [{"task": "x"}], "chord": None}]) is None
    assert body_problem([[{"up": 1}], {}, None]) is None
    assert named in (body_problem(body) or "")


def test_a_malformed_message_is_dead_lettered_before_celery_takes_it(guarded: Callable[..., Guarded]) -> None:
    g = guarded()
    bad = FakeMessage(b"...", headers={**GOOD_HEADERS, "timelimit": "abc"})
    wrong_shape = FakeMessage(b"...", headers=GOOD_HEADERS, payload=[5, {}, {}])
    unknown = FakeMessage(b"...", headers={**GOOD_HEADERS, "task": "agents.nope"}, payload=[5, {}, {}])
    good = FakeMessage(b"...", headers=GOOD_HEADERS, payload=[[], {"key": "k"}, {}])
    for message in (bad, wrong_shape, unknown, good):
        g.handle(message)
    assert [(m, reason) for m, reason, _ in g.dead] == [(bad, "invalid-task-message"),
                                                        (wrong_shape, "invalid-task-message")]
    assert all(isinstance(error, MalformedTaskMessage) for _, _, error in g.dead)
    assert g.received == [unknown, good], "an unknown task is left to Celery's own unknown-task handling"


@dataclass
class RawMessage:
    """What both consumers hand to dead_letter_message: a kombu message's parts and its settlement."""

    body: bytes = b"\x80garbage"
    headers: dict[str, Any] = field(default_factory=lambda: {"task": "agents.probe", "x_keep": "me"})
    content_type: str | None = None
    content_encoding: str | None = None
    properties: dict[str, Any] = field(default_factory=lambda: {"priority": 3})
    settled: list[str] = field(default_factory=list)

    def ack(self) -> None:
        self.settled.append("ack")

    def reject(self, requeue: bool) -> None:
        self.settled.append(f"reject(requeue={requeue})")


def test_a_raw_message_is_dead_lettered_as_it_came_with_the_reason_added_then_acked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    published: list[dict[str, Any]] = []
    monkeypatch.setattr(deadletter, "publish_dead_letter", lambda app, **kw: published.append(kw))
    message = RawMessage()
    app = create_app(Settings(broker_url="memory://"))
    assert deadletter.dead_letter_message(app, message, original_queue="agents.probe.urgent", reason="unknown-task",
                                          error=KeyError("x"), attempts=0, correlation_id="c-1")
    (sent,) = published
    assert sent["body"] == message.body and sent["original_queue"] == "agents.probe.urgent"
    assert (sent["content_type"], sent["content_encoding"]) == ("application/octet-stream", "binary")
    assert (sent["priority"], sent["correlation_id"]) == (3, "c-1")
    assert sent["headers"]["x_keep"] == "me" and sent["headers"]["x_dead_letter_reason"] == "unknown-task"
    assert sent["headers"]["x_error_type"] == "KeyError" and sent["headers"]["x_attempts"] == 0
    assert message.headers == {"task": "agents.probe", "x_keep": "me"}, "the message's own headers are not touched"
    assert message.settled == ["ack"]


def test_a_dead_letter_the_broker_does_not_take_rejects_the_message_to_the_queues_dlx(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(app: Any, **kw: Any) -> None:
        raise ConnectionResetError("broker gone")

    monkeypatch.setattr(deadletter, "publish_dead_letter", refuse)
    message = RawMessage()
    app = create_app(Settings(broker_url="memory://"))
    assert not deadletter.dead_letter_message(app, message, original_queue="agents.probe", reason="unknown-task",
                                              error=None, attempts=0, correlation_id=None)
    assert message.settled == ["reject(requeue=False)"]
