"""``/metrics``: Prometheus' text format, computed at scrape time.

* Queue gauges from AMQP (passive declares, as ``relaybus status``): depth, urgent depth, dead-letter depth
  and consumers per agent and event subscriber.
* Workflows by status (``completed``, ``failed``, ``compensated``...) from the status projection: gauges.
* Per agent, counters and histograms folded from the log since the console started, with a look-back
  (:mod:`relaybus.web.counting`): ``relaybus_tasks_total{agent,outcome}``,
  ``relaybus_task_run_seconds`` and ``relaybus_task_queue_wait_seconds`` (``_bucket``/``_sum``/``_count``),
  ``relaybus_llm_calls_total`` and ``relaybus_llm_tokens_total{agent,model,kind}``. p95 run time of an agent
  over 5 minutes: ``histogram_quantile(0.95, rate(relaybus_task_run_seconds_bucket[5m]))``.

Each scrape reads only the records appended since the last one (and the projection's status counts): it
stays fast on a log of millions of events. ``relaybus_source_up`` says which source answered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest

from relaybus.eventstore import EventStore
from relaybus.status import QueueStatus
from relaybus.web.counting import Counters, Snapshot


class _Collector:
    def __init__(self, queues: Callable[[], list[QueueStatus]], store: EventStore, counters: Counters) -> None:
        self.queues, self.store, self.counters = queues, store, counters

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
        yield from _queue_metrics(queues)
        snapshot: Snapshot | None = None
        counts: dict[str, int] = {}
        try:
            snapshot = self.counters.update(utcnow())
            self.store.projection.catch_up()
            counts = self.store.projection.status_counts()
            up.add_metric(["eventstore"], 1)
        except Exception:
            up.add_metric(["eventstore"], 0)
        yield up
        workflows = GaugeMetricFamily("relaybus_workflows", "Workflows in the event log by status", labels=["status"])
        for status, count in sorted(counts.items()):
            workflows.add_metric([status], count)
        yield workflows
        if snapshot is not None:
            yield from _task_metrics(snapshot)


def _queue_metrics(queues: list[QueueStatus]) -> Iterator[Metric]:
    depth = GaugeMetricFamily("relaybus_queue_depth", "Messages ready in the queue", labels=["agent", "kind"])
    urgent = GaugeMetricFamily("relaybus_queue_urgent_depth", "Messages ready in the urgent queue", labels=["agent"])
    dlq = GaugeMetricFamily("relaybus_dead_letter_depth", "Messages in the dead-letter queue", labels=["agent", "kind"])
    consumers = GaugeMetricFamily("relaybus_queue_consumers", "Consumers of the queue", labels=["agent", "kind"])
    for q in queues:
        for family, value in ((depth, q.depth), (consumers, q.consumers), (dlq, q.dead_letter_depth)):
            if value is not None:
                family.add_metric([q.agent, q.kind], value)
        if q.urgent_depth is not None:
            urgent.add_metric([q.agent], q.urgent_depth)
    yield from (depth, urgent, dlq, consumers)


def _task_metrics(s: Snapshot) -> Iterator[Metric]:
    since = GaugeMetricFamily("relaybus_metrics_since_timestamp_seconds",
                              "When the relaybus_task*/relaybus_llm* totals start (console start minus the look-back)")
    if s.since is not None:
        since.add_metric([], s.since.timestamp())
    yield since
    tasks = CounterMetricFamily("relaybus_tasks", "Task outcomes recorded (succeeded, failed, dead_lettered, "
                                "revoked, rejected, retried)", labels=["agent", "outcome"])
    for (agent, outcome), n in sorted(s.outcomes.items()):
        tasks.add_metric([agent, outcome], n)
    yield tasks
    for name, doc, histograms in (
        ("relaybus_task_run_seconds", "Task run time (finish - last start)", s.run_time),
        ("relaybus_task_queue_wait_seconds", "Task queue wait (first start - send)", s.queue_wait),
    ):
        family = HistogramMetricFamily(name, doc, labels=["agent"])
        for agent, h in sorted(histograms.items()):
            family.add_metric([agent], h.cumulative(), sum_value=h.total)
        yield family
    calls = CounterMetricFamily("relaybus_llm_calls", "LLM completions recorded", labels=["agent", "model"])
    for (agent, model), n in sorted(s.llm_calls.items()):
        calls.add_metric([agent, model], n)
    tokens = CounterMetricFamily("relaybus_llm_tokens", "LLM tokens (prompt, completion)",
                                 labels=["agent", "model", "kind"])
    for (agent, model, kind), n in sorted(s.llm_tokens.items()):
        tokens.add_metric([agent, model, kind], n)
    # Priced calls only (RELAYBUS_LLM_PRICES): exact sums of micro-units, exported in the currency's unit.
    cost = CounterMetricFamily("relaybus_llm_cost", "LLM cost of priced calls, in the price table's currency",
                               labels=["agent", "model", "currency"])
    for (agent, model, currency), micros in sorted(s.llm_cost_micros.items()):
        cost.add_metric([agent, model, currency], micros / 1_000_000)
    yield from (calls, tokens, cost)


def exposition(queues: Callable[[], list[QueueStatus]], store: EventStore, counters: Counters) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(queues, store, counters))
    return generate_latest(registry)
