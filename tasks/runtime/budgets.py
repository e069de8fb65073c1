"""Budgets in the task base: which workflow a call is charged to, what it may spend, and the refusal's record.

The workflow is the call's correlation id; its budget is the ``budget`` of its ``pipeline.started`` or
``saga.started`` record (the tightest, when a saga runs under a pipeline's id); what it spent is the fold of
its ``llm.completed`` records (:class:`LogLedger`, kept as a running total per workflow that each check brings up
to date with the records after the position it read last). A refused call records ``budget.exceeded`` and raises
:class:`~tasks.llm.BudgetExceeded`, which the task base dead-letters with reason ``budget-exceeded``.

Left unbudgeted, on purpose: a compensation (a saga undoing its steps must not be stopped by the budget its
steps used up; its calls are still charged and recorded), a deterministic replay (its answers are recorded
ones, nothing is sent), and an app that records no events (there is no log to charge).
"""

from __future__ import annotations

import socket
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from relaybus.eventstore.types import LLM_COMPLETED, PIPELINE_STARTED, SAGA_STARTED
from relaybus.eventstore.usage import call_usage
from relaybus.tasks.llm import (
    Budget,
    BudgetedProvider,
    Completion,
    CompletionRequest,
    LLMProvider,
    RedisReservations,
    Spent,
)
from relaybus.tasks.llm import format_micros as format_micros
from relaybus.tasks.runtime.config import resources, runtime_config
from relaybus.tasks.runtime.context import CORRELATION_HEADER, LLM_REPLAY_HEADER
from relaybus.tasks.runtime.hooks import recording_guard
from relaybus.tasks.runtime.recording import records

if TYPE_CHECKING:
    from celery import Celery

    from relaybus.tasks.runtime.recording import Recorder

#: Budgets of this many workflows are kept per process (a workflow's budget never changes once started).
CACHED_BUDGETS = 4096
#: Running totals of this many workflows are kept per process (one evicted is read again from its start).
CACHED_SPENDING = 4096
#: ``llm.completed`` records read per query when a running total catches up.
SPENT_PAGE = 1000
#: Short Redis timeouts: an unreachable Redis makes the check fall back to the log in about a second.
RESERVATIONS_REDIS_TIMEOUT_S = 1.0


