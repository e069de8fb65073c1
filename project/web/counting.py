"""Prometheus counters and histograms folded from the log, incrementally: what ``/metrics`` exposes per agent.

A console process folds the task and LLM records appended since its last scrape (two indexed reads from
the position it reached: cheap at any size of log) into running totals: task outcomes, run-time and
queue-wait histograms per agent, LLM calls and tokens per agent and model. At its first scrape it starts
:data:`LOOKBACK` back, so a console started after the work still shows it. The totals count from that
start, and start again with the process, as Prometheus counters may: ``rate()`` and
``histogram_quantile()`` over them take a restart in their stride, and every replica of the console,
reading the same log, exposes the same numbers.

Queue wait = first start - send; run time = finish - last start (:class:`eventstore.TaskStep`'s
definitions), each observed once per task delivery. A task that fails for good records ``task.failed`` and
``task.dead_lettered``: both outcomes count.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from relaybus.eventstore import EventStore, RecordedEvent
from relaybus.eventstore import types as t
from relaybus.eventstore.usage import call_usage

LOOKBACK = timedelta(minutes=15)
#: Upper bounds in seconds: an agent task runs from milliseconds (a tool) to minutes (an LLM chain).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
PAGE = 5000
#: At most this many records folded per scrape (the rest at the next): a scrape's time stays bounded.
MAX_PER_SCRAPE = 100_000
#: Tasks sent or started but not finished are remembered at most this long (a lost task must not grow memory).
FORGET_OPEN = timedelta(days=1)


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(BUCKETS, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, count)`` pairs as Prometheus wants them, ``+Inf`` last."""
        running, out = 0, list[tuple[str, float]]()
        for bound, count in zip((*map(str, BUCKETS), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


@dataclass
class _Open:
    agent: str | None
    seen: datetime
    sent: datetime | None = None
    first_start: datetime | None = None
    last_start: datetime | None = None
    waited: bool = False
    finished: bool = False


@dataclass
class Snapshot:
    """The totals at one scrape (copies: the scrape renders them without the lock)."""

    outcomes: dict[tuple[str, str], int]
    run_time: dict[str, Histogram]
    queue_wait: dict[str, Histogram]
    llm_calls: dict[tuple[str, str], int]
    llm_tokens: dict[tuple[str, str, str], int]
    since: datetime | None
    position: int
    #: Micro-units per (agent, model, currency) of the priced calls (RELAYBUS_LLM_PRICES).
    llm_cost_micros: dict[tuple[str, str, str], int] = field(default_factory=dict)


class Counters:
    """The running totals of one console process; :meth:`update` folds what the log gained since the last call."""

    def __init__(self, store: EventStore, lookback: timedelta = LOOKBACK) -> None:
        self.store, self.lookback = store, lookback
        self._lock = threading.Lock()
        self._positions: dict[str, int] | None = None
        self.since: datetime | None = None
        self._open: dict[str, _Open] = {}
        self.outcomes: dict[tuple[str, str], int] = {}
        self.run_time: dict[str, Histogram] = {}
        self.queue_wait: dict[str, Histogram] = {}
        self.llm_calls: dict[tuple[str, str], int] = {}
        self.llm_tokens: dict[tuple[str, str, str], int] = {}
        self.llm_cost_micros: dict[tuple[str, str, str], int] = {}

    def update(self, now: datetime) -> Snapshot:
        with self._lock:
            if self._positions is None:
                self.since = now - self.lookback
                self._positions = {"task.*": 0, t.LLM_COMPLETED: 0}
            for pattern in ("task.*", t.LLM_COMPLETED):
                self._read(pattern)
            self._forget(now)
            return Snapshot(
                dict(self.outcomes),
                {a: Histogram(list(h.counts), h.total) for a, h in self.run_time.items()},
                {a: Histogram(list(h.counts), h.total) for a, h in self.queue_wait.items()},
                dict(self.llm_calls), dict(self.llm_tokens), self.since, max(self._positions.values()),
                llm_cost_micros=dict(self.llm_cost_micros),
            )

    def _read(self, pattern: str) -> None:
        assert self._positions is not None
        read = 0
        while read < MAX_PER_SCRAPE:
            after = self._positions[pattern]
            # The first read of a process starts at the look-back's time, then every read after the last position.
            since = self.since if after == 0 else None
            page = self.store.find(type=pattern, since=since, after_position=after, limit=PAGE)
            for event in page:
                self._fold(event)
            if page:
                self._positions[pattern] = page[-1].position
            elif after == 0:
                self._positions[pattern] = self.store.last_position()  # nothing in the look-back: from here on
            read += len(page)
            if len(page) < PAGE:
                return

    def _fold(self, e: RecordedEvent) -> None:
        if e.type == t.LLM_COMPLETED:
            self._llm(e)
            return
        if e.task_id is None or (e.type not in t.TASK_TYPES and e.type != t.TASK_RETRIED):
            return
        state = self._open.get(e.task_id)
        if state is None:
            state = self._open[e.task_id] = _Open(e.agent, e.occurred_at)
        state.agent = state.agent or e.agent
        state.seen = e.occurred_at
        at = e.occurred_at
        if e.type == t.TASK_SENT:
            state.sent = at if state.sent is None else min(state.sent, at)
        elif e.type == t.TASK_STARTED:
            state.first_start = at if state.first_start is None else min(state.first_start, at)
            state.last_start = at
        elif e.type == t.TASK_RETRIED:
            self._count(state.agent, "retried")
        # The send can be recorded after the start (the sender records it once the broker confirmed).
        if not state.waited and state.sent is not None and state.first_start is not None and state.agent:
            self.queue_wait.setdefault(state.agent, Histogram()).observe(
                max((state.first_start - state.sent).total_seconds(), 0.0))
            state.waited = True
        if e.type in t.TERMINAL_TASK_TYPES:
            self._count(state.agent, e.type.split(".", 1)[1])
            if state.last_start is not None and state.agent:
                run = max((at - state.last_start).total_seconds(), 0.0)
                self.run_time.setdefault(state.agent, Histogram()).observe(run)
            state.last_start, state.finished = None, True
        # Finished: forgotten, unless its send, recorded late, is still to come for the queue wait.
        if state.finished and (state.waited or state.sent is not None or state.first_start is None):
            del self._open[e.task_id]

    def _count(self, agent: str | None, outcome: str) -> None:
        if agent:
            self.outcomes[(agent, outcome)] = self.outcomes.get((agent, outcome), 0) + 1

    def _llm(self, e: RecordedEvent) -> None:
        call = call_usage(e)
        key = (call.agent or "", call.model or "")
        self.llm_calls[key] = self.llm_calls.get(key, 0) + 1
        for kind, tokens in (("prompt", call.prompt_tokens), ("completion", call.completion_tokens)):
            self.llm_tokens[(*key, kind)] = self.llm_tokens.get((*key, kind), 0) + tokens
        if call.cost_micros is not None:  # a priced call (its record carries its cost, exact integer micro-units)
            cost_key = (*key, call.currency or "")
            self.llm_cost_micros[cost_key] = self.llm_cost_micros.get(cost_key, 0) + call.cost_micros

    def _forget(self, now: datetime) -> None:
        if len(self._open) < 10_000:
            return
        horizon = now - FORGET_OPEN
        self._open = {k: v for k, v in self._open.items() if v.seen >= horizon}
