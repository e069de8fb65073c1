"""What the agent task base needs from the composition root, and per-process resources.

``project`` builds a :class:`RuntimeConfig` from its settings and stores it on the Celery app
(``app.conf.relaybus_runtime``); ``tasks`` never imports ``project``. Resources that hold
connections (the event recorder, an HTTP client) are created lazily in each process, after the
prefork pool has forked.
"""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from pydantic import BaseModel, ConfigDict, Field

from relaybus.eventstore.redaction import DEFAULT_REDACT_KEYS, Redactor, mask_url_passwords, redactor
from relaybus.tasks.llm import BudgetPolicy, LLMConfig, LLMProvider, RateLimits, RedisRateLimiter, build_provider


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
    group_commit: bool = False
    #: How long task events for monitors wait to be published together (Settings.events_batch_s).
    events_batch_s: float = 0.05
    redact_keys: tuple[str, ...] = DEFAULT_REDACT_KEYS
    redact_patterns: tuple[str, ...] = ()
    max_event_payload_bytes: int = 64 * 1024
    #: Values over this (as JSON) travel by reference (tasks.runtime.claimcheck); 0: off.
    payload_inline_max_bytes: int = 32 * 1024
    #: The event log's chain key file (a path: the keys themselves never enter a config or a message).
    chain_key_file: str | None = None
    #: PostgreSQL: the event log's append statements prepared once per connection (Settings.eventstore_prepare).
    eventstore_prepare: bool = True
    pipeline_deadline_s: float = 3600.0
    consumer_timeout_s: float = 1800.0
    publish_timeout_s: float = 10.0
    max_redeliveries: int = 10
    #: The named LLM providers, the default, and the choice per agent (a single ProviderConfig is accepted too).
    llm: LLMConfig = Field(default_factory=LLMConfig)
    rate_limits: RateLimits = Field(default_factory=RateLimits)
    #: Principal -> the approver roles they hold (``role:<name>`` among an approval's approvers).
    approver_roles: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    #: Prices per model and how workflows' budgets are kept (tasks.llm._budget).
    budgets: BudgetPolicy = Field(default_factory=BudgetPolicy)

    def __repr_args__(self) -> Any:
        # ``celery inspect conf`` (Flower's worker Config tab) shows this repr: no database password in it.
        for name, value in super().__repr_args__():
            yield name, mask_url_passwords(value) if isinstance(value, str) else value

    @property
    def redactor(self) -> Redactor:
        """The one redaction of this configuration, shared by every sink (relaybus.eventstore.redaction)."""
        return redactor(self.redact_keys, self.redact_patterns)

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

    def retry_countdown(self, retries: int, error: BaseException) -> float:
        """The wait before retrying after ``error``: the backoff, or what the error asks when longer (a
        provider's ``Retry-After``, :class:`~tasks.llm.ProviderOverloaded`), capped at ``retry_backoff_max_s``.

        The LLM SDK does not retry in-process (tasks.llm._openai), so this is where a 429's wait is honoured.
        """
        countdown = self.backoff(retries)
        asked = getattr(error, "retry_after", None)
        if isinstance(asked, int | float) and not isinstance(asked, bool) and asked > countdown:
            countdown = min(float(asked), self.retry_backoff_max_s)
        return countdown

    def check_time_limit(self, time_limit_s: float | None) -> str | None:
        """What is wrong with a hard time limit (an agent's own, or None for the app's), or None if nothing.

        A retried delivery is held unacked for its countdown (up to ``retry_backoff_max_s``) and then for
        its run (up to the limit): both must end before RabbitMQ's ``consumer_timeout_s``.
        """
        limit = self.time_limit_s if time_limit_s is None else time_limit_s
        if self.retry_backoff_max_s + limit < self.consumer_timeout_s:
            return None
        return (
            f"time limit {limit:g} s + retry_backoff_max_s {self.retry_backoff_max_s:g} s reaches "
            f"consumer_timeout_s {self.consumer_timeout_s:g} s (RELAYBUS_CONSUMER_TIMEOUT_S): RabbitMQ would close "
            "the worker's channel holding a retried delivery (PreconditionFailed 406)"
        )

    def check_delay(
        self,
        countdown: float | None = None,
        eta: datetime | str | None = None,
        *,
        time_limit_s: float | None = None,
        now: datetime | None = None,
    ) -> str | None:
        """What is wrong with delaying a task message by ``countdown`` seconds or to ``eta``, or None if nothing.

        The worker takes a delayed message at once and holds it unacknowledged until it is due, then for
        its run: the delay must end before ``consumer_timeout_s`` minus the time limit (``time_limit_s``,
        the task's own, or the app's), or RabbitMQ closes the worker's channel (PreconditionFailed 406) and
        the worker exits. ``countdown`` wins over ``eta``, as in Celery; a naive ``eta`` is UTC, a string
        ISO 8601. Pure: ``now`` defaults to the current time.
        """
        if countdown is not None:
            delay = float(countdown)
            asked = f"countdown {delay:g} s"
        elif eta is not None:
            try:
                due = datetime.fromisoformat(eta) if isinstance(eta, str) else eta
            except ValueError:
                return f"eta {eta!r} is not an ISO 8601 date"
            if due.tzinfo is None:
                due = due.replace(tzinfo=UTC)
            delay = (due - (now or datetime.now(UTC))).total_seconds()
            asked = f"eta {due.isoformat()} ({delay:.0f} s from now)"
        else:
            return None
        limit = self.time_limit_s if time_limit_s is None else time_limit_s
        allowed = self.consumer_timeout_s - limit
        if delay < allowed:
            return None
        return (
            f"{asked} is too far: a worker holds a delayed message unacknowledged until it is due, and "
            f"consumer_timeout_s {self.consumer_timeout_s:g} s (RELAYBUS_CONSUMER_TIMEOUT_S) minus the time limit "
            f"{limit:g} s leaves {max(allowed, 0):g} s before RabbitMQ closes its channel; schedule it later "
            "(beat, a sweep) or raise RabbitMQ's consumer_timeout"
        )


