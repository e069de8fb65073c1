"""OpenTelemetry (``RELAYBUS_OTEL``): a whole pipeline (chain, chord, event hops) and a compensated saga are each
one trace, every span's parent in it, across real worker processes. Spans are written as JSON lines
(``RELAYBUS_OTEL_FILE``), the exporter an operator would point at a collector replaced by a file."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.harness import wait_for
from tests.integration.system import (
    REFERENCE_AGENTS,
    completed_pipeline_and_compensated_saga,
    running_system,
    system_settings,
    task_ids_of,
)

pytestmark = pytest.mark.integration

def spans_of(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tree(spans: list[dict[str, Any]], trace_id: str) -> str:
    """The trace as an indented text tree: name, and the agent and outcome when the span has them."""
    mine = [s for s in spans if s["context"]["trace_id"] == trace_id]
    children: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    for s in sorted(mine, key=lambda s: s["start_time"]):
        children[s["parent_id"]].append(s)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for s in children.get(parent, []):
            a = s.get("attributes", {})
            keys = ("relaybus.agent", "relaybus.outcome", "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens")
            extra = " ".join(f"{k.split('.')[-1]}={a[k]}" for k in keys if k in a)
            lines.append(f"{'  ' * depth}{s['name']} {extra}".rstrip())
            walk(s["context"]["span_id"], depth + 1)

    walk(None, 0)
    return "\n".join(lines)


def check_one_trace(spans: list[dict[str, Any]], correlation_id: str, task_ids: set[str], what: str) -> str:
    runs = [s for s in spans if s.get("attributes", {}).get("relaybus.correlation_id") == correlation_id
            and s["kind"] == "SpanKind.CONSUMER" and s["name"].startswith("run/")]
    seen_tasks = {s["attributes"].get("celery.task_id") or s["attributes"].get("messaging.message.id") for s in runs}
    assert task_ids <= seen_tasks, f"{what}: tasks without a run span: {task_ids - seen_tasks}"
    traces = {s["context"]["trace_id"] for s in runs}
    assert len(traces) == 1, f"{what}: its task runs fall into {len(traces)} traces"
    (trace_id,) = traces
    mine = [s for s in spans if s["context"]["trace_id"] == trace_id]
    ids = {s["context"]["span_id"] for s in mine}
    roots = [s for s in mine if s["parent_id"] is None]
    assert len(roots) == 1, f"{what}: {len(roots)} roots"
    orphans = [s["name"] for s in mine if s["parent_id"] is not None and s["parent_id"] not in ids]
    assert orphans == [], f"{what}: spans whose parent is not in the trace: {orphans}"
    return trace_id


def test_a_pipeline_and_a_compensated_saga_are_each_one_trace(tmp_path, broker_url, redis_url):
    spans_file = tmp_path / "spans.jsonl"
    settings = system_settings(tmp_path, broker_url, redis_url, otel=True, otel_file=str(spans_file))
    with running_system(settings, tmp_path, [(REFERENCE_AGENTS, 3)]) as system:
        pipeline_id, saga_id = completed_pipeline_and_compensated_saga(system, "traces")
        task_ids = task_ids_of(system, [pipeline_id, saga_id])

        def all_ended() -> list[dict[str, Any]] | None:
            spans = spans_of(spans_file)
            ran = {s["attributes"].get("celery.task_id") or s["attributes"].get("messaging.message.id")
                   for s in spans if s["name"].startswith("run/")}
            return spans if set().union(*task_ids.values()) <= ran else None

        spans = wait_for(all_ended, 30, 0.2, "every task's run span")
    pipeline_trace = check_one_trace(spans, pipeline_id, task_ids[pipeline_id], "the pipeline")
    saga_trace = check_one_trace(spans, saga_id, task_ids[saga_id], "the saga")
    assert pipeline_trace != saga_trace
    hops = [s for s in spans if s["name"].startswith("relaybus.event/") and s["context"]["trace_id"] == pipeline_trace]
    assert hops, "the pipeline's event hops are in its trace"
    agent_runs = [s["attributes"] for s in spans if s["name"].startswith("run/agents.")]
    assert agent_runs and all(a.get("relaybus.outcome") == "SUCCESS" and a.get("relaybus.agent") and
                              a.get("relaybus.attempt") == 1 for a in agent_runs
                              if a.get("relaybus.correlation_id") == pipeline_id), agent_runs
    # The agents that call the LLM (the offline provider here) count its tokens on their run's span.
    writers = [s["attributes"] for s in spans if s["name"] == "run/agents.writer"
               and s["attributes"].get("relaybus.correlation_id") == pipeline_id]
    assert writers and writers[0].get("gen_ai.usage.output_tokens", 0) > 0, writers
    print("\npipeline trace:\n" + tree(spans, pipeline_trace))
    print("\nsaga trace:\n" + tree(spans, saga_trace))
