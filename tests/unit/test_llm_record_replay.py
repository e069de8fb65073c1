"""Recording completions through a hook, and replaying them with the provider switched off."""

from __future__ import annotations

import pickle

import pytest

from relaybus.tasks.errors import PermanentError, is_transient
from relaybus.tasks.llm import (
    ChatMessage,
    Completion,
    CompletionNotRecorded,
    CompletionRequest,
    LLMProvider,
    OfflineProvider,
    RecordingProvider,
    ReplayProvider,
    complete,
)


def ask(text: str, system: str = "You are the researcher.") -> CompletionRequest:
    return CompletionRequest(
        messages=(ChatMessage(role="system", content=system), ChatMessage(role="user", content=text))
    )


class SwitchedOff:
    """A provider that fails the test if anything reaches it."""

    name = "switched-off"
    model = "none"

    def __init__(self) -> None:
        self.calls = 0

    def complete(self, request: CompletionRequest) -> Completion:
        self.calls += 1
        raise AssertionError("replay reached the provider")


class Failing:
    name = "failing"
    model = "none"

    def complete(self, request: CompletionRequest) -> Completion:
        raise PermanentError("boom")


class Log:
    def __init__(self) -> None:
        self.entries: list[tuple[CompletionRequest, Completion]] = []

    def __call__(self, request: CompletionRequest, completion: Completion) -> None:
        self.entries.append((request, completion))


def test_recording_provider_calls_the_hook_after_each_completion() -> None:
    log = Log()
    provider = RecordingProvider(OfflineProvider(), log)
    first = provider.complete(ask("What is a saga?"))
    second = complete(provider, system="You are the writer.", user="Write about sagas.")
    assert [c for _, c in log.entries] == [first, second]
    assert log.entries[0][0] == ask("What is a saga?")
    assert provider.name == "offline"
    assert isinstance(provider, LLMProvider)


def test_a_failed_call_records_nothing() -> None:
    log = Log()
    with pytest.raises(PermanentError, match="boom"):
        RecordingProvider(Failing(), log).complete(ask("x"))
    assert log.entries == []


def test_an_error_in_the_hook_is_not_swallowed() -> None:
    def broken_log(request: CompletionRequest, completion: Completion) -> None:
        raise RuntimeError("event store down")

    with pytest.raises(RuntimeError, match="event store down"):
        RecordingProvider(OfflineProvider(), broken_log).complete(ask("x"))


def test_a_recorded_run_replays_identically_with_the_provider_switched_off() -> None:
    log = Log()
    live = RecordingProvider(OfflineProvider(), log)
    questions = [
        ask("What is a dead-letter queue?"),
        ask("Why idempotency?"),
        ask("Chords?", "You are the planner."),
    ]
    originals = [live.complete(q) for q in questions]

    # The event log stores completions as JSON; replay from what it would read back.
    stored = [Completion.model_validate_json(c.model_dump_json()) for _, c in log.entries]
    off = SwitchedOff()
    replay = ReplayProvider.from_completions(stored, fallback=off)
    assert [replay.complete(q) for q in questions] == originals
    assert off.calls == 0
    assert len(replay) == 3


def test_a_missing_recording_without_fallback_is_a_permanent_error_naming_the_fingerprint() -> None:
    replay = ReplayProvider({})
    request = ask("never recorded")
    with pytest.raises(CompletionNotRecorded) as caught:
        replay.complete(request)
    assert caught.value.fingerprint == request.fingerprint()
    assert request.fingerprint() in str(caught.value)
    assert isinstance(caught.value, PermanentError)
    assert not is_transient(caught.value)


def test_a_missing_recording_goes_to_the_fallback() -> None:
    recorded = OfflineProvider().complete(ask("recorded"))
    replay = ReplayProvider({recorded.request_fingerprint: recorded}, fallback=OfflineProvider(model="live"))
    assert replay.complete(ask("recorded")).model == "offline-echo"
    fresh = replay.complete(ask("not recorded"))
    assert fresh.model == "live"
    assert fresh.text.startswith("researcher: not recorded")


def test_a_completion_filed_under_another_fingerprint_is_refused() -> None:
    completion = OfflineProvider().complete(ask("a"))
    with pytest.raises(ValueError, match="answers request"):
        ReplayProvider({ask("b").fingerprint(): completion})


def test_replay_is_not_changed_by_later_edits_to_the_mapping_it_was_given() -> None:
    completion = OfflineProvider().complete(ask("a"))
    recorded = {completion.request_fingerprint: completion}
    replay = ReplayProvider(recorded)
    recorded.clear()
    assert replay.complete(ask("a")) == completion


def test_completion_not_recorded_survives_pickling() -> None:
    error = CompletionNotRecorded("abc123")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is CompletionNotRecorded
    assert copy.fingerprint == "abc123"
    assert str(copy) == str(error)
