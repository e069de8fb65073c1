"""A pipeline whose input, outputs and event carry a large document (the claim-check test,
tests/integration/test_claimcheck.py): two steps, then an event that ends the pipeline.

    pipelines.cc-big -> agents.ccshout -> pipelines.cc-big.advance -> agents.cccheck
        --cc.document.checked--> events.ccfinal.finish

The ``advance`` hop (the second step maps its input) is embedded in the first step's message as a chain
signature whose kwargs hold the pipeline's input: the claim check stores it by reference there too.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

from relaybus.tasks.bus.bus import publish
from relaybus.tasks.bus.events import Event
from relaybus.tasks.pipelines.definition import Pipeline
from relaybus.tasks.runtime.task import AgentContext, AgentModel, agent

CLAIMCHECK_AGENTS = ("ccshout", "cccheck", "ccfinal")


class Document(AgentModel):
    title: str
    document: str


class Shouted(AgentModel):
    title: str
    document: str
    length: int


class Checked(AgentModel):
    title: str
    length: int
    sha256: str


class DocumentChecked(Event):
    type: ClassVar[str] = "cc.document.checked"
    version: ClassVar[int] = 1

    title: str
    document: str
    sha256: str


@agent("ccshout", input=Document, output=Shouted)
def shout(inp: Document, ctx: AgentContext) -> Shouted:
    return Shouted(title=inp.title, document=inp.document.upper(), length=len(inp.document))


@agent("cccheck", input=Shouted, output=Checked)
def check(inp: Shouted, ctx: AgentContext) -> Checked:
    digest = hashlib.sha256(inp.document.encode()).hexdigest()
    publish(DocumentChecked(title=inp.title, document=inp.document, sha256=digest))
    return Checked(title=inp.title, length=inp.length, sha256=digest)


big = Pipeline("cc-big", input=Document, description="A large document through steps and an event")
big.step(shout)
big.step(check, input=lambda s: dict(s.prev or {}))  # a mapped input: an advance hop carries the run (20 MB)


@big.finish(DocumentChecked, agent="ccfinal")
def finish(event: DocumentChecked, ctx: AgentContext) -> dict[str, Any]:
    if hashlib.sha256(event.document.encode()).hexdigest() != event.sha256:
        raise ValueError("the document changed on its way")
    return {"title": event.title, "document": event.document, "sha256": event.sha256}
