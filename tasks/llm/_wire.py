"""Our requests and completions in OpenAI's chat-completions JSON, both ways, and the check of an answer.

The answer is validated here with our own models (extras ignored: servers add fields freely), whether
it came as one body or was assembled from a stream by the SDK, so both paths refuse the same garbage
the same way (a ``ValidationError``, which the provider turns into ``MalformedCompletion``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from relaybus.tasks.llm._models import ChatMessage, Completion, CompletionRequest, ToolCall, Usage

_CHOICES = ("auto", "none", "required")


def request_body(request: CompletionRequest, model: str) -> dict[str, Any]:
    """The JSON body (as keyword arguments of the SDK's ``create``) for ``request`` asking ``model``."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [_message(m) for m in request.messages],
        "temperature": request.temperature,
    }
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    **({"description": t.description} if t.description else {}),
                    "parameters": t.parameters,
                },
            }
            for t in request.tools
        ]
    if request.tool_choice is not None:
        choice = request.tool_choice
        body["tool_choice"] = (
            choice if choice in _CHOICES else {"type": "function", "function": {"name": choice}}
        )
    return body


def _message(message: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["content"] = message.content or None  # an assistant turn that only called tools
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Function(_Wire):
    name: str
    arguments: str = ""


class _ToolCall(_Wire):
    id: str
    function: _Function


class _Message(_Wire):
    content: str | None = None
    tool_calls: list[_ToolCall] | None = None

    @model_validator(mode="after")
    def _says_something(self) -> _Message:
        if self.content is None and not self.tool_calls:
            raise ValueError("content is null and there are no tool calls")
        return self


class _Choice(_Wire):
    message: _Message
    finish_reason: str | None = None


class _Usage(_Wire):
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)


class _ChatResponse(_Wire):
    """The part of a chat-completions answer we use."""

    model: str | None = None
    choices: list[_Choice] = Field(min_length=1)
    # Several compatible servers leave usage out (or a stream without include_usage): zero is the honest
    # "not reported".
    usage: _Usage | None = None


def completion_from_body(content: bytes, request: CompletionRequest, model: str, provider: str) -> Completion:
    """The completion in a chat-completions JSON body; raises pydantic's ``ValidationError`` if it is not one."""
    return _completion(_ChatResponse.model_validate_json(content), request, model, provider)


def completion_from_stream(
    chunks: Iterable[Any], request: CompletionRequest, model: str, provider: str
) -> Completion:
    """The completion assembled from a stream of the SDK's ``ChatCompletionChunk``: text and tool calls
    joined by the SDK's own accumulator, usage from the last chunk, then checked as a body would be."""
    from openai.lib.streaming.chat import ChatCompletionStreamState

    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    seen = 0
    for chunk in chunks:
        state.handle_chunk(chunk)
        seen += 1
    if not seen:
        # Validated like a body without choices, so it reads like any other malformed answer.
        return completion_from_body(b'{"choices": []}', request, model, provider)
    final = state.get_final_completion()
    return _completion(_ChatResponse.model_validate(final.model_dump(mode="json")), request, model, provider)


def _completion(parsed: _ChatResponse, request: CompletionRequest, model: str, provider: str) -> Completion:
    choice = parsed.choices[0]
    usage = parsed.usage or _Usage()
    return Completion(
        text=choice.message.content or "",
        model=parsed.model or model,
        provider=provider,
        usage=Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens),
        request_fingerprint=request.fingerprint(),
        tool_calls=tuple(
            ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
            for c in choice.message.tool_calls or ()
        ),
        finish_reason=choice.finish_reason,
    )
