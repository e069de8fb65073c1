"""The reference pipeline's agents as plain functions, with the offline provider (no broker)."""

from __future__ import annotations

import pytest

from relaybus.tasks.agents import intake, planner, publisher, researcher, reviewer, writer
from relaybus.tasks.agents.pipeline import research
from relaybus.tasks.agents.pipeline_models import (
    Draft,
    Findings,
    IntakeInput,
    PipelineOptions,
    PlanInput,
    ResearchRequest,
    ResearchTask,
    ReviewPolicy,
    WriteInput,
)
from relaybus.tasks.errors import PermanentError
from relaybus.tasks.llm import OfflineProvider
from relaybus.tasks.pipelines.definition import FanOut, StepInput
from relaybus.tasks.runtime.settle import member_failure
from relaybus.tasks.tools import SearchTool

LLM = OfflineProvider()
SEARCH = SearchTool()
REQUEST = "Compare retries, sagas, idempotency, chords and dead-letter queues for agent pipelines"


def plan(max_topics: int = 3):
    parsed = intake.run(IntakeInput(request=REQUEST, max_topics=max_topics), LLM)
    return planner.run(PlanInput(**parsed.model_dump()), SEARCH)


def draft(round_: int = 1, findings: int = 2, policy: ReviewPolicy | None = None) -> Draft:
    topics = plan(findings).topics
    found = [researcher.run(ResearchTask(request=REQUEST, topic=t, index=i), LLM, SEARCH) for i, t in enumerate(topics)]
    options = PipelineOptions(review=policy or ReviewPolicy())
    return writer.run(WriteInput(request=REQUEST, findings=found, options=options, round=round_), LLM)


def test_intake_classifies_and_the_planner_picks_at_most_max_topics():
    parsed = intake.run(IntakeInput(request=REQUEST, max_topics=5), LLM)
    assert parsed.category == "comparison"
    assert {"retries", "sagas", "chords"} <= set(parsed.keywords)
    assert len(plan(5).topics) == 5
    assert plan(0).topics == [] and plan(0).tools == []
    assert plan(2).tools == ["search", "llm"]


def test_the_pipeline_is_deterministic_with_the_offline_provider():
    assert draft() == draft()


def test_a_researcher_cites_the_corpus_and_an_injected_failure_is_permanent():
    findings = researcher.run(ResearchTask(request=REQUEST, topic="sagas", index=0), LLM, SEARCH)
    assert findings.sources and findings.sources[0].doc_id in {d.id for d in SEARCH.documents}
    with pytest.raises(PermanentError, match="injected failure: researcher 3"):
        researcher.run(ResearchTask(request=REQUEST, topic="x", index=3, fail=True), LLM, SEARCH)


def test_the_writer_takes_the_fan_outs_results_with_failures_listed():
    ok = researcher.run(ResearchTask(request=REQUEST, topic="sagas", index=1), LLM, SEARCH).model_dump()
    failed = member_failure("agents.researcher", "t0", PermanentError("down"))
    run = ResearchRequest(request=REQUEST)
    plan = {"request": REQUEST, "topics": ["a", "sagas"], "tools": []}
    fan_out = next(i for i, s in enumerate(research.stages) if isinstance(s, FanOut))
    inp = WriteInput.model_validate(research.fan_in_input(fan_out, [failed, ok], StepInput(run, plan, "p1")))
    assert [f.index for f in inp.findings] == [1]
    assert inp.failed_topics == ["agents.researcher (PermanentError: down)"]
    assert "## Not covered" in writer.run(inp, LLM).body
    alone = research.fan_in_input(fan_out, ok, StepInput(run, plan, "p1"))  # a fan-out of one: a bare value
    assert WriteInput.model_validate(alone).findings == [Findings.model_validate(ok)]


def test_the_reviewer_rejects_the_first_m_drafts_then_approves():
    policy = ReviewPolicy(reject_drafts=1)
    first = reviewer.run(draft(1, policy=policy), policy, LLM)
    assert not first.approved and "rejected by policy" in first.feedback[0]
    assert reviewer.run(draft(2, policy=policy), policy, LLM).approved


def test_the_reviewer_names_banned_terms_and_the_revision_removes_them():
    policy = ReviewPolicy(banned_terms=("sagas",))
    verdict = reviewer.run(draft(policy=policy), policy, LLM)
    assert "remove the banned term 'sagas'" in verdict.feedback
    first = draft(policy=policy)
    again = WriteInput(request=REQUEST, findings=first.findings, round=2, feedback=verdict.feedback,
                       options=first.options)
    assert reviewer.run(writer.run(again, LLM), policy, LLM).approved


def test_the_publisher_verifies_what_it_publishes():
    article = publisher.run(draft(), SEARCH)
    assert article.sha256 and article.slug.startswith("compare-retries")
    with pytest.raises(PermanentError, match="checksum"):
        publisher.verify(article.model_copy(update={"body": article.body + "tampered"}), SEARCH)
    with pytest.raises(PermanentError, match="unknown sources: nowhere"):
        publisher.verify(article.model_copy(update={"sources": ["nowhere"]}), SEARCH)


def test_the_request_model_bounds_what_a_client_may_ask():
    with pytest.raises(ValueError, match="max_topics"):
        ResearchRequest(request=REQUEST, max_topics=21)
    with pytest.raises(ValueError, match="max_rounds"):
        ResearchRequest(request=REQUEST, review={"max_rounds": 0})
