"""Pipelines and a saga that wait for a person, for tests/integration/test_approvals.py.

Workers import this module (``RELAYBUS_EXTRA_MODULES``).

* ``approval-probe``: probe, then an approval (alice, or anyone holding the role ``editor``), then probe again.
* ``approval-hurry``: the same with one second to decide, so the sweep expires it.
* saga ``approval_content``: research, writing, review (each undone by its compensation), an approval step
  (alice), then publishing. Rejected: review then writing are undone, last first.
"""

from __future__ import annotations

from relaybus.sagas import SagaDefinition, Step, approval_step
from relaybus.tasks.pipelines.definition import Pipeline
from relaybus.tasks.saga import register_saga
from tests.agents import ProbeInput

APPROVERS = ("alice", "role:editor")


def _after(s: object) -> dict[str, str]:
    return {"key": s.run.key, "label": "after"}  # type: ignore[attr-defined]


probe_approval: Pipeline[ProbeInput] = Pipeline("approval-probe", input=ProbeInput, description="probe, ask, probe")
probe_approval.step("probe").approval(
    "sign_off", approvers=APPROVERS, timeout_s=120, subject=lambda s: {"probed": s.prev, "api_key": s.run.api_key}
).step("probe", name="after", input=_after)

hurry: Pipeline[ProbeInput] = Pipeline("approval-hurry", input=ProbeInput, description="probe, ask briefly, probe")
hurry.step("probe").approval("sign_off", approvers=APPROVERS, timeout_s=1.0).step("probe", name="after", input=_after)

SAGA = register_saga(
    SagaDefinition(
        name="approval_content",
        steps=(
            Step(name="research", task="agents.researcher.saga_research", timeout_s=120),
            Step(name="writing", task="agents.writer.saga_draft", compensation="agents.writer.discard_draft",
                 timeout_s=120),
            Step(name="review", task="agents.reviewer.saga_review", compensation="agents.reviewer.cancel_review",
                 timeout_s=120),
            approval_step("sign_off", approvers=("alice",), timeout_s=120),
            Step(name="publishing", task="agents.publisher.saga_publish", compensation="agents.publisher.unpublish",
                 timeout_s=120),
        ),
    )
)
