"""relaybus settings: one pydantic-settings object, every value overridable by a ``RELAYBUS_`` variable."""

from __future__ import annotations

import json
from decimal import Decimal
from functools import lru_cache
from typing import Annotated, Any, Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from relaybus.eventstore.redaction import DEFAULT_REDACT_KEYS, mask_url_passwords
from relaybus.tasks.llm import LLMConfig, Price, ProviderConfig, RateLimit

PriorityClass = Literal["urgent", "high", "normal", "low"]

#: The one place priority classes become numbers. RabbitMQ keeps one sub-queue per level, so few
#: levels are cheaper; it recommends single digits. Higher number = served first.
PRIORITY_LEVELS: dict[str, int] = {"low": 0, "normal": 1, "high": 2, "urgent": 3}
MAX_PRIORITY = max(PRIORITY_LEVELS.values())

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class Settings(BaseSettings):
    """Everything relaybus reads from its environment. The README's configuration table mirrors it."""

    # hide_input_in_errors: a refused setting is named, its value (a URL with a password) never shown.
    model_config = SettingsConfigDict(env_prefix="RELAYBUS_", frozen=True, extra="ignore", hide_input_in_errors=True)

    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    result_backend: str = "redis://127.0.0.1:6379/0"
    eventstore_url: str = "sqlite:///.relaybus/events.sqlite"
    #: PostgreSQL: the event log's append statements are prepared once per connection (12-26 % less server
    #: CPU per append). Off behind a pooler that does not keep prepared statements (PgBouncer in transaction mode
    #: before 1.21).
    eventstore_prepare: bool = True
    #: Files holding the passwords of the three URLs above (compose or Kubernetes secrets), so that no
    #: password sits in the environment: the URL names the user, the file's first line is put in as its
    #: password (URL-quoted) when the settings are read. A URL that already holds another password is refused.
    broker_password_file: str | None = None
    result_backend_password_file: str | None = None
    eventstore_password_file: str | None = None

    #: Where the embedded mode (no RabbitMQ, no Redis) keeps its broker folder and SQLite files.
    embedded_dir: str = ".relaybus"
    #: Worker log lines as JSON objects with the running task's ids (relaybus.logs); Celery's text when off.
    log_json: bool = False
    #: OpenTelemetry traces, one per workflow (relaybus.tracing; the ``otel`` extra); OTLP to the standard
    #: ``OTEL_EXPORTER_OTLP_ENDPOINT``, or JSON lines to ``otel_file`` when set.
    otel: bool = False
    otel_file: str | None = None

    #: Prefix of every exchange and queue: ``<namespace>.<agent>``. Lets tests and several deployments
    #: share one broker without touching each other's queues.
    namespace: str = "agents"
    #: Also declare ``<namespace>.<agent>.urgent`` and route urgent work there, for dedicated workers.
    urgent_queues: bool = False
    default_priority: PriorityClass = "normal"

    max_retries: int = Field(default=3, ge=0)
    retry_backoff_s: float = Field(default=1.0, gt=0)
    #: Retry countdowns are held unacked by the worker; RabbitMQ closes a channel whose delivery stays
    #: unacked past ``consumer_timeout`` (30 min by default): the cap plus ``time_limit_s`` stays below it.
    retry_backoff_max_s: float = Field(default=600.0, gt=0)
    retry_jitter: bool = True

    soft_time_limit_s: float = Field(default=300.0, gt=0)
    #: Hard limit: a retried delivery is held for its countdown, then for the run (see ``consumer_timeout_s``).
    time_limit_s: float = Field(default=360.0, gt=0)

    #: Largest serialized task input accepted from a client; larger inputs are refused before publishing.
    #: What is over ``payload_inline_max_bytes`` of it travels by reference: raise this for large documents.
    max_payload_bytes: int = Field(default=256 * 1024, gt=0)
    #: Largest raw message body a worker takes off an agent queue; a larger one is dead-lettered as
    #: ``message-too-large`` before it is decoded. Above ``max_payload_bytes``: a message also carries
    #: its chain's remaining steps and Celery's own fields.
    max_message_bytes: int = Field(default=DEFAULT_MAX_MESSAGE_BYTES, gt=0)
    #: Event-log payloads above this are stored truncated, with their size and hash (what is over
    #: ``payload_inline_max_bytes`` is stored by reference first, whole).
    max_event_payload_bytes: int = Field(default=64 * 1024, gt=0)
    #: A value larger than this (as JSON) in an agent's input or output, an event's data, a stored result
    #: or an event-log record is stored once in the event store's ``payloads`` table and travels as
    #: ``{"$ref": "sha256:…", "bytes": N}`` (README, Large payloads). 0: off. At most ``max_payload_bytes``
    #: (a smaller one lowers it), so what stays inline fits in a message.
    payload_inline_max_bytes: int = Field(default=32 * 1024, ge=0)

    #: Keys whose values every sink masks (relaybus.eventstore.redaction; README, Secrets and redaction).
    redact_keys: Annotated[tuple[str, ...], NoDecode] = DEFAULT_REDACT_KEYS
    #: Regular expressions masked wherever they match, besides the built-in ones (comma separated).
    redact_patterns: Annotated[tuple[str, ...], NoDecode] = ()
    record_events: bool = True
    #: A prefork worker's pool processes hand their records to one writer process that commits what they
    #: finish together (tasks.runtime.recording.hostwriter); still durable before the message is acked.
    #: Off by default: on 2 cores the hand-over cost more than the shared commits saved (README, Performance).
    group_commit: bool = False

    #: How long task events for monitors (Flower, ``celery events``) wait to be published together, in one
    #: message: a worker's (tasks.runtime.consumer) and a sender's ``task-sent`` (tasks.runtime.sentevents);
    #: 0: each at once (a worker's at its event loop's next turn), as Celery does.
    events_batch_s: float = Field(default=0.05, ge=0, le=5)

    result_expires_s: int = Field(default=7 * 24 * 3600, gt=0)

    #: A pipeline that makes no progress (no new record) for this long is ended ``timed_out`` by the
    #: sweep (``relaybus sweep``, beat); a pipeline may set its own (``Pipeline(deadline_s=...)``).
    pipeline_deadline_s: float = Field(default=3600.0, gt=0)
    #: Workers that consume the system queue send the sweeps themselves (one per interval across them, by a
    #: lease in the result backend's Redis), so deadlines hold without beat (project.sweeper).
    worker_sweeps: bool = True
    #: How often the workflow sweep (pipeline deadlines, approvals) and the saga sweep (silent steps) run,
    #: under beat and from workers alike.
    workflow_sweep_interval_s: float = Field(default=60.0, gt=0)
    saga_sweep_interval_s: float = Field(default=30.0, gt=0)
    #: RabbitMQ's ``consumer_timeout`` (ms in rabbitmq.conf, seconds here): a delivery held unacked longer
    #: closes the worker's channel. Retry backoff, time limits and countdowns must stay below it.
    consumer_timeout_s: float = Field(default=1800.0, gt=0)
    #: The longest a publish waits for the broker's confirm (a blocked or stopped broker) before raising.
    publish_timeout_s: float = Field(default=10.0, gt=0)
    #: A message delivered more than this many times (crash loops, requeues) is dead-lettered with
    #: reason ``redelivery-limit`` instead of running its agent again.
    max_redeliveries: int = Field(default=10, ge=1)

    #: The single provider of the simple set-up, named after its kind (``offline`` or ``openai``); with
    #: ``llm_providers`` it is one provider among the others.
    llm_provider: Literal["offline", "openai"] = "offline"
    llm_base_url: str = "http://127.0.0.1:8000/v1"
    llm_model: str = "gpt-4o-mini"
    llm_api_key: SecretStr | None = None
    llm_timeout_s: float = Field(default=30.0, gt=0)
    #: Named providers, JSON in the environment: ``{"fast": {"kind": "openai", "model": "gpt-4o-mini",
    #: "base_url": "...", "api_key": "..."}}`` (fields of tasks.llm.ProviderConfig). A name here wins over
    #: the ``llm_provider`` one of the same name; ``offline`` is always there.
    llm_providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    #: The provider of every agent that names none; unset: the ``llm_provider`` one.
    llm_default_provider: str | None = None
    #: Agent → provider name (``researcher=careful,intake=fast`` or JSON); wins over ``@agent(llm=...)``.
    llm_agent_providers: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)

    #: Global rate limits per ``"<provider>/<model>"``, shared by every worker through Redis (README, Rate
    #: limits): JSON in the environment, ``{"openai/gpt-4o-mini": {"requests": 500, "tokens": 200000}}``,
    #: per minute unless a limit sets ``period_s``. A call over a limit defers its task (``task.deferred``).
    llm_rate_limits: dict[str, RateLimit] = Field(default_factory=dict)
    #: The Redis holding the shared windows; the result backend when it is a Redis and this is unset.
    llm_rate_limit_redis_url: str | None = None
    #: The share of each limit only urgent work (``llm_rate_limit_urgent_priority`` and above) may use.
    llm_rate_limit_urgent_reserve: float = Field(default=0.2, ge=0, lt=1)
    llm_rate_limit_urgent_priority: PriorityClass = "urgent"
    #: The completion a request without ``max_tokens`` is expected to spend, until its real usage is known.
    llm_rate_limit_completion_tokens: int = Field(default=512, gt=0)
    #: When the limiter's Redis is unreachable: defer the call (false) or call the provider unlimited (true).
    llm_rate_limit_fail_open: bool = False

    #: Prices per 1,000 tokens by model or ``"<provider>/<model>"`` (README, Budgets), JSON in the environment:
    #: ``{"gpt-4o-mini": {"prompt_per_1k": "0.00015", "completion_per_1k": "0.0006"}}``; decimals, in
    #: ``llm_price_currency``. A priced call's ``llm.completed`` records its cost; cost budgets need them.
    llm_prices: dict[str, Price] = Field(default_factory=dict)
    llm_price_currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    #: The Redis holding budget reservations of calls in flight; unset: the rate limits' Redis (by default the
    #: result backend's). Without one, concurrent calls are checked against the log alone.
    llm_budget_redis_url: str | None = None

    #: Who holds which approver role (README, Human approval): JSON in the environment, ``{"alice": ["editor"]}``.
    #: An approval naming ``role:editor`` among its approvers may be decided by alice.
    approver_roles: dict[str, tuple[str, ...]] = Field(default_factory=dict)

    #: Your own agent modules, which workers import, and the agent names they register
    #: (each gets its queues), both comma separated in the environment.
    extra_modules: Annotated[tuple[str, ...], NoDecode] = ()
    extra_agents: Annotated[tuple[str, ...], NoDecode] = ()

    #: The event log's chain keys (``<key id>=<secret>`` a line, the last one links new events; docs/integrity.md).
    #: A file, never a value: the path may be shown anywhere, the keys nowhere. Unset: unkeyed links.
    chain_key_file: str | None = None
    #: The Ed25519 key (PEM) ``relaybus checkpoint`` signs with; its public key also checks checkpoints.
    checkpoint_key_file: str | None = None
    #: Public keys (base64, comma separated) whose checkpoints ``relaybus verify --since-checkpoint`` trusts.
    checkpoint_public_keys: Annotated[tuple[str, ...], NoDecode] = ()

    @field_validator("llm_providers", "llm_rate_limits", "approver_roles", "llm_prices", mode="before")
    @classmethod
    def _json_object(cls, value: object) -> object:
        # The environment's JSON is decoded by pydantic-settings; the same text given as a value (to_env's
        # output handed back, a .env read by hand) is decoded here.
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("llm_agent_providers", mode="before")
    @classmethod
    def _agent_pairs(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        if value.lstrip().startswith("{"):
            return json.loads(value)
        pairs: dict[str, str] = {}
        for item in (part.strip() for part in value.split(",")):
            agent, sep, provider = item.partition("=")
            if item and (not sep or not agent.strip() or not provider.strip()):
                raise ValueError(f"{item!r} is not agent=provider")
            if item:
                pairs[agent.strip()] = provider.strip()
        return pairs

    @model_validator(mode="after")
    def _llm_names_are_known(self) -> Settings:
        self.llm_config()  # raises naming the unknown provider
        return self

    def llm_config(self) -> LLMConfig:
        """The named LLM providers these settings describe, their default and the choice per agent."""
        simple = ProviderConfig(
            kind=self.llm_provider,
            base_url=self.llm_base_url,
            model=self.llm_model,
            api_key=self.llm_api_key,
            timeout_s=self.llm_timeout_s,
        )
        return LLMConfig(
            providers={self.llm_provider: simple, **self.llm_providers},
            default=self.llm_default_provider or self.llm_provider,
            agents=self.llm_agent_providers,
        )

    @field_validator("namespace")
    @classmethod
    def _namespace_is_a_queue_prefix(cls, value: str) -> str:
        if not value or not all(c.isalnum() or c in "-_" for c in value):
            raise ValueError("namespace must be non-empty and use only letters, digits, '-' and '_'")
        return value

    @model_validator(mode="before")
    @classmethod
    def _passwords_from_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for url_field, file_field in _PASSWORD_FILES.items():
            path = data.get(file_field)
            if path:
                url = data.get(url_field) or cls.model_fields[url_field].default
                data = {**data, url_field: _with_password(url, _read_password(path, file_field), url_field)}
        return data

    @model_validator(mode="after")
    def _rate_limits_have_a_redis(self) -> Settings:
        if self.llm_rate_limits and self.rate_limit_redis_url is None:
            raise ValueError(
                "llm_rate_limits need a Redis shared by every worker: set RELAYBUS_LLM_RATE_LIMIT_REDIS_URL "
                "(the result backend is not a Redis)"
            )
        return self

    @property
    def rate_limit_redis_url(self) -> str | None:
        """Where the rate limits' windows live: the setting, else the result backend if it is a Redis."""
        if self.llm_rate_limit_redis_url:
            return self.llm_rate_limit_redis_url
        if self.result_backend.startswith(("redis://", "rediss://")):
            return self.result_backend
        return None

    @property
    def budget_redis_url(self) -> str | None:
        """Where budget reservations live: the setting, else the rate limits' Redis (or the result backend's)."""
        return self.llm_budget_redis_url or self.rate_limit_redis_url

    @model_validator(mode="after")
    def _a_message_holds_a_payload(self) -> Settings:
        if self.payload_inline_max_bytes and self.payload_inline_max_bytes < self.max_payload_bytes:
            # What is larger travels by reference: a message holds at most this much of its input inline.
            if self.max_message_bytes <= self.payload_inline_max_bytes:
                raise ValueError(
                    f"max_message_bytes ({self.max_message_bytes}) must be larger than payload_inline_max_bytes "
                    f"({self.payload_inline_max_bytes}): workers would refuse the messages the callers send"
                )
        elif self.max_message_bytes <= self.max_payload_bytes:
            raise ValueError(
                f"max_message_bytes ({self.max_message_bytes}) must be larger than max_payload_bytes "
                f"({self.max_payload_bytes}): workers would refuse inputs the callers accept"
            )
        return self

    @model_validator(mode="after")
    def _a_delivery_ends_before_the_consumer_timeout(self) -> Settings:
        # One delivery holds both: a retry's message waits unacked in the worker for its countdown (up to
        # the cap), then runs (up to the hard limit). Past consumer_timeout RabbitMQ closes the worker's
        # channel (PreconditionFailed 406) and the worker exits.
        held = self.retry_backoff_max_s + self.time_limit_s
        if held >= self.consumer_timeout_s:
            raise ValueError(
                f"retry_backoff_max_s ({self.retry_backoff_max_s:g} s, RELAYBUS_RETRY_BACKOFF_MAX_S) + "
                f"time_limit_s ({self.time_limit_s:g} s, RELAYBUS_TIME_LIMIT_S) = {held:g} s must stay below "
                f"consumer_timeout_s ({self.consumer_timeout_s:g} s, RELAYBUS_CONSUMER_TIMEOUT_S): a retried "
                "delivery is held unacked for its countdown and then its run, and RabbitMQ closes the worker's "
                "channel past its consumer_timeout. Lower one of the first two, or raise RabbitMQ's "
                "consumer_timeout and RELAYBUS_CONSUMER_TIMEOUT_S with it"
            )
        return self

    @field_validator(
        "redact_keys", "redact_patterns", "extra_modules", "extra_agents", "checkpoint_public_keys", mode="before"
    )
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    def __repr_args__(self) -> Any:
        # URLs keep their passwords out of reprs (a traceback's locals, a log line).
        for name, value in super().__repr_args__():
            yield name, mask_url_passwords(value) if isinstance(value, str) else value

    def priority(self, value: PriorityClass | int | None) -> int:
        """Map a priority class (or an explicit number) to the broker's number."""
        if value is None:
            return PRIORITY_LEVELS[self.default_priority]
        if isinstance(value, int):
            if not 0 <= value <= MAX_PRIORITY:
                raise ValueError(f"priority must be between 0 and {MAX_PRIORITY}, got {value}")
            return value
        try:
            return PRIORITY_LEVELS[value]
        except KeyError:
            raise ValueError(
                f"unknown priority class {value!r}; expected one of {', '.join(PRIORITY_LEVELS)}"
            ) from None

    def to_env(self) -> dict[str, str]:
        """These settings as ``RELAYBUS_*`` variables, to hand to a worker process."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if isinstance(value, tuple):
                value = ",".join(value)
            if isinstance(value, dict):
                value = json.dumps(value, default=_secret_value)
            if isinstance(value, bool):
                value = "true" if value else "false"
            env[f"RELAYBUS_{name.upper()}"] = str(value)
        if self.llm_api_key is not None:
            env["RELAYBUS_LLM_API_KEY"] = self.llm_api_key.get_secret_value()
        return env


def _secret_value(value: object) -> object:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Decimal):  # a price: as exact text
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_PASSWORD_FILES = {
    "broker_url": "broker_password_file",
    "result_backend": "result_backend_password_file",
    "eventstore_url": "eventstore_password_file",
}


def _read_password(path: str, field: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            password = file.readline().rstrip("\r\n")
    except OSError as exc:  # the path and the reason; never the file's content
        raise ValueError(f"cannot read RELAYBUS_{field.upper()} ({path}): {exc.strerror}") from None
    if not password:
        raise ValueError(f"RELAYBUS_{field.upper()} ({path}) is empty")
    return password


def _with_password(url: str, password: str, field: str) -> str:
    """``url`` with ``password`` as its password; the messages never hold either."""
    parts = urlsplit(url)
    if parts.password is not None and unquote(parts.password) != password:
        raise ValueError(f"RELAYBUS_{field.upper()} holds a password and its password file another: keep one")
    user = quote(unquote(parts.username or ""), safe="")
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()


def embedded(settings: Settings) -> Settings:
    """The same settings on the embedded default: a filesystem broker and SQLite, no server needed."""
    from pathlib import Path

    base = Path(settings.embedded_dir).resolve()
    base.mkdir(parents=True, exist_ok=True)
    return settings.model_copy(
        update={
            "broker_url": "filesystem://",
            "result_backend": f"db+sqlite:///{base / 'results.sqlite'}",
            "eventstore_url": f"sqlite:///{base / 'events.sqlite'}",
            "embedded_dir": str(base),
        }
    )
