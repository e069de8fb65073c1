"""The LLM provider interface agents use, and its providers.

No Celery here: agents receive an :class:`LLMProvider` and call it like a function. The offline
provider is the default, so every test and demo is reproducible without a network.
"""

from relaybus.tasks.llm._budget import (
    BUDGET_EXCEEDED,
    Budget,
    BudgetedProvider,
    BudgetExceeded,
    BudgetPolicy,
    Ledger,
    RedisReservations,
    Reservations,
    Spent,
    UnpricedModel,
)
from relaybus.tasks.llm._config import OFFLINE, LLMConfig, ProviderConfig, build_provider
from relaybus.tasks.llm._errors import (
    CompletionNotRecorded,
    MalformedCompletion,
    ProviderOverloaded,
    UnknownProvider,
)
from relaybus.tasks.llm._models import ChatMessage, Completion, CompletionRequest, Tool, ToolCall, Usage
from relaybus.tasks.llm._offline import OfflineProvider
from relaybus.tasks.llm._openai import OpenAICompatibleProvider
from relaybus.tasks.llm._pricing import MICROS, Price, PriceTable, format_micros, to_micros
from relaybus.tasks.llm._provider import LLMProvider, complete, model_for
from relaybus.tasks.llm._ratelimit import (
    RateLimit,
    RateLimited,
    RateLimitedProvider,
    RateLimits,
    RedisRateLimiter,
    RequestOverLimit,
    estimate_tokens,
)
from relaybus.tasks.llm._replay import RecordingProvider, ReplayProvider

# Grouped by purpose, as the house style asks, rather than sorted.
__all__ = [  # noqa: RUF022
    # Requests and completions
    "ChatMessage",
    "Completion",
    "CompletionRequest",
    "Tool",
    "ToolCall",
    "Usage",
    # The interface
    "LLMProvider",
    "complete",
    "model_for",
    # Providers
    "OfflineProvider",
    "OpenAICompatibleProvider",
    "RecordingProvider",
    "ReplayProvider",
    # Global rate limits
    "RateLimit",
    "RateLimitedProvider",
    "RateLimits",
    "RedisRateLimiter",
    "estimate_tokens",
    # Budgets and prices
    "BUDGET_EXCEEDED",
    "Budget",
    "BudgetPolicy",
    "BudgetedProvider",
    "Ledger",
    "MICROS",
    "Price",
    "PriceTable",
    "RedisReservations",
    "Reservations",
    "Spent",
    "format_micros",
    "to_micros",
    # Configuration
    "LLMConfig",
    "OFFLINE",
    "ProviderConfig",
    "build_provider",
    # Errors (the rest of the tree is in tasks.errors)
    "CompletionNotRecorded",
    "MalformedCompletion",
    "ProviderOverloaded",
    "UnknownProvider",
    "RateLimited",
    "RequestOverLimit",
    "BudgetExceeded",
    "UnpricedModel",
]
