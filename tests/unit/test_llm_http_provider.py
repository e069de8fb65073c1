"""The OpenAI-compatible provider against a real HTTP server on 127.0.0.1, scripted per test.

The server is the stdlib's ``ThreadingHTTPServer`` playing an OpenAI-compatible
``/v1/chat/completions``. A reply scripted to hang waits on an Event that teardown sets, so a
timeout test costs the client's timeout (a fraction of a second), never the server's wait.
"""

from __future__ import annotations

import json
import logging
import pickle
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from relaybus.tasks.errors import PermanentError, ProviderRejected, ProviderUnavailable, is_transient
from relaybus.tasks.llm import (
    ChatMessage,
    CompletionRequest,
    MalformedCompletion,
    OpenAICompatibleProvider,
    ProviderConfig,
    ProviderOverloaded,
    build_provider,
    complete,
)

pytestmark = pytest.mark.timeout(30)

API_KEY = "sk-relaybus-test-9f8e7d6c5b4a"
COMPLETION_PATH = "/v1/chat/completions"


def chat_completion(text: str = "Hello from the fake.", model: str = "fake-model-0613") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
    }


def openai_error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": None}}


@dataclass
class Reply:
    status: int = 200
    body: dict[str, Any] | str = field(default_factory=chat_completion)
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False
    #: Put the request's Authorization header into the error message, as a careless server might.
    echo_auth: bool = False


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


class FakeOpenAI:
    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.received: list[Received] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw
                headers = {k.lower(): v for k, v in self.headers.items()}
                with fake._lock:
                    fake.received.append(Received(self.path, headers, body))
                    reply = fake.replies.pop(0) if fake.replies else Reply()
                if self.path != COMPLETION_PATH:
                    reply = Reply(404, openai_error(f"no route {self.path}"))
                if reply.hang:
                    fake.release.wait(timeout=10)
                payload = reply.body
                if reply.echo_auth:
                    payload = openai_error(f"Incorrect API key provided: {headers.get('authorization')}")
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (a timeout test); nothing to answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        # A short poll interval makes shutdown() quick (it waits for the loop's next poll).
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def provider(fake: FakeOpenAI) -> Iterator[OpenAICompatibleProvider]:
    with OpenAICompatibleProvider(
        fake.base_url, model="fake-model", api_key=SecretStr(API_KEY), timeout_s=5.0
    ) as provider:
        yield provider


def ask(text: str = "Summarise sagas.", **kwargs: Any) -> CompletionRequest:
    return CompletionRequest(
        messages=(
            ChatMessage(role="system", content="You are the writer."),
            ChatMessage(role="user", content=text),
        ),
        **kwargs,
    )


def test_a_200_gives_a_completion_from_the_openai_request_it_sent(
    fake: FakeOpenAI, provider: OpenAICompatibleProvider
) -> None:
    request = ask(temperature=0.2, max_tokens=64)
    completion = provider.complete(request)

    assert completion.text == "Hello from the fake."
    assert completion.model == "fake-model-0613"
    assert completion.provider == "openai"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (11, 5)
    assert completion.request_fingerprint == request.fingerprint()

    [received] = fake.received
    assert received.path == COMPLETION_PATH
    assert received.headers["authorization"] == f"Bearer {API_KEY}"
    assert received.headers["content-type"] == "application/json"
    assert received.body == {
        "model": "fake-model",
        "messages": [
            {"role": "system", "content": "You are the writer."},
            {"role": "user", "content": "Summarise sagas."},
        ],
        "temperature": 0.2,
        "max_tokens": 64,
    }


def test_without_a_key_no_authorization_header_is_sent_and_the_request_model_wins(fake: FakeOpenAI) -> None:
    body = chat_completion()
    del body["usage"], body["model"]
    fake.script(Reply(body=body))
    with OpenAICompatibleProvider(fake.base_url + "/", model="fake-model", timeout_s=5.0) as provider:
        completion = complete(provider, user="Hi", model="other-model")
    [received] = fake.received
    assert received.path == COMPLETION_PATH
    assert "authorization" not in received.headers
    assert received.body["model"] == "other-model"
    assert "max_tokens" not in received.body
    assert completion.model == "other-model"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (0, 0)


def test_a_request_past_the_timeout_is_transient(fake: FakeOpenAI) -> None:
    fake.script(Reply(hang=True))
    started = time.monotonic()
    with (
        OpenAICompatibleProvider(fake.base_url, model="m", timeout_s=0.2) as provider,
        pytest.raises(ProviderUnavailable, match=r"timed out after 0\.2s") as caught,
    ):
        provider.complete(ask())
    assert time.monotonic() - started < 5
    assert type(caught.value) is ProviderUnavailable
    assert is_transient(caught.value)


