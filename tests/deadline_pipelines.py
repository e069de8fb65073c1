"""Pipelines with a deadline of two seconds, for tests/integration/test_workflow_deadline.py.

Workers import this module (``RELAYBUS_EXTRA_MODULES``). None of the test's workers consumes ``flaky``,
so ``deadline-stalls`` stops for good after its first step, with its next task waiting on a queue.
"""

from __future__ import annotations

from relaybus.tasks.pipelines.definition import Pipeline
from tests.agents import ProbeInput

DEADLINE_S = 2.0

stalls: Pipeline[ProbeInput] = Pipeline(
    "deadline-stalls", input=ProbeInput, deadline_s=DEADLINE_S, description="probe, then a step nobody runs"
)
stalls.step("probe").step("flaky", input=lambda s: {"key": s.run.key})

finishes: Pipeline[ProbeInput] = Pipeline("deadline-finishes", input=ProbeInput, deadline_s=DEADLINE_S)
finishes.step("probe")
