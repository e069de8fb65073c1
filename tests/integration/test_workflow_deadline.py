"""Every workflow ends: a pipeline that stops making progress is ended ``timed_out`` by the sweep.

Real RabbitMQ, Redis and worker processes; the sweep and the listing run as the real CLI (``relaybus``
in a subprocess, configured by the test's settings), and once as the beat task on a worker. The test's
pipelines (``tests.deadline_pipelines``) have a deadline of two seconds; no worker consumes ``flaky``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relaybus.tasks.bus.bus import handler_task_name
from relaybus.tasks.bus.events import derived_id
from relaybus.tasks.errors import PipelineFailure
from relaybus.tasks.pipelines.client import PipelineHandle, start
from relaybus.tasks.pipelines.deadline import SWEEP_TASK, outcome_event_id
from tests.deadline_pipelines import DEADLINE_S
from tests.harness import ROOT, wait_for
from tests.integration.system import TEST_MODULES, System, running_system, system_settings
from tests.services import require_rabbitmq, require_redis

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    broker, redis = require_rabbitmq(), require_redis()
    tmp: Path = tmp_path_factory.mktemp("deadline")
    settings = system_settings(tmp, broker, redis, extra_modules=(*TEST_MODULES, "tests.deadline_pipelines"))
    with running_system(settings, tmp, [(("system", "probe"), 2)]) as running:
        yield running


def cli(system: System, *args: str) -> Any:
    """``relaybus ARGS --json`` as an operator runs it, against the test's services; its JSON output."""
    env = {**system.settings.to_env(), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "relaybus.cli", *args, "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def stuck_ids(system: System) -> list[str]:
    return [row["correlation_id"] for row in cli(system, "workflows", "list", "--stuck")]


def outcome_records(handle: PipelineHandle) -> list[Any]:
    return [e for e in handle.events() if e.type in ("pipeline.completed", "pipeline.failed", "pipeline.timed_out")]


def started(system: System, name: str, **probe: Any) -> PipelineHandle:
    return start(name, {"key": f"deadline:{uuid.uuid4().hex}", **probe}, app=system.app)


def test_a_stalled_pipeline_is_ended_timed_out_by_the_sweep_once_and_a_completed_one_is_never_touched(system):
    done = started(system, "deadline-finishes")
    assert done.wait(30).status == "completed"
    stalled = started(system, "deadline-stalls")
    # Its first step runs, the second waits on a queue nobody consumes: running, then stuck past 2 s.
    wait_for(lambda: stalled.id in stuck_ids(system), 30, 0.2, "the stalled pipeline listed as stuck")
    assert stalled.status() == "running"
    assert done.id not in stuck_ids(system)

    report = cli(system, "sweep")
    pipelines = report["pipelines"]
    assert list(pipelines["timed_out"]) == [stalled.id], report
    reason = pipelines["timed_out"][stalled.id]
    assert reason.startswith(f"no progress for {DEADLINE_S:g} s (its deadline); last record "), reason
    assert not pipelines["errors"] and "sagas" in report

    # The client blocked on the outcome wakes, through the pipeline's outcome path.
    outcome = stalled.wait(30)
    assert (outcome.status, outcome.reason, outcome.pipeline) == ("timed_out", reason, "deadline-stalls")
    assert stalled.status() == "timed_out"
    with pytest.raises(PipelineFailure, match="no progress for 2 s"):
        stalled.result()

    # The log holds one outcome: the timed-out record, with why; pipeline.started carries the deadline.
    [record] = wait_for(lambda: outcome_records(stalled), 30, what="the timed-out record")
    assert record.type == "pipeline.timed_out"
    assert (record.payload["status"], record.payload["reason"], record.payload["deadline_s"]) == (
        "timed_out", reason, DEADLINE_S)
    [opened] = [e for e in stalled.events() if e.type == "pipeline.started"]
    assert opened.payload["deadline_s"] == DEADLINE_S

    assert stalled.id not in stuck_ids(system)
    assert stalled.id in [r["correlation_id"] for r in cli(system, "workflows", "list", "--status", "timed_out")]

    # A second sweep, from the CLI and as beat runs it on a worker, finds nothing to end.
    again = cli(system, "sweep")["pipelines"]
    assert (again["timed_out"], again["pending"], again["errors"]) == ({}, [], {})
    beat = system.app.send_task(SWEEP_TASK).get(timeout=30)
    assert (beat["timed_out"], beat["pending"], beat["errors"]) == ({}, [], {})
    assert [r.type for r in outcome_records(stalled)] == ["pipeline.timed_out"]

    # The pipeline that completed keeps its one outcome.
    assert [r.type for r in outcome_records(done)] == ["pipeline.completed"]
    assert PipelineHandle(done.id, system.app).wait(5).status == "completed"


def test_a_step_that_completes_after_its_pipeline_timed_out_does_not_change_the_outcome(system):
    # The probe sleeps 15 s: no record for longer than the 2 s deadline, then it finishes late.
    late = started(system, "deadline-finishes", sleep_s=15)

    def swept() -> bool:
        return late.id in cli(system, "sweep")["pipelines"]["timed_out"]

    wait_for(swept, 12, 0.2, "the sweep to end the sleeping pipeline")
    assert late.wait(30).status == "timed_out"

    # The step finishes and the pipeline publishes pipeline.completed: a duplicate of its outcome event.
    handler = derived_id(outcome_event_id(late.id), handler_task_name("system", "record_outcome"))
    # Its handler runs a second time (the same task id: its records and stored result stay the first run's, and
    # the worker's log no longer prints results): the log shows the second run succeed.
    def handler_runs() -> int:
        return sum(f"[{handler}] succeeded" in line for w in system.workers for line in w.log().splitlines())

    wait_for(lambda: handler_runs() >= 2, 40, 0.2, "the late completion delivered")
    assert any(e.type == "task.succeeded" and e.agent == "probe" for e in late.events())
    assert [r.type for r in outcome_records(late)] == ["pipeline.timed_out"]
    assert PipelineHandle(late.id, system.app).wait(5).status == "timed_out"
