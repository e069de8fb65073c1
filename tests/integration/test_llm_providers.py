"""Named LLM providers in real workers: an agent served through the openai SDK by a local OpenAI-compatible
server (tests.fake_openai, streamed), its completions recorded, and replayed with the server stopped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from relaybus.eventstore import open_store
from relaybus.tasks.llm import ProviderConfig
from relaybus.tasks.runtime.context import workflow_context
from tests.fake_openai import FakeOpenAI, Reply, chat_completion, serving
from tests.harness import make_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    yield from serving()


@pytest.fixture
def settings(tmp_path, broker_url, redis_url, fake):  # overrides conftest's: intake on the local server
    local = ProviderConfig(kind="openai", base_url=fake.base_url, model="local-model", stream=True)
    return make_settings(tmp_path, broker_url, redis_url, max_retries=0,
                         llm_providers={"local": local}, llm_agent_providers={"intake": "local"})


def test_an_agent_on_a_named_sdk_provider_is_recorded_and_replays_with_the_server_stopped(
    app, settings, start_worker, fake
):
    fake.default = Reply(body=chat_completion("Sagas undo completed steps in reverse.", usage=(21, 7)))
    start_worker("intake")
    intake = app.tasks["agents.intake"]
    request = "How do sagas undo the steps that completed?"
    with workflow_context() as original:
        first = intake.apply_async(kwargs={"request": request}).get(timeout=60)
    assert first["summary"] == "Sagas undo completed steps in reverse."
    [received] = fake.received
    assert received.body["model"] == "local-model"
    assert received.body["stream"] is True and received.body["stream_options"] == {"include_usage": True}

    fake.stop()  # from here on, any real call fails (connection refused)
    with workflow_context():
        control = intake.apply_async(kwargs={"request": request})
    with pytest.raises(Exception, match=r"ProviderUnavailable|could not be reached"):
        control.get(timeout=60)

    with workflow_context(llm_replay_of=original) as replayed:
        again = intake.apply_async(kwargs={"request": request}).get(timeout=60)
    assert again == first
    assert len(fake.received) == 1  # nothing reached the server after it stopped

    store = open_store(settings.eventstore_url)
    try:
        [completed] = [e for e in store.by_correlation(original) if e.type == "llm.completed"]
        completion = completed.payload["completion"]
        assert (completion["provider"], completion["model"]) == ("local", "fake-model-0613")
        assert completion["usage"] == {"prompt_tokens": 21, "completion_tokens": 7}
        assert store.diff(original, replayed).identical
        assert any(e.type == "llm.completed" for e in store.by_correlation(replayed))
    finally:
        store.close()
