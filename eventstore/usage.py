"""What LLM calls spent, folded from ``llm.completed`` records: tokens and cost per agent, model and workflow.

A record's cost (``payload.cost.micros``, integer micro-units of ``payload.cost.currency``) is there when its
model had a price when it ran; sums stay integers, so they are exact. The same fold serves a workflow's budget
(its spending so far), ``relaybus stats``, the console and ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict

from relaybus.eventstore import types as t

MICROS = 1_000_000


class LLMUsage(BaseModel):
    """Calls, tokens and cost of one group of ``llm.completed`` records (an agent and model, a workflow...)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    agent: str | None = None
    provider: str | None = None
    model: str | None = None
    correlation_id: str | None = None
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: Micro-units of ``currency`` (calls of unpriced models add nothing); ``priced_calls`` says how many had one.
    cost_micros: int = 0
    priced_calls: int = 0
    currency: str | None = None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cost(self) -> str:
        """The cost as exact decimal text (``"0.001234"``)."""
        return f"{Decimal(self.cost_micros) / MICROS:f}"


@dataclass(frozen=True, slots=True)
class CallUsage:
    """One ``llm.completed`` record decoded: who called which model, its tokens and, when priced, its cost.

    Fields a record lacks (or holds in the wrong shape) read as None, or 0 for tokens."""

    agent: str | None
    task_id: str | None
    correlation_id: str | None
    provider: str | None
    model: str | None
    prompt_tokens: int
    completion_tokens: int
    #: Micro-units of ``currency``; None when the model had no price when the call ran.
    cost_micros: int | None
    currency: str | None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cost(self) -> str:
        """The cost as exact decimal text (``"0.001234"``), ``""`` for an unpriced call."""
        return "" if self.cost_micros is None else f"{Decimal(self.cost_micros) / MICROS:f}"


def call_usage(event: Any) -> CallUsage:
    """The one decoder of an ``llm.completed`` event (its payload: ``completion.{provider, model, usage}`` and
    ``cost.{micros, currency}``); every reader of LLM spending (budgets, stats, console, metrics) goes through it."""
    payload = _dict(event.payload)
    completion = _dict(payload.get("completion"))
    usage = _dict(completion.get("usage"))
    cost = _dict(payload.get("cost"))
    micros = cost.get("micros")
    return CallUsage(
        agent=event.agent, task_id=event.task_id, correlation_id=event.correlation_id,
        provider=_str(completion.get("provider")), model=_str(completion.get("model")),
        prompt_tokens=_int(usage.get("prompt_tokens")), completion_tokens=_int(usage.get("completion_tokens")),
        cost_micros=micros if isinstance(micros, int) and not isinstance(micros, bool) else None,
        currency=_str(cost.get("currency")),
    )


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def llm_usage(events: Iterable[Any], by: tuple[str, ...] = ("agent", "provider", "model")) -> list[LLMUsage]:
    """Fold ``llm.completed`` events into one :class:`LLMUsage` per value of ``by`` (fields of LLMUsage:
    ``agent``, ``provider``, ``model``, ``correlation_id``), sorted by them; ``by=()`` gives one total."""
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for event in events:
        if event.type != t.LLM_COMPLETED:
            continue
        call = call_usage(event)
        fields = {"agent": call.agent, "provider": call.provider, "model": call.model,
                  "correlation_id": call.correlation_id}
        key = tuple(fields[name] for name in by)
        group = groups.setdefault(key, {**{name: fields[name] for name in by}, "calls": 0, "prompt_tokens": 0,
                                        "completion_tokens": 0, "cost_micros": 0, "priced_calls": 0,
                                        "currency": None})
        group["calls"] += 1
        group["prompt_tokens"] += call.prompt_tokens
        group["completion_tokens"] += call.completion_tokens
        if call.cost_micros is not None:
            group["cost_micros"] += call.cost_micros
            group["priced_calls"] += 1
            group["currency"] = group["currency"] or call.currency
    return [LLMUsage(**groups[key]) for key in sorted(groups, key=lambda k: tuple(str(v) for v in k))]


def spending_summary(events: Iterable[Any]) -> str | None:
    """``llm: 2 calls, 32 tokens, 0.0093 USD of budget 50 tokens``: what a workflow's LLM calls spent, and its
    budget when its started record holds one; None when it made no call and has no budget."""
    events = list(events)
    total = llm_usage(events, by=())
    budgets = [e.payload["budget"] for e in events if e.type in (t.PIPELINE_STARTED, t.SAGA_STARTED)
               and isinstance(e.payload, dict) and e.payload.get("budget")]
    if not total and not budgets:
        return None
    used = total[0] if total else LLMUsage()
    currency = used.currency or ""
    line = f"llm: {used.calls} calls, {used.tokens} tokens"
    if used.priced_calls:
        line += f", {used.cost} {currency}".rstrip()
    if budgets:
        limits = [f"{b['tokens']} tokens" for b in budgets if b.get("tokens")]
        limits += [f"{b['cost']} {currency}".rstrip() for b in budgets if b.get("cost")]
        line += f" of budget {', '.join(limits)}"
    refused = sum(1 for e in events if e.type == t.BUDGET_EXCEEDED)
    if refused:
        line += f"; {refused} call{'s' if refused > 1 else ''} refused (budget-exceeded)"
    return line
