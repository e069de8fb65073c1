"""What the agent task base needs from the composition root, and per-process resources.

``project`` builds a :class:`RuntimeConfig` from its settings and stores it on the Celery app
(``app.conf.relaybus_runtime``); ``tasks`` never imports ``project``. Resources that hold
connections (the event recorder, an HTTP client) are created lazily in each process, after the
prefork pool has forked.
"""

from __future__ import annotations

import os
import random
from typing import Any

from celery import Celery
from pydantic import BaseModel, ConfigDict, Field

from relaybus.tasks.llm import LLMProvider, ProviderConfig, build_provider


class RuntimeConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    namespace: str = "agents"
    urgent_queues: bool = False
    priority_levels: dict[str, int] = Field(default_factory=lambda: {"low": 0, "normal": 1, "high": 2, "urgent": 3})
    default_priority: str = "normal"
    max_retries: int = 3
    retry_backoff_s: float = 1.0
    retry_backoff_max_s: float = 600.0
    retry_jitter: bool = True
    soft_time_limit_s: float = 300.0
    time_limit_s: float = 360.0
    max_payload_bytes: int = 256 * 1024
    max_message_bytes: int = 4 * 1024 * 1024
    eventstore_url: str = "sqlite:///.relaybus/events.sqlite"
    record_events: bool = True
    redact_keys: tuple[str, ...] = ()
    max_event_payload_bytes: int = 64 * 1024
    pipeline_deadline_s: float = 3600.0
    consumer_timeout_s: float = 1800.0
    publish_timeout_s: float = 10.0
    max_redeliveries: int = 10
    llm: ProviderConfig = Field(default_factory=lambda: ProviderConfig(kind="offline"))

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.namespace}.dlx"

    @property
    def event_exchange(self) -> str:
        return f"{self.namespace}.events"

    def priority(self, value: str | int | None) -> int:
        if value is None:
            return self.priority_levels[self.default_priority]
        if isinstance(value, int):
            top = max(self.priority_levels.values())
            if not 0 <= value <= top:
                raise ValueError(f"priority must be between 0 and {top}, got {value}")
            return value
        try:
            return self.priority_levels[value]
        except KeyError:
            raise ValueError(
                f"unknown priority class {value!r}; expected one of {', '.join(self.priority_levels)}"
            ) from None

    def backoff(self, retries: int) -> float:
        """Exponential backoff with jitter for the given number of retries already made."""
        ceiling = float(min(self.retry_backoff_max_s, self.retry_backoff_s * (2**retries)))
        if not self.retry_jitter:
            return ceiling
        # "Equal jitter": at least half the ceiling, so retries never bunch up at zero.
        return ceiling / 2 + random.uniform(0, ceiling / 2)


def runtime_config(app: Celery) -> RuntimeConfig:
    config = app.conf.get("relaybus_runtime")
    if isinstance(config, RuntimeConfig):
        return config
    return RuntimeConfig()


class _PerProcess:
    """Lazily built, per-process resources, rebuilt after a fork."""

    def __init__(self) -> None:
        self._pid: int | None = None
        self._items: dict[str, Any] = {}

    def get(self, key: str, factory: Any) -> Any:
        pid = os.getpid()
        if self._pid != pid:
            self._items = {}
            self._pid = pid
        if key not in self._items:
            self._items[key] = factory()
        return self._items[key]

    def clear(self) -> None:
        self._items = {}


_resources = _PerProcess()


def llm_provider(app: Celery) -> LLMProvider:
    config = runtime_config(app)
    provider: LLMProvider = _resources.get(f"llm:{id(app)}", lambda: build_provider(config.llm))
    return provider


def resources() -> _PerProcess:
    return _resources
