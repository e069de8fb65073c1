"""The reference pipeline's contracts: its input, what each stage hands on, and the events it publishes.

Pure pydantic: a client imports this module (for :class:`ResearchRequest`) without the agents' code,
and a subscriber imports it for the event classes.

::

    ResearchRequest -> intake -> planner -> fan-out: researcher x N (chord) -> writer
        -> draft.written -> reviewer -> draft.approved -> publisher -> pipeline.completed
                                     -> draft.rejected -> writer (again, at most K drafts)
                                     -> pipeline.failed (the K-th draft was rejected)
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from relaybus.tasks.bus.events import Event
from relaybus.tasks.runtime.settle import MemberFailure
from relaybus.tasks.runtime.task import AgentModel

Category = Literal["howto", "comparison", "explainer"]


class ReviewPolicy(AgentModel):
    """The reviewer's guardrail: checks every draft, and at most ``max_rounds`` drafts are written."""

    max_rounds: int = Field(default=3, ge=1, le=10)
    min_words: int = Field(default=30, ge=0)
    banned_terms: tuple[str, ...] = ("guaranteed", "risk-free", "never fails")
    #: Fault injection for tests and demos: reject the first ``reject_drafts`` drafts whatever they say.
    reject_drafts: int = Field(default=0, ge=0)


class PublishApproval(AgentModel):
    """Approve before publishing: who may (principals, or ``role:<name>``) and how long they have."""

    approvers: tuple[str, ...] = Field(default=("role:editor",), min_length=1)
    timeout_s: float = Field(default=3600.0, gt=0)


class ResearchRequest(AgentModel):
    """The pipeline's input: what to write about, how many researchers at most, and the guardrail."""

    request: str = Field(min_length=3, max_length=4000)
    max_topics: int = Field(default=3, ge=0, le=20)
    review: ReviewPolicy = Field(default_factory=ReviewPolicy)
    #: ``fail``: a researcher that fails for good fails the pipeline. ``partial``: the writer works
    #: with the findings that arrived, and the draft lists the failed topics.
    on_research_failure: Literal["fail", "partial"] = "fail"
    #: Fault injection for tests and demos: these researchers (by index) fail permanently.
    fail_researchers: tuple[int, ...] = ()
    #: Park the approved draft until a person approves publishing it (off: the demo runs unattended).
    approve_before_publish: PublishApproval | None = None


class PipelineOptions(AgentModel):
    """What the steps after planning need from the request."""

    review: ReviewPolicy = Field(default_factory=ReviewPolicy)
    on_research_failure: Literal["fail", "partial"] = "fail"
    fail_researchers: tuple[int, ...] = ()
    approve_before_publish: PublishApproval | None = None


# -- stages ----------------------------------------------------------------------------------------


class IntakeInput(AgentModel):
    request: str = Field(min_length=3, max_length=4000)
    max_topics: int = Field(default=3, ge=0, le=20)


class IntakeOutput(AgentModel):
    request: str
    category: Category
    keywords: list[str]
    max_topics: int
    summary: str


class PlanInput(AgentModel):
    request: str
    category: Category
    keywords: list[str]
    max_topics: int = Field(ge=0, le=20)
    summary: str = ""


class PlanOutput(AgentModel):
    request: str
    category: Category = "explainer"
    topics: list[str]
    tools: list[str]


class ResearchTask(AgentModel):
    request: str
    topic: str
    index: int = Field(ge=0)
    #: Fault injection: fail permanently instead of researching.
    fail: bool = False


class Source(AgentModel):
    doc_id: str
    title: str
    snippet: str


class Findings(AgentModel):
    topic: str
    index: int
    summary: str
    sources: list[Source]


class WriteInput(AgentModel):
    """The writer's input: the fan-out's results (findings, and the researchers that failed), or a rejected draft."""

    request: str
    findings: list[Findings]
    failed_topics: list[str] = Field(default_factory=list)
    options: PipelineOptions = Field(default_factory=PipelineOptions)
    round: int = Field(default=1, ge=1)
    feedback: list[str] = Field(default_factory=list)

    @field_validator("failed_topics", mode="before")
    @classmethod
    def _describe_failures(cls, value: Any) -> Any:
        """The fan-out hands failed researchers over as ``MemberFailure``s; a draft lists them as text."""
        if not isinstance(value, list):
            return value
        return [_failed_topic(MemberFailure.model_validate(v)) if isinstance(v, dict) else v for v in value]


def _failed_topic(failure: MemberFailure) -> str:
    return f"{failure.task} ({failure.error_type}: {failure.error_message})"


class Draft(AgentModel):
    request: str
    title: str
    body: str
    sources: list[str]
    round: int
    findings: list[Findings]
    failed_topics: list[str] = Field(default_factory=list)
    options: PipelineOptions = Field(default_factory=PipelineOptions)


class Verdict(AgentModel):
    approved: bool
    feedback: list[str]


class Article(AgentModel):
    slug: str
    title: str
    body: str
    sources: list[str]
    sha256: str
    words: int
    rounds: int
    failed_topics: list[str] = Field(default_factory=list)


# -- events ----------------------------------------------------------------------------------------


class ResearchCompleted(Event):
    """One researcher finished its topic."""

    type: ClassVar[str] = "research.completed"
    version: ClassVar[int] = 1

    topic: str
    index: int
    sources: list[str]
    summary: str


class DraftWritten(Event):
    type: ClassVar[str] = "draft.written"
    version: ClassVar[int] = 1

    draft: Draft


class DraftRejected(Event):
    type: ClassVar[str] = "draft.rejected"
    version: ClassVar[int] = 1

    draft: Draft
    feedback: list[str]


class DraftApproved(Event):
    type: ClassVar[str] = "draft.approved"
    version: ClassVar[int] = 1

    draft: Draft


class PublicationApproved(Event):
    """A person approved publishing the draft (``approve_before_publish``); the publisher publishes it."""

    type: ClassVar[str] = "publication.approved"
    version: ClassVar[int] = 1

    draft: Draft
