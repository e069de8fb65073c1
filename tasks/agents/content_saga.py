"""The reference content-creation saga's steps and compensations (``sagas.reference.CONTENT_CREATION``)::

    research        agents.researcher.saga_research   read-only (search + LLM): nothing to undo
    writing         agents.writer.saga_draft          a draft row            <- agents.writer.discard_draft
    review          agents.reviewer.saga_review       a review row           <- agents.reviewer.cancel_review
    publishing      agents.publisher.saga_publish     a publication row      <- agents.publisher.unpublish

Every effect is written under its step's idempotency key (:mod:`tasks.agents.content_store`), so a
redelivered step replays its first result instead of writing twice, and every compensation is
idempotent and tolerates "nothing to undo". Each step and compensation consults the fault table
first, so tests can make any of them fail, fail a few times, or stall.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from celery import current_app
from pydantic import BaseModel, Field
from sqlalchemy import Engine

from relaybus.sagas import CONTENT_CREATION
from relaybus.tasks.agents.content_store import AlreadyUndone, engine_for, find_item, inject, log_run, undo
from relaybus.tasks.agents.content_store import apply_once as store_once
from relaybus.tasks.agents.planner import search_tool
from relaybus.tasks.llm import complete
from relaybus.tasks.runtime.config import runtime_config
from relaybus.tasks.runtime.task import AgentContext, AgentModel
from relaybus.tasks.saga import CompensationCall, StepCall, Undone, register_saga, saga_compensation, saga_step

register_saga(CONTENT_CREATION)

OutputT = TypeVar("OutputT", bound=BaseModel)


class Brief(AgentModel):
    """The saga's input."""

    topic: str = Field(min_length=1, max_length=500)
    audience: str = "engineers"


class Notes(AgentModel):
    topic: str
    audience: str
    notes: list[str]
    sources: list[str]


class DraftRef(AgentModel):
    draft_key: str
    topic: str
    title: str
    words: int


class ReviewRef(AgentModel):
    review_key: str
    draft_key: str
    title: str
    verdict: Literal["approved"]


class PublicationRef(AgentModel):
    publication_key: str
    review_key: str
    slug: str
    url: str


def content_engine() -> Engine:
    return engine_for(runtime_config(current_app).eventstore_url)


def apply_once(call: StepCall, kind: str, output: type[OutputT], build: Callable[[], dict[str, Any]]) -> OutputT:
    """Run the step's effect once under its idempotency key; a repeat returns the first result."""
    engine = content_engine()
    name = f"step:{call.member}"
    log_run(engine, call.saga_id, name, call.idempotency_key, "started")
    stored = find_item(engine, call.idempotency_key)
    if stored is None:
        inject(engine, call.saga_id, name, call.idempotency_key)
        data, wrote = store_once(engine, key=call.idempotency_key, saga_id=call.saga_id, kind=kind, data=build())
    elif stored["status"] == "live":
        data, wrote = stored["data"], False
    else:
        raise AlreadyUndone(f"{kind} {call.idempotency_key!r} was undone by {stored['undone_by']!r}; not applying it")
    log_run(engine, call.saga_id, name, call.idempotency_key, "applied" if wrote else "replayed")
    return output.model_validate(data["output"])


def compensate(call: CompensationCall, kind: str) -> Undone:
    engine = content_engine()
    name = f"compensation:{call.member}"
    log_run(engine, call.saga_id, name, call.idempotency_key, "started")
    inject(engine, call.saga_id, name, call.idempotency_key)
    done = undo(
        engine, step_key=call.step_idempotency_key, undo_key=call.idempotency_key, saga_id=call.saga_id, kind=kind
    )
    log_run(engine, call.saga_id, name, call.idempotency_key, "undone" if done else "nothing")
    what = "undone" if done else "nothing to undo"
    return Undone(undone=done, detail=f"{kind} {call.step_idempotency_key}: {what}")


# -- steps -----------------------------------------------------------------------------------------


@saga_step("researcher", "saga_research", input=Brief, output=Notes)
def research(brief: Brief, call: StepCall, ctx: AgentContext) -> Notes:
    engine = content_engine()
    log_run(engine, call.saga_id, "step:research", call.idempotency_key, "started")
    inject(engine, call.saga_id, "step:research", call.idempotency_key)
    hits = search_tool().search(brief.topic, k=3)
    summary = complete(ctx.llm, system="You are the researcher.", user=f"{brief.topic} for {brief.audience}").text
    return Notes(
        topic=brief.topic,
        audience=brief.audience,
        notes=[summary, *(h.snippet for h in hits)],
        sources=[h.doc_id for h in hits],
    )


@saga_step("writer", "saga_draft", input=Notes, output=DraftRef)
def draft(notes: Notes, call: StepCall, ctx: AgentContext) -> DraftRef:
    def build() -> dict[str, Any]:
        intro = complete(ctx.llm, system="You are the writer.", user=notes.topic).text
        body = "\n\n".join([intro, *notes.notes, "Sources: " + (", ".join(notes.sources) or "none")])
        ref = DraftRef(
            draft_key=call.idempotency_key,
            topic=notes.topic,
            title=notes.topic.rstrip("?.! ")[:120],
            words=len(body.split()),
        )
        return {"output": ref.model_dump(mode="json"), "body": body}

    return apply_once(call, "draft", DraftRef, build)


@saga_step("reviewer", "saga_review", input=DraftRef, output=ReviewRef)
def review(draft: DraftRef, call: StepCall, ctx: AgentContext) -> ReviewRef:
    def build() -> dict[str, Any]:
        ref = ReviewRef(
            review_key=call.idempotency_key, draft_key=draft.draft_key, title=draft.title, verdict="approved"
        )
        return {"output": ref.model_dump(mode="json"), "checked_words": draft.words}

    return apply_once(call, "review", ReviewRef, build)


@saga_step("publisher", "saga_publish", input=ReviewRef, output=PublicationRef)
def publish(review: ReviewRef, call: StepCall, ctx: AgentContext) -> PublicationRef:
    def build() -> dict[str, Any]:
        slug = re.sub(r"[^a-z0-9]+", "-", review.title.lower()).strip("-")[:60] or "untitled"
        slug = f"{slug}-{call.saga_id[:8]}"
        ref = PublicationRef(
            publication_key=call.idempotency_key, review_key=review.review_key, slug=slug, url=f"/articles/{slug}"
        )
        return {"output": ref.model_dump(mode="json")}

    return apply_once(call, "publication", PublicationRef, build)


# -- compensations ---------------------------------------------------------------------------------


@saga_compensation("writer", "discard_draft")
def discard_draft(call: CompensationCall, ctx: AgentContext) -> Undone:
    return compensate(call, "draft")


@saga_compensation("reviewer", "cancel_review")
def cancel_review(call: CompensationCall, ctx: AgentContext) -> Undone:
    return compensate(call, "review")


@saga_compensation("publisher", "unpublish")
def unpublish(call: CompensationCall, ctx: AgentContext) -> Undone:
    return compensate(call, "publication")
