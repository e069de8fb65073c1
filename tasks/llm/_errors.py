"""The provider errors that need more context than :mod:`tasks.errors` gives, hung on its tree.

::

    AgentError
     ├── TransientError
     │    ├── ProviderUnavailable          (tasks.errors) timed out, unreachable
     │    │    └── ProviderOverloaded      answered 429 or 5xx; ``status_code``, ``retry_after``
     │    └── RateLimited                  (_ratelimit) over a global rate limit; the task is deferred, not retried
     └── PermanentError
          ├── ProviderRejected             (tasks.errors) answered 4xx other than 429
          ├── MalformedCompletion          answered 2xx with a body that is not a chat completion
          ├── CompletionNotRecorded        replay found no recorded completion for a request
          ├── UnknownProvider              an agent asked for a provider name that is not configured
          ├── RequestOverLimit             (_ratelimit) one request is over its token limit per period
          ├── BudgetExceeded               (_budget) the call would take its workflow over its budget; not sent
          └── UnpricedModel                (_budget) a cost budget meets a model without a price

Each class pickles with its attributes (``__reduce__``), so it survives a trip through the
result backend.
"""

from __future__ import annotations

from typing import Any

from relaybus.tasks.errors import PermanentError, ProviderUnavailable


class ProviderOverloaded(ProviderUnavailable):
    """Raised when a provider answered 429 or 5xx: it is there but cannot serve us now.

    ``retry_after`` holds the seconds the provider asked us to wait (its ``Retry-After`` header),
    or ``None`` when it did not say.
    """

    def __init__(self, message: str, status_code: int, retry_after: float | None = None) -> None:
        self.status_code = status_code
        self.retry_after = retry_after
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.args[0], self.status_code, self.retry_after))


class MalformedCompletion(PermanentError):
    """Raised when a provider answered 2xx with a body that is not an OpenAI chat completion.

    Permanent on purpose: a transfer cut short surfaces as a transport error (transient), so a
    complete 2xx answer that is not a completion means the endpoint does not speak the protocol
    (a wrong ``base_url``, a proxy's HTML page, a server without chat support). Asking the same
    endpoint the same question again gives the same answer; retrying would only delay the dead
    letter.
    """

    def __init__(self, message: str, status_code: int) -> None:
        self.status_code = status_code
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.args[0], self.status_code))


class CompletionNotRecorded(PermanentError):
    """Raised when a replay has no completion recorded for a request and no fallback to ask."""

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        super().__init__(
            f"no recorded completion for request fingerprint {fingerprint}; "
            "replay is deterministic and will not call a provider without a fallback"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.fingerprint,))


class UnknownProvider(PermanentError):
    """Raised when an agent asks for a provider name that is not configured.

    Permanent: the configuration will not change under a running worker. ``agent`` and ``name`` say
    who asked for what; ``configured`` lists the names there are.
    """

    def __init__(self, name: str, agent: str | None, configured: tuple[str, ...]) -> None:
        self.name = name
        self.agent = agent
        self.configured = configured
        who = f"agent {agent!r} asks for" if agent else "asked for"
        super().__init__(
            f"{who} LLM provider {name!r}, which is not configured (configured: {', '.join(configured)}); "
            "add it to RELAYBUS_LLM_PROVIDERS or change the agent's choice"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.name, self.agent, self.configured))
