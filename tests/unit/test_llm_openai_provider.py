"""The OpenAI-compatible provider (on the openai SDK) against a real HTTP server on 127.0.0.1, scripted per test.

The server is tests.fake_openai: the stdlib's ``ThreadingHTTPServer`` playing ``/v1/chat/completions``,
streaming server-sent events when asked. Most tests run both ways, one body and streamed (``stream``):
the completion must not depend on it.
"""

from __future__ import annotations

import logging
import pickle
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import openai
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
from tests.fake_openai import COMPLETION_PATH, FakeOpenAI, Reply, chat_completion, openai_error, serving

pytestmark = pytest.mark.timeout(30)

API_KEY = "sk-relaybus-test-9f8e7d6c5b4a"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    yield from serving()


@pytest.fixture(params=[False, True], ids=["body", "streamed"])
def stream(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def provider(fake: FakeOpenAI, stream: bool) -> Iterator[OpenAICompatibleProvider]:
    with OpenAICompatibleProvider(
        fake.base_url, model="fake-model", api_key=SecretStr(API_KEY), timeout_s=5.0, stream=stream
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
    fake: FakeOpenAI, provider: OpenAICompatibleProvider, stream: bool
) -> None:
    request = ask(temperature=0.2, max_tokens=64)
    completion = provider.complete(request)

    assert completion.text == "Hello from the fake."
    assert completion.model == "fake-model-0613"
    assert completion.provider == "openai"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (11, 5)
    assert completion.request_fingerprint == request.fingerprint()
    assert (completion.finish_reason, completion.tool_calls) == ("stop", ())

    [received] = fake.received
    assert received.path == COMPLETION_PATH
    assert received.headers["authorization"] == f"Bearer {API_KEY}"
    assert received.headers["content-type"] == "application/json"
    streaming = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
    assert received.body == {
        "model": "fake-model",
        "messages": [
            {"role": "system", "content": "You are the writer."},
            {"role": "user", "content": "Summarise sagas."},
        ],
        "temperature": 0.2,
        "max_tokens": 64,
        **streaming,
    }


def test_without_a_key_no_authorization_header_is_sent_and_the_request_model_wins(
    fake: FakeOpenAI, stream: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The SDK would take a key from the environment: none reaches a server we gave no key for.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    body = chat_completion(usage=None)
    del body["model"]
    fake.script(Reply(body=body))
    with OpenAICompatibleProvider(fake.base_url + "/", model="fake-model", timeout_s=5.0, stream=stream) as provider:
        completion = complete(provider, user="Hi", model="other-model")
    [received] = fake.received
    assert received.path == COMPLETION_PATH
    assert "authorization" not in received.headers
    assert received.body["model"] == "other-model"
    assert "max_tokens" not in received.body
    assert completion.model == "other-model"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (0, 0)


def test_a_request_past_the_timeout_is_transient(fake: FakeOpenAI, stream: bool) -> None:
    fake.script(Reply(hang=True))
    started = time.monotonic()
    with (
        OpenAICompatibleProvider(fake.base_url, model="m", timeout_s=0.2, stream=stream) as provider,
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
    assert isinstance(caught.value.__cause__, openai.APIConnectionError)


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
        (
            {"choices": [{"message": {"role": "assistant", "content": None}}]},
            "choices.0.message: Value error, content is null and there are no tool calls",
        ),
    ],
)
def test_a_2xx_that_is_not_a_chat_completion_is_a_permanent_error(
    fake: FakeOpenAI, body: dict[str, Any] | str, problem: str
) -> None:
    fake.script(Reply(200, body))
    provider = OpenAICompatibleProvider(fake.base_url, model="m", timeout_s=5.0)
    with pytest.raises(MalformedCompletion) as caught:
        provider.complete(ask())
    assert isinstance(caught.value, PermanentError)
    assert not is_transient(caught.value)
    assert caught.value.status_code == 200
    assert "not a chat completion" in str(caught.value)
    assert problem in str(caught.value)


def test_the_sdk_retries_in_process_only_when_asked_and_waits_what_the_server_says(fake: FakeOpenAI) -> None:
    fake.script(Reply(503, "busy", headers={"Retry-After-Ms": "30"}))
    with OpenAICompatibleProvider(fake.base_url, model="m", timeout_s=5.0) as provider:
        with pytest.raises(ProviderOverloaded) as caught:  # max_retries=0: the task base retries instead
            provider.complete(ask())
        assert caught.value.retry_after == pytest.approx(0.03)
        assert len(fake.received) == 1
    fake.script(Reply(503, "busy", headers={"Retry-After-Ms": "30"}), Reply())
    with OpenAICompatibleProvider(fake.base_url, model="m", timeout_s=5.0, max_retries=1) as provider:
        assert provider.complete(ask()).text == "Hello from the fake."
    assert len(fake.received) == 3


def test_in_process_retries_give_up_with_the_last_error(fake: FakeOpenAI) -> None:
    quick = {"Retry-After-Ms": "10"}
    fake.script(Reply(500, "one", quick), Reply(502, "two", quick), Reply(503, "three", quick))
    with (
        OpenAICompatibleProvider(fake.base_url, model="m", timeout_s=5.0, max_retries=2) as provider,
        pytest.raises(ProviderOverloaded, match="HTTP 503: three"),
    ):
        provider.complete(ask())
    assert len(fake.received) == 3


def test_permanent_errors_are_not_retried_in_process(fake: FakeOpenAI) -> None:
    fake.script(Reply(400, openai_error("bad")), Reply())
    with (
        OpenAICompatibleProvider(fake.base_url, model="m", timeout_s=5.0, max_retries=3) as provider,
        pytest.raises(ProviderRejected),
    ):
        provider.complete(ask())
    assert len(fake.received) == 1


def test_the_api_key_never_appears_in_errors_reprs_or_logs(
    fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    quick = {"Retry-After-Ms": "1"}
    fake.script(
        Reply(401, echo_auth=True),
        Reply(500, echo_auth=True, headers=quick),
        Reply(500, echo_auth=True, headers=quick),
        Reply(),
    )
    errors: list[BaseException] = []
    with OpenAICompatibleProvider(
        fake.base_url, model="m", api_key=SecretStr(API_KEY), timeout_s=5.0, max_retries=1
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
    assert "Retrying request in" in caplog.text  # the SDK's in-process retry was logged
    assert "LLM completion from" in caplog.text  # and so was the completion
    for error in errors:
        # A worker logs the whole chain: an answer's SDK error (holding the echoed key) is not in it.
        assert error.__cause__ is None
        shown += [str(error), repr(error), *map(str, error.args)]
    for text in [*shown, caplog.text]:
        assert API_KEY not in text
    assert "SecretStr('**********')" in repr(provider)


def test_overloaded_and_malformed_errors_survive_pickling() -> None:
    overloaded = pickle.loads(pickle.dumps(ProviderOverloaded("busy", status_code=429, retry_after=3.0)))
    assert (str(overloaded), overloaded.status_code, overloaded.retry_after) == ("busy", 429, 3.0)
    malformed = pickle.loads(pickle.dumps(MalformedCompletion("not json", status_code=200)))
    assert (str(malformed), malformed.status_code) == ("not json", 200)


def test_an_injected_sdk_client_is_used_and_left_open(fake: FakeOpenAI) -> None:
    client = openai.OpenAI(api_key="sk-shared", base_url="http://127.0.0.1:9/v1", max_retries=5)
    provider = OpenAICompatibleProvider(fake.base_url, model="m", timeout_s=5.0, client=client)
    fake.script(Reply(503, "busy"))
    with pytest.raises(ProviderOverloaded):  # the provider's base_url and max_retries=0 apply, not the client's
        provider.complete(ask())
    assert provider.complete(ask()).text == "Hello from the fake."
    provider.close()
    assert not client.is_closed()
    assert [r.headers["authorization"] for r in fake.received] == ["Bearer sk-shared"] * 2
    client.close()


def test_build_provider_makes_an_http_provider_from_config(fake: FakeOpenAI) -> None:
    config = ProviderConfig(kind="openai", base_url=fake.base_url, model="cfg-model", timeout_s=3.0, stream=True,
                            max_retries=2)
    provider = build_provider(config, "fast")
    assert isinstance(provider, OpenAICompatibleProvider)
    assert (provider.name, provider.model, provider.stream, provider.max_retries) == ("fast", "cfg-model", True, 2)
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
    with pytest.raises(ValueError, match="max_retries"):
        OpenAICompatibleProvider("http://127.0.0.1/v1", model="m", max_retries=-1)
    with pytest.raises(ValidationError):
        ProviderConfig(kind="openai", model="m", max_retries=11)
