"""Streamed answers and tool calls through the OpenAI-compatible provider, against tests.fake_openai on
127.0.0.1; and their fingerprints, records and deterministic replays."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from relaybus.tasks.errors import PermanentError, ProviderUnavailable, is_transient
from relaybus.tasks.llm import (
    ChatMessage,
    Completion,
    CompletionRequest,
    MalformedCompletion,
    OpenAICompatibleProvider,
    RecordingProvider,
    ReplayProvider,
    Tool,
    ToolCall,
    complete,
)
from tests.fake_openai import FakeOpenAI, Reply, chat_completion, serving, sse_chunks, tool_call

pytestmark = pytest.mark.timeout(30)

WEATHER = Tool(
    name="weather",
    description="Today's weather in a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CALLS = [tool_call("call_1", "weather", '{"city": "Lyon"}'), tool_call("call_2", "weather", '{"city": "Oslo"}')]


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    yield from serving()


def provider(fake: FakeOpenAI, stream: bool) -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider(fake.base_url, model="fake-model", timeout_s=5.0, stream=stream, name="local")


def ask(text: str = "Weather in Lyon and Oslo?", **kwargs: object) -> CompletionRequest:
    return CompletionRequest(messages=(ChatMessage(role="user", content=text),), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("reply", [chat_completion("A long enough answer."), chat_completion(None, tool_calls=CALLS)],
                         ids=["text", "tool-calls"])
def test_a_streamed_answer_gives_the_same_completion_as_one_body(fake: FakeOpenAI, reply: dict[str, object]) -> None:
    request = ask(tools=(WEATHER,), tool_choice="auto")
    fake.default = Reply(body=reply)
    with provider(fake, stream=False) as whole, provider(fake, stream=True) as streamed:
        assert streamed.complete(request) == whole.complete(request)
    stream, body = (r.body for r in fake.received)  # the streamed call was made first
    assert stream == {**body, "stream": True, "stream_options": {"include_usage": True}}


def test_a_stream_assembles_text_tool_calls_and_usage(fake: FakeOpenAI) -> None:
    fake.script(Reply(body=chat_completion("Checking.", tool_calls=CALLS, usage=(40, 12))))
    with provider(fake, stream=True) as streamed:
        completion = streamed.complete(ask(tools=(WEATHER,)))
    assert completion.text == "Checking."
    assert completion.tool_calls == (
        ToolCall(id="call_1", name="weather", arguments='{"city": "Lyon"}'),
        ToolCall(id="call_2", name="weather", arguments='{"city": "Oslo"}'),
    )
    assert [c.parsed_arguments() for c in completion.tool_calls] == [{"city": "Lyon"}, {"city": "Oslo"}]
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (40, 12)
    assert completion.finish_reason == "tool_calls"
    assert (completion.provider, completion.model) == ("local", "fake-model-0613")


def test_a_stream_without_usage_counts_zero_tokens(fake: FakeOpenAI) -> None:
    # A server that ignores stream_options: the honest "not reported".
    events = [json.dumps(c) for c in sse_chunks(chat_completion("Hi there."), include_usage=False)] + ["[DONE]"]
    fake.script(Reply(events=events))
    with provider(fake, stream=True) as streamed:
        completion = streamed.complete(ask())
    assert completion.text == "Hi there."
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (0, 0)


def test_a_stream_broken_off_is_transient(fake: FakeOpenAI) -> None:
    text = "A reply long enough to be cut in the middle of its events."
    fake.script(Reply(body=chat_completion(text), cut_after=300))
    with provider(fake, stream=True) as streamed, pytest.raises(ProviderUnavailable) as caught:
        streamed.complete(ask())
    assert is_transient(caught.value)
    assert "could not be reached" in str(caught.value) or "broke off" in str(caught.value)


@pytest.mark.parametrize(("kind", "transient"), [("server_error", True), ("invalid_request_error", False)])
def test_an_error_event_in_a_stream_is_transient_when_the_server_says_it_is_its_own(
    fake: FakeOpenAI, kind: str, transient: bool
) -> None:
    first = json.dumps(next(sse_chunks(chat_completion(), include_usage=False)))
    error = json.dumps({"error": {"message": "The stream failed.", "type": kind}})
    fake.script(Reply(events=[first, error]))
    expected = ProviderUnavailable if transient else PermanentError
    with provider(fake, stream=True) as streamed, pytest.raises(expected) as caught:
        streamed.complete(ask())
    assert is_transient(caught.value) is transient
    assert "sent an error: The stream failed." in str(caught.value)


@pytest.mark.parametrize("events", [["not json at all"], ["[DONE]"]], ids=["not-json", "no-chunk"])
def test_a_stream_that_is_not_chat_completion_chunks_is_a_permanent_error(fake: FakeOpenAI, events: list[str]) -> None:
    fake.script(Reply(events=events))
    with provider(fake, stream=True) as streamed, pytest.raises(MalformedCompletion) as caught:
        streamed.complete(ask())
    assert not is_transient(caught.value)
    assert caught.value.status_code == 200


def test_tools_and_a_tool_conversation_go_on_the_wire_as_openai_expects(fake: FakeOpenAI) -> None:
    first = ask(tools=(WEATHER,), tool_choice="weather")
    fake.script(Reply(body=chat_completion(None, tool_calls=CALLS[:1])))
    with provider(fake, stream=False) as live:
        answer = live.complete(first)
        follow_up = CompletionRequest(
            messages=(
                *first.messages,
                ChatMessage(role="assistant", tool_calls=answer.tool_calls),
                ChatMessage(role="tool", tool_call_id="call_1", content='{"sky": "clear"}'),
            ),
            tools=(WEATHER,),
        )
        assert live.complete(follow_up).text == "Hello from the fake."
    asked, followed = (r.body for r in fake.received)
    assert asked["tools"] == [{"type": "function", "function": {
        "name": "weather", "description": "Today's weather in a city.", "parameters": WEATHER.parameters}}]
    assert asked["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert followed["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [CALLS[0]]},
        {"role": "tool", "content": '{"sky": "clear"}', "tool_call_id": "call_1"},
    ]
    assert "tool_choice" not in followed


def test_complete_offers_tools_and_returns_the_calls_the_model_asked_for(fake: FakeOpenAI) -> None:
    fake.script(Reply(body=chat_completion(None, tool_calls=CALLS)))
    with provider(fake, stream=True) as live:
        completion = complete(live, system="You are the forecaster.", user="Lyon, Oslo?", tools=[WEATHER],
                              tool_choice="required")
    assert [c.name for c in completion.tool_calls] == ["weather", "weather"]
    [received] = fake.received
    assert received.body["tool_choice"] == "required" and len(received.body["tools"]) == 1


def test_tool_fields_change_the_fingerprint_only_when_used() -> None:
    plain = ask("héllo", model="m", max_tokens=5)
    # The pinned canonical form of a request without tools (tests/unit/test_llm_offline.py) is unchanged.
    canonical = '{"max_tokens":5,"messages":[{"content":"héllo","role":"user"}],"model":"m","temperature":0.0}'
    assert plain.fingerprint() == hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    assert ask("héllo", model="m", max_tokens=5, tools=(), tool_choice=None).fingerprint() == plain.fingerprint()
    with_tools = ask("héllo", model="m", max_tokens=5, tools=(WEATHER,))
    fingerprints = {
        plain.fingerprint(),
        with_tools.fingerprint(),
        ask("héllo", model="m", max_tokens=5, tools=(WEATHER,), tool_choice="auto").fingerprint(),
        ask("héllo", model="m", max_tokens=5, tools=(WEATHER.model_copy(update={"description": "x"}),)).fingerprint(),
    }
    assert len(fingerprints) == 4
    call = ToolCall(id="c", name="weather", arguments="{}")
    conversation = {
        CompletionRequest(messages=(ChatMessage(role="assistant", tool_calls=(call,)),)).fingerprint(),
        CompletionRequest(messages=(ChatMessage(role="assistant"),)).fingerprint(),
        CompletionRequest(messages=(ChatMessage(role="tool", tool_call_id="c"),)).fingerprint(),
        CompletionRequest(messages=(ChatMessage(role="tool", tool_call_id="d"),)).fingerprint(),
    }
    assert len(conversation) == 4


def test_tool_fields_that_cannot_work_are_refused_naming_the_problem() -> None:
    with pytest.raises(ValidationError, match="only an assistant message carries tool calls"):
        ChatMessage(role="user", tool_calls=(ToolCall(id="c", name="weather"),))
    with pytest.raises(ValidationError, match="a tool message names the call it answers"):
        ChatMessage(role="tool", content="42")
    with pytest.raises(ValidationError, match="tool_choice 'rain' is neither"):
        ask(tools=(WEATHER,), tool_choice="rain")
    with pytest.raises(ValidationError, match="tool_choice 'required' needs tools"):
        ask(tool_choice="required")
    with pytest.raises(ValidationError, match="name"):
        Tool(name="no spaces allowed")
    with pytest.raises(ValueError, match="tool call c of 'weather' has arguments that are not JSON"):
        ToolCall(id="c", name="weather", arguments="{city: Lyon").parsed_arguments()


@pytest.mark.parametrize("stream", [False, True], ids=["body", "streamed"])
def test_tool_calls_served_by_the_local_server_replay_identically_with_it_stopped(
    fake: FakeOpenAI, stream: bool
) -> None:
    recorded: list[Completion] = []
    questions = [ask("Weather in Lyon?", tools=(WEATHER,)), ask("And in Oslo?", tools=(WEATHER,))]
    fake.script(Reply(body=chat_completion(None, tool_calls=CALLS[:1])), Reply(body=chat_completion("Sunny.")))
    with provider(fake, stream) as live:
        chain = RecordingProvider(live, lambda _request, completion: recorded.append(completion))
        originals = [chain.complete(q) for q in questions]
    fake.stop()

    # The event log keeps completions as JSON; the replay is built from what it reads back.
    stored = [Completion.model_validate_json(c.model_dump_json()) for c in recorded]
    replay = ReplayProvider.standing_in_for(provider(fake, stream), {c.request_fingerprint: c for c in stored})
    assert [replay.complete(q) for q in questions] == originals
    assert originals[0].tool_calls == (ToolCall(id="call_1", name="weather", arguments='{"city": "Lyon"}'),)
    assert (replay.name, replay.model) == ("local", "fake-model")