def runtime_config(app: Celery) -> RuntimeConfig:
    conf = app.conf
    config = conf.changes.get("relaybus_runtime")  # where the app sets it: one dict lookup, read a dozen times a task
    if isinstance(config, RuntimeConfig):
        return config
    config = conf.get("relaybus_runtime")  # Celery's lookup of every spelling of the key in every layer
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


def llm_provider(app: Celery, agent: str | None = None, declared: str | None = None) -> LLMProvider:
    """The provider ``agent`` uses (``declared`` is its own choice, ``@agent(llm=...)``), one per name and process.

    The choice is :meth:`LLMConfig.choose`'s: the operator's per-agent setting, else the agent's, else the
    default. Raises :class:`~tasks.llm.UnknownProvider` (permanent) for a name that is not configured.
    """
    llm = runtime_config(app).llm
    name = llm.choose(agent, declared)
    provider: LLMProvider = _resources.get(f"llm:{id(app)}:{name}", lambda: build_provider(llm.providers[name], name))
    return provider


#: Short Redis timeouts for the limiter: a call waits on it before every completion, and an unreachable Redis
#: must become a deferral (or, failing open, a call) in about a second, not hang the task.
LIMITER_REDIS_TIMEOUT_S = 1.0


def rate_limiter(app: Celery) -> RedisRateLimiter | None:
    """This process's limiter, or None when the app has no rate limits."""
    limits = runtime_config(app).rate_limits
    if not limits.limits or limits.redis_url is None:  # RateLimits refuses limits without a Redis
        return None
    url = limits.redis_url

    def build() -> RedisRateLimiter:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=LIMITER_REDIS_TIMEOUT_S,
                                      socket_connect_timeout=LIMITER_REDIS_TIMEOUT_S)
        return RedisRateLimiter(client, limits.namespace)

    limiter: RedisRateLimiter = _resources.get(f"ratelimiter:{id(app)}", build)
    return limiter


def llm_choice_problems(app: Celery) -> list[str]:
    """What is wrong with the LLM providers the app's agents ask for: one line per agent whose declared
    provider (``@agent(llm=...)``) is not configured, for a worker to say when it starts rather than at
    the agent's first call (which fails it, permanently, with the same words)."""
    from relaybus.tasks.llm import UnknownProvider

    llm = runtime_config(app).llm
    problems: list[str] = []
    for task in list(app.tasks.values()):
        spec = getattr(task, "spec", None)
        name, declared = getattr(spec, "name", None), getattr(spec, "llm", None)
        if not isinstance(name, str) or not isinstance(declared, str):
            continue
        try:
            llm.choose(name, declared)
        except UnknownProvider as exc:
            problems.append(str(exc))
    return sorted(set(problems))


def resources() -> _PerProcess:
    return _resources
