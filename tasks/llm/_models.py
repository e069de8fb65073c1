"""The messages that cross the provider boundary: a chat request and the completion it produced.

A request may offer the model tools (functions it can ask to call, :class:`Tool`); a completion then
carries the calls it asked for (:class:`ToolCall`), which the agent runs and answers with ``tool``
messages. Tool calls are recorded and replayed like text: their arguments are kept as the JSON text
the model wrote, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ToolCall(_Frozen):
    """A call of one of the request's tools that the model asked for."""

    #: The provider's id for the call; the ``tool`` message that answers it names it.
    id: str
    name: str
    #: The arguments as the JSON text the model wrote (it may be invalid JSON: models make mistakes).
    arguments: str = "{}"

    def parsed_arguments(self) -> Any:
        """The arguments as JSON values; raises ``ValueError`` naming the tool when they are not JSON."""
        try:
            return json.loads(self.arguments)
        except ValueError as exc:
            raise ValueError(f"tool call {self.id} of {self.name!r} has arguments that are not JSON: {exc}") from None


class Tool(_Frozen):
    """A function the model may ask to call: its name, what it does, and its parameters as JSON Schema."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ChatMessage(_Frozen):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    #: On an assistant message: the tool calls it made (a conversation sent back with their answers).
    tool_calls: tuple[ToolCall, ...] = ()
    #: On a tool message: the id of the call it answers.
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _tool_fields_fit_the_role(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"only an assistant message carries tool calls, not a {self.role} message")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("a tool message names the call it answers (tool_call_id), and only a tool message does")
        return self


#: Fields added after recordings existed: left out of the fingerprint while they hold their default, so
#: the requests that do not use them keep the fingerprints they were recorded under.
_LATER_REQUEST_FIELDS: dict[str, Any] = {"tools": [], "tool_choice": None}
_LATER_MESSAGE_FIELDS: dict[str, Any] = {"tool_calls": [], "tool_call_id": None}


class CompletionRequest(_Frozen):
    messages: tuple[ChatMessage, ...] = Field(min_length=1)
    #: ``None`` lets the provider use its configured model.
    model: str | None = None
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, gt=0)
    #: Functions the model may call.
    tools: tuple[Tool, ...] = ()
    #: ``auto`` (the model decides), ``none``, ``required``, or the name of one tool it must call;
    #: ``None`` leaves it to the provider.
    tool_choice: str | None = None

    @model_validator(mode="after")
    def _tool_choice_names_a_tool(self) -> CompletionRequest:
        choice = self.tool_choice
        if choice is not None and choice not in ("auto", "none", "required", *(t.name for t in self.tools)):
            raise ValueError(f"tool_choice {choice!r} is neither auto, none, required nor one of the tools")
        if choice in ("auto", "required") and not self.tools:
            raise ValueError(f"tool_choice {choice!r} needs tools")
        return self

    def fingerprint(self) -> str:
        """A stable id for this request: the sha256 of its canonical JSON.

        Recorded completions are matched to requests by it, so it must not change between
        processes or releases: keys sorted, no whitespace, UTF-8 kept as is. A test pins one value.
        Fields added later (tools) count only when they are used, so older recordings still match.
        """
        data = self.model_dump(mode="json")
        _drop_unused(data, _LATER_REQUEST_FIELDS)
        for message in data["messages"]:
            _drop_unused(message, _LATER_MESSAGE_FIELDS)
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _drop_unused(data: dict[str, Any], defaults: dict[str, Any]) -> None:
    for key, default in defaults.items():
        if data.get(key) == default:
            del data[key]


class Usage(_Frozen):
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)


class Completion(_Frozen):
    text: str
    model: str
    #: The :attr:`LLMProvider.name` that produced the text (``offline``, ``openai``, a configured name).
    provider: str
    usage: Usage = Field(default_factory=Usage)
    request_fingerprint: str
    #: The tools the model asked to call (then ``text`` is often empty).
    tool_calls: tuple[ToolCall, ...] = ()
    #: Why the model stopped (``stop``, ``length``, ``tool_calls``...), when the provider said.
    finish_reason: str | None = None