class LogLedger:
    """A workflow's budget and spending, read from the event log (``store``: an ``EventStore``).

    What a workflow spent is kept per process as ``(position, total)``: the fold of its ``llm.completed``
    records up to ``position``. A check reads only the records after it (the index on correlation id, type and
    position finds them), so a workflow's n-th call reads what was recorded since its previous check, not its
    n-1 records again. Positions are handed out in commit order (the append's table lock), so no record can
    appear later below a position already read; the total at a position is the same whoever folds it, so
    concurrent checks (threads) read outside the lock and keep the furthest. A new process (a restarted worker)
    starts each workflow from its first record, once.
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self._budgets: OrderedDict[str, Budget | None] = OrderedDict()
        self._spent: OrderedDict[str, tuple[int, Spent]] = OrderedDict()
        self._lock = threading.Lock()

    def budget_of(self, correlation_id: str) -> Budget | None:
        if correlation_id in self._budgets:
            self._budgets.move_to_end(correlation_id)
            return self._budgets[correlation_id]
        budget: Budget | None = None
        # The started record precedes every call of its workflow (the entry task or the saga's start records
        # it before anything is sent), so "none found" is final too.
        for type_ in (PIPELINE_STARTED, SAGA_STARTED):
            for event in self.store.find(type=type_, correlation_id=correlation_id, limit=10):
                recorded = event.payload.get("budget") if isinstance(event.payload, dict) else None
                if recorded:
                    budget = Budget.model_validate(recorded).tightest(budget)
        self._budgets[correlation_id] = budget
        if len(self._budgets) > CACHED_BUDGETS:
            self._budgets.popitem(last=False)
        return budget

    def spent(self, correlation_id: str) -> Spent:
        with self._lock:
            position, total = self._spent.get(correlation_id, (0, Spent()))
        while True:
            page = self.store.find(type=LLM_COMPLETED, correlation_id=correlation_id, after_position=position,
                                   limit=SPENT_PAGE)
            for event in page:
                call = call_usage(event)
                total = total + Spent(call.tokens, call.cost_micros or 0)
            if page:
                position = page[-1].position
            if len(page) < SPENT_PAGE:
                break
        with self._lock:
            kept = self._spent.get(correlation_id)
            if kept is None or kept[0] < position:
                self._spent[correlation_id] = (position, total)
            if correlation_id in self._spent:
                self._spent.move_to_end(correlation_id)
            if len(self._spent) > CACHED_SPENDING:
                self._spent.popitem(last=False)
        return total


def ledger_for(app: Celery, recorder: Recorder) -> LogLedger | None:
    store = getattr(recorder, "store", None)
    if store is None or not recorder.enabled:
        return None
    ledger: LogLedger = resources().get(f"budget-ledger:{id(app)}:{id(store)}", lambda: LogLedger(store))
    return ledger


def reservations_for(app: Celery) -> RedisReservations | None:
    policy = runtime_config(app).budgets
    url = policy.redis_url
    if url is None:
        return None

    def build() -> RedisReservations:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No retries inside the client: an unreachable Redis falls back to the log at once, not after backoffs.
        client = redis.Redis.from_url(url, socket_timeout=RESERVATIONS_REDIS_TIMEOUT_S,
                                      socket_connect_timeout=RESERVATIONS_REDIS_TIMEOUT_S, retry=Retry(NoBackoff(), 0))
        return RedisReservations(client, policy.namespace)

    found: RedisReservations = resources().get(f"budget-reservations:{id(app)}", build)
    return found


def budgeted(
    task: Any, request: Any, headers: dict[str, Any], provider: LLMProvider, recorder: Recorder
) -> LLMProvider:
    """``provider`` within the budget of the call's workflow, if it has one (module docstring).

    The budget is looked up at the first call, not here: every task builds its provider chain, most never call
    it, and a pipeline's entry task runs before its ``pipeline.started`` may be in the log."""
    if headers.get(LLM_REPLAY_HEADER) or getattr(task, "saga_kind", None) == "compensation":
        return provider
    correlation_id = headers.get(CORRELATION_HEADER)
    if not correlation_id or ledger_for(task.app, recorder) is None:
        return provider

    def build() -> LLMProvider:
        ledger = ledger_for(task.app, recorder)
        budget = ledger.budget_of(str(correlation_id)) if ledger is not None else None
        if ledger is None or budget is None:
            return provider

        def refused(payload: dict[str, Any]) -> None:
            with recording_guard:
                recorder.append([records.budget_exceeded(task, request, payload, socket.gethostname())],
                                task_id=request.id)

        return BudgetedProvider(
            provider, correlation_id=str(correlation_id), budget=budget, ledger=ledger,
            reservations=reservations_for(task.app), policy=runtime_config(task.app).budgets, refused=refused,
        )

    return _AtFirstCall(provider, build)


class _AtFirstCall:
    """``inner``, or what ``build`` makes of it, decided when the first request comes."""

    def __init__(self, inner: LLMProvider, build: Callable[[], LLMProvider]) -> None:
        self.inner = inner
        self.name = inner.name
        self.model = inner.model
        self._build = build
        self._chosen: LLMProvider | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(inner={self.inner!r})"

    def complete(self, request: CompletionRequest) -> Completion:
        if self._chosen is None:
            self._chosen = self._build()
        return self._chosen.complete(request)


def cost_of(app: Celery, completion: Completion) -> dict[str, Any] | None:
    """What ``llm.completed`` records as the call's cost, or None when its model has no price."""
    prices = runtime_config(app).budgets.prices
    micros = prices.cost_micros(completion.provider, completion.model, completion.usage)
    if micros is None:
        return None
    return {"micros": micros, "amount": format_micros(micros), "currency": prices.currency}