def test_an_unreachable_server_is_transient() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with (
        OpenAICompatibleProvider(f"http://127.0.0.1:{port}/v1", model="m", timeout_s=2.0) as provider,
        pytest.raises(ProviderUnavailable, match="could not be reached") as caught,
    ):
        provider.complete(ask())
    assert is_transient(caught.value)
    assert isinstance(caught.value.__cause__, httpx.TransportError)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_5xx_and_429_are_transient_and_keep_the_status(
    fake: FakeOpenAI, provider: OpenAICompatibleProvider, status: int
) -> None:
    fake.script(Reply(status, openai_error("The server is overloaded.")))
    with pytest.raises(ProviderOverloaded) as caught:
        provider.complete(ask())
    assert isinstance(caught.value, ProviderUnavailable)
    assert is_transient(caught.value)
    assert caught.value.status_code == status
    assert caught.value.retry_after is None
    assert f"HTTP {status}: The server is overloaded." in str(caught.value)


def test_retry_after_in_seconds_is_kept(fake: FakeOpenAI, provider: OpenAICompatibleProvider) -> None:
    fake.script(Reply(429, openai_error("Rate limit reached."), headers={"Retry-After": "7"}))
    with pytest.raises(ProviderOverloaded) as caught:
        provider.complete(ask())
    assert caught.value.retry_after == 7.0


def test_retry_after_as_an_http_date_becomes_seconds(
    fake: FakeOpenAI, provider: OpenAICompatibleProvider
) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    fake.script(
        Reply(503, "busy", headers={"Retry-After": when}), Reply(503, "", headers={"Retry-After": "soon"})
    )
    with pytest.raises(ProviderOverloaded) as dated:
        provider.complete(ask())
    with pytest.raises(ProviderOverloaded) as unreadable:
        provider.complete(ask())
    assert dated.value.retry_after is not None
    assert 100 <= dated.value.retry_after <= 121
    assert "HTTP 503: busy" in str(dated.value)
    assert unreadable.value.retry_after is None


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_4xx_are_rejected_with_the_status_and_the_providers_message(
    fake: FakeOpenAI, provider: OpenAICompatibleProvider, status: int
) -> None:
    fake.script(Reply(status, openai_error("The model `nope` does not exist.")))
    with pytest.raises(ProviderRejected) as caught:
        provider.complete(ask())
    assert caught.value.status_code == status
    assert isinstance(caught.value, PermanentError)
    assert not is_transient(caught.value)
    assert (
        str(caught.value)
        == f"provider rejected the request with HTTP {status}: The model `nope` does not exist."
    )


def test_a_4xx_without_an_openai_error_body_reports_the_body_text(
    fake: FakeOpenAI, provider: OpenAICompatibleProvider
) -> None:
    fake.script(Reply(400, "bad   request\nbody"))
    with pytest.raises(ProviderRejected, match=r"HTTP 400: bad request body$"):
        provider.complete(ask())


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("<html>Sign in to the proxy</html>", "Invalid JSON"),
        ({"object": "list", "data": []}, "choices"),
        ({"choices": []}, "choices"),
        ({"choices": [{"message": {"role": "assistant", "content": None}}]}, "choices.0.message.content"),
    ],
)
def test_a_2xx_that_is_not_a_chat_completion_is_a_permanent_error(
    fake: FakeOpenAI, provider: OpenAICompatibleProvider, body: dict[str, Any] | str, problem: str
) -> None:
    fake.script(Reply(200, body))
    with pytest.raises(MalformedCompletion) as caught:
        provider.complete(ask())
    assert isinstance(caught.value, PermanentError)
    assert not is_transient(caught.value)
    assert caught.value.status_code == 200
    assert "not a chat completion" in str(caught.value)
    assert problem in str(caught.value)


def test_in_process_retries_wait_retry_after_then_succeed(fake: FakeOpenAI) -> None:
    fake.script(Reply(503, "busy", headers={"Retry-After": "2"}), Reply())
    waits: list[float] = []
    with OpenAICompatibleProvider(
        fake.base_url, model="m", timeout_s=5.0, max_retries_in_process=1, sleep=waits.append
    ) as provider:
        assert provider.complete(ask()).text == "Hello from the fake."
    assert waits == [2.0]
    assert len(fake.received) == 2


