"""The pure rules of approvals: who may decide, how steps that need a person are declared, and the
table's one-decision-wins UPDATE on a SQLite file (the integration tests race it on both databases)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from relaybus.eventstore import open_store
from relaybus.eventstore.approvals import Approval
from relaybus.sagas import APPROVAL_TASK, DefinitionError, Step, approval_step
from relaybus.settings import Settings
from relaybus.tasks.pipelines.definition import Pipeline
from relaybus.tasks.runtime.approvals import refusal_reason
from tests.agents import ProbeInput

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def approval(**changes: object) -> Approval:
    values: dict[str, object] = {
        "id": "a1", "workflow": "w1", "workflow_kind": "pipeline", "step": "sign_off", "subject": {"api_key": "sk-x"},
        "approvers": ("alice", "role:editor"), "requested_at": NOW, "deadline": NOW + timedelta(hours=1),
        "requested_event_id": "e1",
    }
    values.update(changes)
    return Approval.model_validate(values)


def test_an_approver_is_named_or_holds_a_named_role():
    a = approval()
    assert a.allows("alice")
    assert a.allows("erin", ["editor"]) and not a.allows("erin", ["viewer"])
    assert not a.allows("editor")  # a role is not a principal
    with pytest.raises(ValidationError):
        approval(approvers=())


def test_the_refusal_reason_starts_with_its_code():
    rejected = approval(status="rejected", decided_by="bob", reason="too long")
    assert refusal_reason(rejected) == "approval-rejected: step 'sign_off' rejected by bob: too long"
    assert refusal_reason(approval(status="expired")).startswith("approval-expired: step 'sign_off' had no decision by")


def test_an_approval_step_outlasts_its_approval_and_is_built_only_with_approval_step():
    step = approval_step("ship_ok", approvers=["role:ops"], timeout_s=60)
    assert step.task == APPROVAL_TASK and step.approval is not None and step.timeout_s > step.approval.timeout_s
    with pytest.raises(DefinitionError, match="approval_step"):
        Step(name="sneaky", task=APPROVAL_TASK, timeout_s=10)
    with pytest.raises(DefinitionError, match="at least one approver"):
        approval_step("nobody", approvers=[], timeout_s=60)


def test_a_pipeline_approval_needs_approvers_and_a_positive_timeout():
    p: Pipeline[ProbeInput] = Pipeline("approval-rules", input=ProbeInput)
    with pytest.raises(ValueError, match="names no approver"):
        p.approval("sign_off", approvers=[], timeout_s=10)
    with pytest.raises(ValueError, match="timeout_s must be positive"):
        p.approval("sign_off", approvers=["alice"], timeout_s=0)
    p.step("probe").approval("sign_off", approvers=["alice"], timeout_s=10)
    assert p.describe()[-1] == "approval sign_off: by alice within 10 s"


def test_approver_roles_come_from_json_in_the_environment_and_back():
    settings = Settings(approver_roles='{"alice": ["editor", "ops"]}')  # type: ignore[arg-type]
    assert settings.approver_roles == {"alice": ("editor", "ops")}
    assert Settings(approver_roles=settings.to_env()["RELAYBUS_APPROVER_ROLES"]).approver_roles == {  # type: ignore[arg-type]
        "alice": ("editor", "ops")
    }


def test_the_table_redacts_the_subject_and_lets_one_decision_win(tmp_path: Path):
    store = open_store(f"sqlite:///{tmp_path / 'events.sqlite'}")
    try:
        stored, inserted = store.approvals.request(approval())
        assert inserted and stored.subject == {"api_key": "[REDACTED]"}
        assert store.approvals.request(approval(step="other"))[1] is False  # the same id: the first request stays
        assert store.approvals.decide("a1", "approved", by="alice", reason=None, now=NOW)
        assert not store.approvals.decide("a1", "rejected", by="erin", reason=None, now=NOW)
        assert not store.approvals.decide("a1", "expired", by="sweep", reason=None, now=NOW + timedelta(days=1))
        assert store.approvals.get("a1").decided_by == "alice"  # type: ignore[union-attr]

        store.approvals.request(approval(id="a2"))
        late = NOW + timedelta(hours=2)
        assert not store.approvals.decide("a2", "approved", by="alice", reason=None, now=late)  # past its deadline
        assert [a.id for a in store.approvals.due(late)] == ["a2"]
        assert store.approvals.waiting(["w1", "w9"]) == {"w1"}
        assert store.approvals.decide("a2", "expired", by="sweep", reason="no decision", now=late)
        assert store.approvals.due(late) == [] and store.approvals.waiting(["w1"]) == set()
    finally:
        store.close()
