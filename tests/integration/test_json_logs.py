"""``RELAYBUS_LOG_JSON=true``: a real worker's log records are JSON lines, and those written while a task runs
carry its task id, agent and the workflow's correlation and causation ids (relaybus.logs)."""

from __future__ import annotations

import json
import uuid

import pytest

from relaybus.tasks.runtime.context import workflow_context
from tests.harness import wait_for

pytestmark = pytest.mark.integration


def test_a_json_logging_worker_tags_every_task_line_with_its_workflow(app, settings, start_worker):
    worker = start_worker("probe", "flaky", settings=settings.model_copy(update={"log_json": True}))
    with workflow_context() as correlation_id:
        ok = app.tasks["agents.probe"].apply_async(kwargs={"key": f"log:{uuid.uuid4().hex}"})
        failing = app.tasks["agents.flaky"].apply_async(kwargs={"key": f"log:{uuid.uuid4().hex}"})
    assert ok.get(timeout=60)["value"] == 1
    wait_for(lambda: failing.ready(), 60, 0.1, "the flaky task to end")

    def task_lines() -> list[dict]:
        records = []
        for line in worker.log().splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))  # a record that starts as JSON is JSON, whole, on one line
        return [r for r in records if r.get("task_id") in (ok.id, failing.id)]

    # The worker logs each task's end (and the flaky one's retries and dead-lettering) while it runs.
    lines = wait_for(lambda: (ls := task_lines()) and {r["task_id"] for r in ls} == {ok.id, failing.id} and ls,
                     30, 0.2, "JSON lines of both tasks")
    for record in lines:
        assert record["correlation_id"] == correlation_id, record
        assert record["agent"] in ("probe", "flaky") and record["level"] and record["message"], record
        assert {"ts", "logger", "process"} <= set(record), record
    # No record is written as Celery's text format: every log line of the worker is JSON (the banner is not a log).
    text_records = [line for line in worker.log().splitlines() if line.startswith("[20")]
    assert text_records == [], text_records[:5]