def test_in_process_retries_give_up_with_the_last_error(fake: FakeOpenAI) -> None:
    fake.script(Reply(500, "one"), Reply(502, "two"), Reply(503, "three"))
    waits: list[float] = []
    with (
        OpenAICompatibleProvider(
            fake.base_url, model="m", timeout_s=5.0, max_retries_in_process=2, sleep=waits.append
        ) as provider,
        pytest.raises(ProviderOverloaded, match="HTTP 503: three"),
    ):
        provider.complete(ask())
    assert waits == [0.5, 1.0]
    assert len(fake.received) == 3


def test_permanent_errors_are_not_retried_in_process(fake: FakeOpenAI) -> None:
    fake.script(Reply(400, openai_error("bad")), Reply())
    waits: list[float] = []
    with (
        OpenAICompatibleProvider(
            fake.base_url, model="m", timeout_s=5.0, max_retries_in_process=3, sleep=waits.append
        ) as provider,
        pytest.raises(ProviderRejected),
    ):
        provider.complete(ask())
    assert waits == []
    assert len(fake.received) == 1


def test_the_api_key_never_appears_in_errors_reprs_or_logs(
    fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.script(
        Reply(401, echo_auth=True),
        Reply(500, echo_auth=True),
        Reply(500, echo_auth=True),
        Reply(),
    )
    errors: list[BaseException] = []
    with OpenAICompatibleProvider(
        fake.base_url,
        model="m",
        api_key=SecretStr(API_KEY),
        timeout_s=5.0,
        max_retries_in_process=1,
        sleep=lambda _: None,
    ) as provider:
        for _ in range(2):
            with pytest.raises((ProviderRejected, ProviderOverloaded)) as caught:
                provider.complete(ask())
            errors.append(caught.value)
        provider.complete(ask())
        shown = [repr(provider), str(provider)]
    config = ProviderConfig(kind="openai", base_url=fake.base_url, model="m", api_key=SecretStr(API_KEY))
    shown += [repr(config), str(config), repr(build_provider(config))]

    # The server did receive the key, and did echo it back: the checks below are not vacuous.
    assert fake.received[0].headers["authorization"] == f"Bearer {API_KEY}"
    assert "**********" in str(errors[0])
    assert "LLM provider unavailable" in caplog.text  # the in-process retry was logged
    assert "HTTP Request: POST" in caplog.text  # and so was httpx
    for error in errors:
        shown += [str(error), repr(error), *map(str, error.args)]
    for text in [*shown, caplog.text]:
        assert API_KEY not in text
    assert "SecretStr('**********')" in repr(provider)


def test_overloaded_and_malformed_errors_survive_pickling() -> None:
    overloaded = pickle.loads(pickle.dumps(ProviderOverloaded("busy", status_code=429, retry_after=3.0)))
    assert (str(overloaded), overloaded.status_code, overloaded.retry_after) == ("busy", 429, 3.0)
    malformed = pickle.loads(pickle.dumps(MalformedCompletion("not json", status_code=200)))
    assert (str(malformed), malformed.status_code) == ("not json", 200)


def test_an_injected_client_is_used_and_left_open(fake: FakeOpenAI) -> None:
    seen: list[str] = []
    with httpx.Client(event_hooks={"request": [lambda r: seen.append(str(r.url))]}) as client:
        provider = OpenAICompatibleProvider(fake.base_url, model="m", timeout_s=5.0, client=client)
        provider.complete(ask())
        provider.close()
        assert not client.is_closed
    assert seen == [fake.base_url + "/chat/completions"]


def test_build_provider_makes_an_http_provider_from_config(fake: FakeOpenAI) -> None:
    config = ProviderConfig(kind="openai", base_url=fake.base_url, model="cfg-model", timeout_s=3.0)
    provider = build_provider(config)
    assert isinstance(provider, OpenAICompatibleProvider)
    assert provider.complete(ask()).text == "Hello from the fake."
    assert fake.received[0].body["model"] == "cfg-model"
    provider.close()


def test_config_and_constructor_refuse_what_cannot_work() -> None:
    with pytest.raises(ValidationError, match="needs a model"):
        ProviderConfig(kind="openai")
    with pytest.raises(ValidationError):
        ProviderConfig(kind="offline", timeout_s=0)
    with pytest.raises(ValidationError):
        ProviderConfig(kind="offline", retries=3)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="http"):
        OpenAICompatibleProvider("localhost:8000/v1", model="m")
    with pytest.raises(ValueError, match="timeout_s"):
        OpenAICompatibleProvider("http://127.0.0.1/v1", model="m", timeout_s=0)
