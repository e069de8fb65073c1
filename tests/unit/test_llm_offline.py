"""The offline provider, the request models and the one-call helper."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from relaybus.tasks.llm import (
    ChatMessage,
    Completion,
    CompletionRequest,
    LLMProvider,
    OfflineProvider,
    ProviderConfig,
    build_provider,
    complete,
)

BRIEF = (
    "Explain how RabbitMQ priority queues interact with Celery prefetch. "
    "Readers want to know when priorities help. "
    "This third sentence must not appear in the summary."
)


def request(
    user: str = BRIEF, system: str | None = "You are the planner.", **kwargs: object
) -> CompletionRequest:
    messages = [ChatMessage(role="user", content=user)]
    if system is not None:
        messages.insert(0, ChatMessage(role="system", content=system))
    return CompletionRequest(messages=tuple(messages), **kwargs)


class ScriptedProvider:
    """Captures the request and answers a fixed text: a fake injected, not patched."""

    name = "scripted"
    model = "m"

    def __init__(self) -> None:
        self.requests: list[CompletionRequest] = []

    def complete(self, request: CompletionRequest) -> Completion:
        self.requests.append(request)
        return Completion(text="ok", model="m", provider=self.name, request_fingerprint=request.fingerprint())


def test_same_request_gives_the_same_completion_every_time() -> None:
    provider = OfflineProvider()
    first = provider.complete(request())
    again = OfflineProvider().complete(request())
    assert first == again
    assert first.provider == "offline"
    assert first.request_fingerprint == request().fingerprint()


def test_text_is_role_summary_key_terms_and_tag() -> None:
    req = request()
    text = OfflineProvider().complete(req).text
    assert text == (
        "planner: Explain how RabbitMQ priority queues interact with Celery prefetch. "
        "Readers want to know when priorities help. "
        "Key terms: explain, rabbitmq, priority, queues, interact. "
        f"#{req.fingerprint()[:8]}"
    )
    assert "third sentence" not in text


@pytest.mark.parametrize(
    ("system", "role"),
    [
        ("You are the intake agent. Summarise the request in one sentence.", "intake"),
        ("You are the reviewer for the content pipeline.", "reviewer"),
        ("You are a senior technical writer who writes short articles.", "writer"),
        ("You are a helpful assistant.", "assistant"),
        ("Publisher: format the article.", "publisher"),
        (None, "assistant"),
    ],
)
def test_role_comes_from_the_system_prompt(system: str | None, role: str) -> None:
    assert OfflineProvider().complete(request(system=system)).text.startswith(f"{role}: ")


def test_key_terms_rank_by_frequency_then_first_appearance() -> None:
    text = (
        OfflineProvider()
        .complete(request(user="Sagas need compensation. Sagas and sagas, compensation!"))
        .text
    )
    assert "Key terms: sagas, compensation, need." in text


def test_a_different_temperature_or_model_changes_the_tag_only() -> None:
    base = OfflineProvider().complete(request()).text
    warmer = OfflineProvider().complete(request(temperature=0.7)).text
    other_model = OfflineProvider().complete(request(model="big-model"))
    assert base.rsplit(" ", 1)[0] == warmer.rsplit(" ", 1)[0]
    assert base != warmer
    assert other_model.model == "big-model"
    assert other_model.text != base


def test_empty_user_message_says_there_was_no_input() -> None:
    assert OfflineProvider().complete(request(user="   ")).text.startswith("planner: (no input) #")


def test_long_first_sentence_is_cut_at_a_word() -> None:
    user = " ".join(["word"] * 200) + "."
    text = OfflineProvider().complete(request(user=user, system=None)).text
    summary = text.removeprefix("assistant: ").split(" Key terms")[0]
    assert summary.endswith("…")
    assert len(summary) <= 241
    assert "wor…" not in summary


def test_max_tokens_cuts_the_text_and_usage_counts_words() -> None:
    completion = OfflineProvider().complete(request(max_tokens=4))
    assert completion.text == "planner: Explain how RabbitMQ"
    assert completion.usage.completion_tokens == 4
    assert completion.usage.prompt_tokens == len(["You", "are", "the", "planner."]) + len(BRIEF.split())


def test_model_defaults_to_the_providers_own() -> None:
    assert OfflineProvider().complete(request()).model == "offline-echo"
    assert OfflineProvider(model="demo").complete(request()).model == "demo"


def test_fingerprint_is_pinned_so_recordings_stay_valid_across_releases() -> None:
    req = CompletionRequest(messages=(ChatMessage(role="user", content="héllo"),), model="m", max_tokens=5)
    canonical = (
        '{"max_tokens":5,"messages":[{"content":"héllo","role":"user"}],"model":"m","temperature":0.0}'
    )
    assert req.fingerprint() == hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    assert req.fingerprint() == "b4bd00036a24c89af3d5af378e700cd54541586865a45f96a73868755df16cb9"


def test_fingerprint_depends_on_every_field_and_on_message_order() -> None:
    a = ChatMessage(role="user", content="a")
    b = ChatMessage(role="assistant", content="b")
    fingerprints = {
        CompletionRequest(messages=(a, b)).fingerprint(),
        CompletionRequest(messages=(b, a)).fingerprint(),
        CompletionRequest(messages=(a, b), model="m").fingerprint(),
        CompletionRequest(messages=(a, b), temperature=0.5).fingerprint(),
        CompletionRequest(messages=(a, b), max_tokens=10).fingerprint(),
        CompletionRequest(messages=(a, ChatMessage(role="user", content="b"))).fingerprint(),
    }
    assert len(fingerprints) == 6
    assert (
        CompletionRequest(messages=(a, b), temperature=0).fingerprint()
        == CompletionRequest(messages=(a, b)).fingerprint()
    )


def test_offline_text_is_the_same_in_other_processes_whatever_the_hash_seed() -> None:
    code = (
        "from relaybus.tasks.llm import OfflineProvider, complete;"
        "print(complete(OfflineProvider(), system='You are the writer.', user="
        f"{BRIEF!r}).text)"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert outputs == {complete(OfflineProvider(), system="You are the writer.", user=BRIEF).text + "\n"}


def test_models_are_frozen_and_reject_unknown_fields() -> None:
    with pytest.raises(ValidationError):
        ChatMessage(role="robot", content="x")
    with pytest.raises(ValidationError):
        ChatMessage(role="user", content="x", name="bob")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        CompletionRequest(messages=())
    with pytest.raises(ValidationError):
        request(max_tokens=0)
    message = ChatMessage(role="user", content="x")
    with pytest.raises(ValidationError):
        message.content = "y"  # type: ignore[misc]


def test_complete_helper_sends_an_optional_system_prompt_and_one_user_message() -> None:
    provider = ScriptedProvider()
    assert (
        complete(provider, system="You are the writer.", user="Write.", model="m", max_tokens=9).text == "ok"
    )
    complete(provider, user="Only a user message.", temperature=0.3)
    with_system, without = provider.requests
    assert [m.role for m in with_system.messages] == ["system", "user"]
    assert with_system.messages[1].content == "Write."
    assert (with_system.model, with_system.max_tokens) == ("m", 9)
    assert [m.role for m in without.messages] == ["user"]
    assert without.temperature == 0.3


def test_offline_is_the_default_provider_and_satisfies_the_protocol() -> None:
    provider = build_provider(ProviderConfig())
    assert isinstance(provider, OfflineProvider)
    assert isinstance(provider, LLMProvider)
    # The configured model names the remote one; offline completions never claim to come from it.
    offline = build_provider(ProviderConfig(kind="offline", model="gpt-4o-mini"))
    assert isinstance(offline, OfflineProvider)
    assert complete(offline, user="hi").model == "offline-echo"
