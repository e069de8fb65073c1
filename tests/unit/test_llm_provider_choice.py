"""Named LLM providers: which ones the settings describe, which one each agent gets, and the chain around it."""

from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

import pytest
from celery import Celery
from pydantic import SecretStr, ValidationError

from relaybus.settings import Settings
from relaybus.tasks.errors import PermanentError, ProviderUnavailable, is_transient
from relaybus.tasks.llm import (
    ChatMessage,
    CompletionRequest,
    LLMConfig,
    LLMProvider,
    OfflineProvider,
    OpenAICompatibleProvider,
    ProviderConfig,
    ProviderOverloaded,
    RecordingProvider,
    UnknownProvider,
    build_provider,
    model_for,
)
from relaybus.tasks.runtime.config import RuntimeConfig, llm_choice_problems, llm_provider, resources
from relaybus.tasks.runtime.recording import NullRecorder
from relaybus.tasks.runtime.task import AgentContext, AgentModel, AgentSpec, AgentTask, agent

SECRET = "sk-choice-test-0a1b2c3d"


def fast() -> ProviderConfig:
    return ProviderConfig(kind="openai", base_url="http://127.0.0.1:9/v1", model="small-1", api_key=SecretStr(SECRET))


def app_with(llm: LLMConfig | ProviderConfig) -> Celery:
    app = Celery("choice-test", set_as_current=False)
    app.conf.relaybus_runtime = RuntimeConfig(llm=llm)  # type: ignore[arg-type]  # a ProviderConfig is accepted
    return app


def test_the_default_settings_give_only_the_offline_provider() -> None:
    config = Settings().llm_config()
    assert list(config.providers) == ["offline"]
    assert config.default == "offline"
    assert config.choose("intake") == "offline"


def test_the_single_provider_settings_keep_working_under_the_name_of_their_kind() -> None:
    settings = Settings(llm_provider="openai", llm_model="gpt-x", llm_base_url="http://127.0.0.1:9/v1")
    config = settings.llm_config()
    assert config.default == "openai"
    assert config.providers["openai"].model == "gpt-x"
    assert "offline" in config.providers  # always there, for agents pinned to it
    provider = build_provider(config.providers["openai"], "openai")
    assert isinstance(provider, OpenAICompatibleProvider)
    assert (provider.name, provider.model) == ("openai", "gpt-x")


def test_the_operator_choice_wins_over_the_agents_own_which_wins_over_the_default() -> None:
    config = LLMConfig(
        providers={"fast": fast(), "careful": fast().model_copy(update={"model": "large-2"})},
        default="fast",
        agents={"reviewer": "careful"},
    )
    assert config.choose("reviewer", declared="offline") == "careful"
    assert config.choose("writer", declared="offline") == "offline"
    assert config.choose("writer") == "fast"
    assert config.choose(None) == "fast"


def test_an_agent_asking_for_an_unconfigured_provider_gets_a_permanent_error_naming_both() -> None:
    config = LLMConfig(providers={"fast": fast()}, default="fast")
    with pytest.raises(UnknownProvider) as caught:
        config.choose("writer", declared="slow")
    error = caught.value
    assert isinstance(error, PermanentError) and not is_transient(error)
    assert "agent 'writer' asks for LLM provider 'slow'" in str(error)
    assert "configured: offline, fast" in str(error)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.name, copy.agent, copy.configured, str(copy)) == ("slow", "writer", ("offline", "fast"), str(error))


def test_settings_refuse_a_default_or_an_agent_choice_that_names_no_provider() -> None:
    with pytest.raises(ValidationError, match="default LLM provider 'fast' is not configured"):
        Settings(llm_default_provider="fast")
    with pytest.raises(ValidationError, match="agent 'intake' is given LLM provider 'nope'"):
        Settings(llm_agent_providers="intake=nope")
    with pytest.raises(ValidationError, match="'intake' is not agent=provider"):
        Settings(llm_agent_providers="intake")
    with pytest.raises(ValidationError, match="provider name"):
        Settings(llm_providers={"a b": {"kind": "offline"}})
    with pytest.raises(ValidationError, match="needs a model"):
        Settings(llm_providers={"fast": {"kind": "openai"}})


def test_named_providers_come_from_the_environment_as_json_and_go_back_to_it_with_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    providers = {"fast": {"kind": "openai", "model": "small-1", "api_key": SECRET}}
    monkeypatch.setenv("RELAYBUS_LLM_PROVIDERS", json.dumps(providers))
    monkeypatch.setenv("RELAYBUS_LLM_DEFAULT_PROVIDER", "fast")
    monkeypatch.setenv("RELAYBUS_LLM_AGENT_PROVIDERS", "reviewer=offline, writer=fast")
    settings = Settings()
    config = settings.llm_config()
    assert config.default == "fast"
    assert config.agents == {"reviewer": "offline", "writer": "fast"}
    assert config.providers["fast"].api_key is not None
    assert config.providers["fast"].api_key.get_secret_value() == SECRET
    assert SECRET not in repr(settings) and SECRET not in str(config)

    # A worker process gets the same settings through to_env (tests.harness, relaybus.workers).
    env = settings.to_env()
    assert json.loads(env["RELAYBUS_LLM_PROVIDERS"])["fast"]["api_key"] == SECRET
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings().llm_config() == config
    monkeypatch.setenv("RELAYBUS_LLM_AGENT_PROVIDERS", '{"writer": "offline"}')
    assert Settings().llm_config().agents == {"writer": "offline"}


