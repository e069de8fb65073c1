"""``/metrics``: Prometheus' text format, computed at scrape time.

Queue gauges come from AMQP (passive declares, as ``relaybus status``); workflow counts from the status
projection. Per-agent outcomes and percentiles come from ``EventStore.agent_stats`` over a recent window
(``relaybus_stats_window_seconds``, 15 minutes by default): gauges over that window, not counters or
histograms since the process started. LLM calls and tokens per agent and model come from the window's
``llm.completed`` events. That keeps the console stateless and correct across restarts and
replicas; a scraper sees recent behaviour, not a running total (a first version: see issue 17, item 4).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

from prometheus_client.core import CollectorRegistry, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from relaybus.eventstore import AgentStats, EventStore
from relaybus.status import QueueStatus

STATS_WINDOW = timedelta(minutes=15)


class _Collector:
    def __init__(self, queues: Callable[[], list[QueueStatus]], store: EventStore, window: timedelta) -> None:
        self.queues, self.store, self.window = queues, store, window

    def collect(self) -> Iterator[Metric]:
        from relaybus.web.pages import utcnow

        up = GaugeMetricFamily("relaybus_source_up", "1 if the console could read the source this scrape",
                               labels=["source"])
        try:
            queues = self.queues()
            up.add_metric(["amqp"], 1)
        except Exception:
            queues = []
            up.add_metric(["amqp"], 0)
        depth = GaugeMetricFamily("relaybus_queue_depth", "Messages ready in the queue", labels=["agent", "kind"])
        urgent = GaugeMetricFamily("relaybus_queue_urgent_depth", "Messages ready in the urgent queue",
                                   labels=["agent"])
        dlq = GaugeMetricFamily("relaybus_dead_letter_depth", "Messages in the dead-letter queue",
                                labels=["agent", "kind"])
        consumers = GaugeMetricFamily("relaybus_queue_consumers", "Consumers of the queue", labels=["agent", "kind"])
        for q in queues:
            for family, value, labels in ((depth, q.depth, [q.agent, q.kind]), (consumers, q.consumers,
                                          [q.agent, q.kind]), (dlq, q.dead_letter_depth, [q.agent, q.kind])):
                if value is not None:
                    family.add_metric(labels, value)
            if q.urgent_depth is not None:
                urgent.add_metric([q.agent], q.urgent_depth)
        yield from (depth, urgent, dlq, consumers)

        stats: list[AgentStats] = []
        counts: dict[str, int] = {}
        llm: dict[tuple[str, str], list[int]] = {}
        try:
            stats = self.store.agent_stats(since=utcnow() - self.window)
            llm = llm_usage(self.store.find(type="llm.completed", since=utcnow() - self.window, limit=LLM_EVENTS))
            self.store.projection.catch_up()
            counts = self.store.projection.status_counts()
            up.add_metric(["eventstore"], 1)
        except Exception:
            up.add_metric(["eventstore"], 0)
        yield up
        window = GaugeMetricFamily("relaybus_stats_window_seconds",
                                   "The window the relaybus_agent_* gauges are computed over")
        window.add_metric([], self.window.total_seconds())
        yield window
        tasks = GaugeMetricFamily("relaybus_agent_tasks", "Tasks seen in the stats window, by outcome",
                                  labels=["agent", "outcome"])
        run = GaugeMetricFamily("relaybus_agent_run_time_seconds", "Run time percentile in the stats window",
                                labels=["agent", "quantile"])
        wait = GaugeMetricFamily("relaybus_agent_queue_wait_seconds", "Queue wait percentile in the stats window",
                                 labels=["agent", "quantile"])
        for s in stats:
            tasks.add_metric([s.agent, "succeeded"], s.succeeded)
            tasks.add_metric([s.agent, "failed"], s.failures)
            tasks.add_metric([s.agent, "other"], max(s.count - s.succeeded - s.failures, 0))
            for quantile, r, w in (("0.5", s.run_time_p50_s, s.queue_wait_p50_s),
                                   ("0.95", s.run_time_p95_s, s.queue_wait_p95_s)):
                if r is not None:
                    run.add_metric([s.agent, quantile], r)
                if w is not None:
                    wait.add_metric([s.agent, quantile], w)
        workflows = GaugeMetricFamily("relaybus_workflows", "Workflows in the event log by status", labels=["status"])
        for status, count in sorted(counts.items()):
            workflows.add_metric([status], count)
        calls = GaugeMetricFamily("relaybus_llm_calls", "LLM completions in the stats window",
                                  labels=["agent", "model"])
        tokens = GaugeMetricFamily("relaybus_llm_tokens", "LLM tokens in the stats window (prompt, completion)",
                                   labels=["agent", "model", "kind"])
        for (agent, model), (n, prompt, completion) in sorted(llm.items()):
            calls.add_metric([agent, model], n)
            tokens.add_metric([agent, model, "prompt"], prompt)
            tokens.add_metric([agent, model, "completion"], completion)
        yield from (tasks, run, wait, workflows, calls, tokens)


#: The most ``llm.completed`` events one scrape reads (the newest of the window are left out beyond it).
LLM_EVENTS = 20_000


def llm_usage(events: list[Any]) -> dict[tuple[str, str], list[int]]:
    """Calls, prompt and completion tokens per (agent, model) of ``llm.completed`` events."""
    usage: dict[tuple[str, str], list[int]] = {}
    for e in events:
        completion = e.payload.get("completion") if isinstance(e.payload, dict) else None
        if not isinstance(completion, dict):
            continue
        counts = completion.get("usage") or {}
        row = usage.setdefault((e.agent or "", str(completion.get("model") or "")), [0, 0, 0])
        row[0] += 1
        row[1] += int(counts.get("prompt_tokens") or 0)
        row[2] += int(counts.get("completion_tokens") or 0)
    return usage


def exposition(queues: Callable[[], list[QueueStatus]], store: EventStore, window: timedelta = STATS_WINDOW) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(queues, store, window))
    return generate_latest(registry)
