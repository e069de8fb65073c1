"""What every LLM provider is, and the one-call helper agents use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from relaybus.tasks.llm._models import ChatMessage, Completion, CompletionRequest, Tool


@runtime_checkable
class LLMProvider(Protocol):
    """Turns a chat request into a completion.

    Implementations raise :class:`~tasks.errors.ProviderUnavailable` (or a subclass) for failures
    that may pass and a :class:`~tasks.errors.PermanentError` for those that will not, so the task
    base's retry policy applies without knowing which provider is in use.

    ``name`` is the configured provider's name (``offline``, ``openai``, or a name from
    ``RELAYBUS_LLM_PROVIDERS``) and ``model`` the model it asks for when a request names none: both
    are known before any call, so a wrapper can key limits and prices on them
    (:func:`model_for` gives the model one request will use). A wrapper takes an ``inner`` provider
    and copies both (see :class:`~tasks.llm.RecordingProvider`).
    """

    name: str
    model: str

    def complete(self, request: CompletionRequest) -> Completion: ...


def complete(
    provider: LLMProvider,
    *,
    user: str,
    system: str | None = None,
    model: str | None = None,
    temperature: float = 0.0,
    max_tokens: int | None = None,
    tools: Sequence[Tool] = (),
    tool_choice: str | None = None,
) -> Completion:
    """Ask ``provider`` one question: an optional system prompt and one user message, optionally offering
    ``tools`` (the completion's ``tool_calls`` then say which the model wants called)."""
    messages: list[ChatMessage] = []
    if system is not None:
        messages.append(ChatMessage(role="system", content=system))
    messages.append(ChatMessage(role="user", content=user))
    request = CompletionRequest(
        messages=tuple(messages),
        model=model,
        temperature=temperature,
        max_tokens=max_tokens,
        tools=tuple(tools),
        tool_choice=tool_choice,
    )
    return provider.complete(request)


def model_for(provider: LLMProvider, request: CompletionRequest) -> str:
    """The model ``request`` will be served by: its own when it names one, else the provider's."""
    return request.model or provider.model
