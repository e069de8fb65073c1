"""The services relaybus stands on go away mid-run, and come back.

* **RabbitMQ restarted** (stopped, down a few seconds, booted on the same data): durable queues,
  persistent messages and publisher confirms mean nothing is lost; workers and clients reconnect and
  every workflow ends as its input asks, with every transition in the log.
* **PostgreSQL stopped for 10 s**: the event log and the saga's side-effect tables are away. Recording
  waits and retries, agent steps that touch the database retry as transient errors, workers survive,
  nothing is lost from the log.
* **Redis restarted** (no persistence: every key is lost): chords whose counts were in Redis either
  complete (they had not started counting) or fail cleanly into their error path with the reason;
  no workflow hangs. Sagas do not use Redis and end as asked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from tests.chaos import figures
from tests.chaos.conftest import Scale
from tests.chaos.services import PrivatePostgres, PrivateRabbitMQ, PrivateRedis, PrivateService
from tests.chaos.system import ChaosSystem, Verdict, Workflow, problems, start_workflows, verdict, wait_for_ends
from tests.harness import wait_for


def _run_with_restarts(
    system: ChaosSystem,
    scale: Scale,
    restart: Callable[[], None],
    restarts: int,
) -> tuple[list[Workflow], dict[str, str]]:
    """Start the workload while ``restarts`` restarts land among it, evenly by workflows started; wait
    for every end. Starts retry under the same id while a service is away (tests.chaos.system)."""
    workflows: list[Workflow] = []
    starter_errors: list[BaseException] = []

    def starter() -> None:
        try:
            start_workflows(system, scale.fault_pipelines, scale.fault_sagas, pace_s=0.25, seed=11, into=workflows)
        except BaseException as exc:  # surfaced below
            starter_errors.append(exc)

    thread = threading.Thread(target=starter, name="chaos-starter", daemon=True)
    thread.start()
    total = scale.fault_pipelines + scale.fault_sagas
    for n in range(1, restarts + 1):
        due = n * total // (restarts + 1)
        wait_for(
            lambda: len(workflows) >= due or bool(starter_errors),  # noqa: B023 - called right here
            scale.deadline_s,
            0.1,
            f"{due} workflows started before restart {n}",
        )
        restart()
    thread.join(timeout=scale.deadline_s)
    assert not thread.is_alive(), "starting the workflows did not finish"
    if starter_errors:
        raise starter_errors[0]
    return workflows, wait_for_ends(system, workflows, scale.deadline_s)


def _restarted_midway(
    system: ChaosSystem, scale: Scale, service: PrivateService, name: str, *, down_s: float, restarts: int
) -> tuple[list[Workflow], dict[str, str], Verdict]:
    """Run the workload through ``restarts`` restarts of ``service``; record and return the verdict."""
    began = time.monotonic()
    before = service.restarts
    workflows, ended = _run_with_restarts(system, scale, lambda: service.restart(down_s=down_s), restarts)
    system.wait_consumed(timeout=120)  # every worker reconnected and consumes again
    result = verdict(system, name, workflows, ended, began, service_restarts=service.restarts - before)
    figures.record(result.figures)
    assert service.restarts - before == restarts
    assert all(w.proc.poll() is None for w in system.workers), f"a worker exited ({name})"
    return workflows, ended, result


def test_rabbitmq_restarted_mid_run_loses_nothing(system: ChaosSystem, rabbitmq: PrivateRabbitMQ, scale: Scale) -> None:
    _, _, result = _restarted_midway(
        system, scale, rabbitmq, "RabbitMQ restarted", down_s=3.0, restarts=scale.broker_restarts
    )
    assert problems(result) == ""


def test_postgresql_stopped_for_ten_seconds_recording_waits_and_nothing_is_lost(
    system: ChaosSystem, postgres: PrivatePostgres, scale: Scale
) -> None:
    _, _, result = _restarted_midway(system, scale, postgres, "PostgreSQL down 10 s", down_s=10.0, restarts=1)
    assert problems(result) == ""


def test_redis_restarted_mid_run_chords_complete_or_fail_cleanly_and_nothing_hangs(
    system: ChaosSystem, redis_server: PrivateRedis, scale: Scale
) -> None:
    workflows, ended, result = _restarted_midway(system, scale, redis_server, "Redis restarted", down_s=1.0, restarts=1)
    # A pipeline whose chord met the restart (its count lost, or its join cut off) may fail instead of
    # completing, but only through its error path with a ChordError naming why; every other end is
    # the one its input asks for, and nothing hangs (wait_for_ends has a deadline).
    assert problems(result, allowed_wrong_end="ChordError") == ""
    assert all(w.kind == "pipeline" for w in workflows if ended[w.id] != w.expect), "a saga ended wrong"
