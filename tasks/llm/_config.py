"""Which provider to use, as data, and the one place that turns it into a provider."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from relaybus.tasks.llm._http import OpenAICompatibleProvider
from relaybus.tasks.llm._offline import OfflineProvider
from relaybus.tasks.llm._provider import LLMProvider


class ProviderConfig(BaseModel):
    """``kind="offline"`` needs nothing else; ``kind="openai"`` needs at least a ``model``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["offline", "openai"] = "offline"
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str | None = None
    api_key: SecretStr | None = None
    timeout_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _openai_names_a_model(self) -> ProviderConfig:
        if self.kind == "openai" and not self.model:
            raise ValueError("an openai provider needs a model name")
        return self


def build_provider(config: ProviderConfig) -> LLMProvider:
    if config.kind == "offline":
        # ``model`` names the remote model (settings always carry one); completions labelled
        # "gpt-4o-mini" by the offline provider would mislead whoever reads the event log.
        return OfflineProvider()
    assert config.model is not None  # checked by ProviderConfig
    return OpenAICompatibleProvider(
        base_url=config.base_url, model=config.model, api_key=config.api_key, timeout_s=config.timeout_s
    )
