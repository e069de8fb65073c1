"""Which providers exist, which one each agent uses, as data; and the one place that builds a provider.

A deployment configures named providers (:class:`LLMConfig`): ``{"fast": ProviderConfig(...),
"careful": ProviderConfig(...)}``, a default, and optionally a provider per agent. An agent may
declare the provider it wants in code (``@agent(..., llm="fast")``); the operator's per-agent
setting wins over that, and the default serves every agent that names none. The offline provider
is always there under the name ``offline``, so ``llm="offline"`` pins an agent to deterministic text.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from relaybus.eventstore.redaction import mask_url_passwords
from relaybus.tasks.llm._errors import UnknownProvider
from relaybus.tasks.llm._provider import LLMProvider

#: The name the offline provider always answers to.
OFFLINE = "offline"


class ProviderConfig(BaseModel):
    """``kind="offline"`` needs nothing else; ``kind="openai"`` needs at least a ``model``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["offline", "openai"] = "offline"
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str | None = None
    api_key: SecretStr | None = None
    timeout_s: float = Field(default=30.0, gt=0)
    #: The SDK's in-process retries of transport errors, 429 and 5xx. 0: the task base retries instead
    #: (recorded, backed off, no sleeping worker; see OpenAICompatibleProvider).
    max_retries: int = Field(default=0, ge=0, le=10)
    #: Consume the answer as a stream (server-sent events); the completion recorded is the same.
    stream: bool = False

    def __repr_args__(self) -> Any:
        # ``celery inspect conf`` shows the runtime config's repr: the key is a SecretStr, a URL may hold a password.
        for name, value in super().__repr_args__():
            yield name, mask_url_passwords(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _openai_names_a_model(self) -> ProviderConfig:
        if self.kind == "openai" and not self.model:
            raise ValueError("an openai provider needs a model name")
        return self


class LLMConfig(BaseModel):
    """The named providers, the default one, and the operator's choice per agent."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    providers: dict[str, ProviderConfig] = Field(default_factory=lambda: {OFFLINE: ProviderConfig()})
    default: str = OFFLINE
    #: Agent name → provider name, set by the operator; wins over what the agent declares.
    agents: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _one_provider_is_a_whole_config(cls, data: Any) -> Any:
        # A bare ProviderConfig (what RuntimeConfig.llm held before providers had names) is one provider,
        # named after its kind, and the default.
        if isinstance(data, ProviderConfig):
            data = {"providers": {data.kind: data}, "default": data.kind}
        if isinstance(data, dict) and isinstance(data.get("providers"), dict) and OFFLINE not in data["providers"]:
            # Always there: an agent pinned to ``offline`` must not depend on what else is configured.
            data = {**data, "providers": {OFFLINE: ProviderConfig(), **data["providers"]}}
        return data

    @model_validator(mode="after")
    def _names_are_known(self) -> LLMConfig:
        for name in self.providers:
            if not name or not all(c.isalnum() or c in "-_." for c in name):
                raise ValueError(f"provider name {name!r} must be non-empty and use only letters, digits, '-_.'")
        known = ", ".join(self.providers)
        if self.default not in self.providers:
            raise ValueError(f"default LLM provider {self.default!r} is not configured (configured: {known})")
        for agent, name in self.agents.items():
            if name not in self.providers:
                raise ValueError(f"agent {agent!r} is given LLM provider {name!r}, which is not configured "
                                 f"(configured: {known})")
        return self

    def choose(self, agent: str | None = None, declared: str | None = None) -> str:
        """The provider name ``agent`` uses: the operator's setting, else what it ``declared``, else the default.

        Raises :class:`UnknownProvider` when the agent declared a name that is not configured.
        """
        name = self.agents.get(agent) if agent is not None else None
        name = name or declared or self.default
        if name not in self.providers:
            raise UnknownProvider(name, agent, tuple(self.providers))
        return name


def build_provider(config: ProviderConfig, name: str | None = None) -> LLMProvider:
    """The provider ``config`` describes, answering to ``name`` (its kind when not given).

    ``name`` is what completions record as their ``provider`` and what wrappers (rate limits, budgets)
    key on together with the model: two configurations of the same kind are two providers.
    """
    # Imported here: the settings import this module, and the OpenAI SDK is not needed to read them.
    from relaybus.tasks.llm._offline import OfflineProvider
    from relaybus.tasks.llm._openai import OpenAICompatibleProvider

    if config.kind == "offline":
        # ``model`` names the remote model (settings always carry one); completions labelled
        # "gpt-4o-mini" by the offline provider would mislead whoever reads the event log.
        return OfflineProvider(name=name or OFFLINE)
    assert config.model is not None  # checked by ProviderConfig
    return OpenAICompatibleProvider(
        base_url=config.base_url, model=config.model, api_key=config.api_key, timeout_s=config.timeout_s,
        max_retries=config.max_retries, stream=config.stream, name=name or config.kind,
    )