def test_a_provider_config_shows_neither_its_key_nor_a_password_in_its_url() -> None:
    config = fast().model_copy(update={"base_url": "https://user:hunter2pass@llm.internal/v1"})
    shown = repr(RuntimeConfig(llm=LLMConfig(providers={"fast": config})))
    assert "hunter2pass" not in shown and SECRET not in shown
    assert "llm.internal" in shown


def test_a_runtime_config_takes_a_single_provider_config_as_before() -> None:
    config = RuntimeConfig(llm=fast())  # type: ignore[arg-type]
    assert config.llm.default == "openai"
    assert set(config.llm.providers) == {"offline", "openai"}


def test_llm_provider_builds_one_provider_per_name_and_process_with_its_name_and_model() -> None:
    resources().clear()
    app = app_with(LLMConfig(providers={"fast": fast()}, default="offline", agents={"writer": "fast"}))
    writer = llm_provider(app, "writer")
    assert isinstance(writer, OpenAICompatibleProvider)
    assert (writer.name, writer.model) == ("fast", "small-1")
    assert llm_provider(app, "reviewer", declared="fast") is writer
    default = llm_provider(app, "intake")
    assert isinstance(default, OfflineProvider) and default.name == "offline"
    assert llm_provider(app) is default
    with pytest.raises(UnknownProvider):
        llm_provider(app, "intake", declared="missing")


class Question(AgentModel):
    text: str


class Answer(AgentModel):
    text: str


def answer(inp: Question, ctx: AgentContext) -> Answer:
    return Answer(text=inp.text)


def unused_run() -> None:
    """The body is AgentTask.__call__."""


def agent_task(app: Celery, name: str, llm: str | None) -> AgentTask:
    """An agent task registered on ``app`` only (not shared with every app the test process makes)."""
    task: AgentTask = app.task(
        name=f"agents.{name}", base=AgentTask, spec=AgentSpec(name, Question, Answer, answer, llm=llm), bind=False,
        shared=False,
    )(unused_run)
    return task


@agent("choice_test_pinned", input=Question, output=Answer, llm="offline")
def pinned(inp: Question, ctx: AgentContext) -> Answer:
    return answer(inp, ctx)


def test_the_agent_decorator_keeps_the_declared_provider() -> None:
    assert pinned.spec.llm == "offline"
    assert pinned.spec.name == "choice_test_pinned"


def test_an_agent_declares_its_provider_and_every_stage_of_its_chain_shows_that_name_and_model() -> None:
    resources().clear()
    # Offline providers under two names: the chain is exercised without a network.
    app = app_with(LLMConfig(providers={"quick": ProviderConfig(), "spare": ProviderConfig()}, default="spare"))
    task = agent_task(app, "choice_test_quick", llm="quick")
    recorder = NullRecorder()
    request = SimpleNamespace(id="t-1", retries=0, delivery_info={})
    chain = task._llm(request, {}, recorder)
    assert isinstance(chain, RecordingProvider) and isinstance(chain, LLMProvider)
    assert (chain.name, chain.model) == ("quick", "offline-echo")
    question = CompletionRequest(messages=(ChatMessage(role="user", content="Which provider?"),))
    assert model_for(chain, question) == "offline-echo"
    assert model_for(chain, question.model_copy(update={"model": "other"})) == "other"
    completion = chain.complete(question)
    assert completion.provider == "quick"

    # On a deterministic replay the recorded answers stand in for the provider, under its name and model.
    replayed = task._llm(request, {"x_llm_replay_of": "original"}, recorder)
    assert (replayed.name, replayed.model) == ("quick", "offline-echo")


def test_a_worker_names_the_agents_that_ask_for_a_provider_not_configured() -> None:
    app = app_with(LLMConfig(providers={"quick": ProviderConfig()}))
    agent_task(app, "choice_test_ok", llm="quick")
    agent_task(app, "choice_test_default", llm=None)
    agent_task(app, "choice_test_ghost", llm="ghost")
    assert llm_choice_problems(app) == [
        "agent 'choice_test_ghost' asks for LLM provider 'ghost', which is not configured (configured: offline, "
        "quick); add it to RELAYBUS_LLM_PROVIDERS or change the agent's choice"
    ]
    # The operator's choice for that agent repairs it.
    fixed = app_with(LLMConfig(providers={"quick": ProviderConfig()}, agents={"choice_test_ghost": "quick"}))
    agent_task(fixed, "choice_test_ghost", llm="ghost")
    assert llm_choice_problems(fixed) == []


def test_a_retry_waits_what_an_overloaded_provider_asks_within_the_backoff_cap() -> None:
    config = RuntimeConfig(retry_backoff_s=1.0, retry_backoff_max_s=60.0, retry_jitter=False)
    assert config.retry_countdown(0, ProviderUnavailable("down")) == 1.0
    assert config.retry_countdown(0, ProviderOverloaded("busy", 429, retry_after=7.0)) == 7.0
    assert config.retry_countdown(3, ProviderOverloaded("busy", 429, retry_after=2.0)) == 8.0  # backoff is longer
    assert config.retry_countdown(0, ProviderOverloaded("busy", 429, retry_after=3600.0)) == 60.0
    assert config.retry_countdown(0, ProviderOverloaded("busy", 503)) == 1.0
