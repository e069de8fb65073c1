"""Workers SIGKILLed again and again while pipelines and sagas run: every workflow ends as its input
asks, no transition is missing from the log, no side effect is applied twice. Some kills take only a worker's
group-commit writer (tasks.runtime.recording.hostwriter), whose pool processes then write their records
themselves."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.chaos import figures
from tests.chaos.conftest import Scale
from tests.chaos.system import ChaosSystem, Killer, problems, start_workflows, verdict, wait_for_ends


@pytest.mark.parametrize("group_commit", [False, True], ids=["direct", "group-commit"])
def test_pipelines_and_sagas_end_as_asked_while_workers_are_killed_every_second_or_two(
    private_system: Callable[..., ChaosSystem], scale: Scale, group_commit: bool
) -> None:
    system = private_system(3, group_commit=group_commit)
    began = time.monotonic()
    killer = Killer(system, interval=(1.0, 2.0), seed=20261125)
    killer.start()
    try:
        workflows = start_workflows(system, scale.kill_pipelines, scale.kill_sagas, pace_s=scale.kill_pace_s)
        ended = wait_for_ends(system, workflows, scale.deadline_s)
    finally:
        killer.stop()
    system.wait_consumed()  # the replacements serve every queue again

    result = verdict(
        system,
        "kill loop" + (" (group commit)" if group_commit else ""),
        workflows,
        ended,
        began,
        workers_killed=killer.kills["worker"],
        pool_children_killed=killer.kills["pool child"],
        host_writers_killed=killer.kills["host writer"],
    )
    figures.record(result.figures)
    assert killer.kills["worker"] >= 3, f"the loop must kill workers mid-run, it killed {dict(killer.kills)}"
    if system.settings.group_commit:
        assert killer.kills["host writer"] >= 1, f"the loop must kill a host writer, it killed {dict(killer.kills)}"
    assert problems(result) == ""
