"""Subscribers declared only by the tests (workers load this module through RELAYBUS_EXTRA_MODULES).

Nothing in ``tasks`` names them: adding them changes no publisher. Each writes what it received to a
Redis list, so a test can read, from outside the worker, every delivery with its ids.
"""

from __future__ import annotations

import json
import os
import time
from typing import ClassVar

from relaybus.tasks.agents.pipeline_models import ResearchCompleted
from relaybus.tasks.bus.bus import subscribe
from relaybus.tasks.bus.events import Event, upcaster
from relaybus.tasks.errors import PermanentError
from relaybus.tasks.runtime.task import AgentContext
from tests.agents import r

SUBSCRIBER_AGENTS = ("auditor", "archivist")


class ProbeObserved(Event):
    """A test-only event in its second version: v1 had no ``source``."""

    type: ClassVar[str] = "probe.observed"
    version: ClassVar[int] = 2

    key: str
    name: str
    source: str
    fail: bool = False


@upcaster("probe.observed", 1)
def _probe_observed_v1_to_v2(data: dict[str, object]) -> dict[str, object]:
    return {**data, "source": "upcast-from-v1"}


def note(key: str, event: Event, ctx: AgentContext, handler: str) -> None:
    r().rpush(
        key,
        json.dumps(
            {
                "handler": handler,
                "type": event.type,
                "data": event.model_dump(mode="json"),
                "correlation_id": ctx.correlation_id,
                "causation_id": ctx.causation_id,
                "task_id": ctx.task_id,
                "priority": ctx.priority,
                "pid": os.getpid(),
                "at": time.time(),
            }
        ),
    )


@subscribe("auditor", ResearchCompleted)
def audit_research(event: ResearchCompleted, ctx: AgentContext) -> None:
    note(f"test:audit:{ctx.correlation_id}", event, ctx, "audit_research")


@subscribe("auditor", "probe.*")
def audit_probe(event: ProbeObserved, ctx: AgentContext) -> None:
    if event.fail:
        raise PermanentError(f"handler refused {event.name}")
    note(event.key, event, ctx, "auditor")


@subscribe("archivist", "probe.#")
def archive_probe(event: ProbeObserved, ctx: AgentContext) -> None:
    note(event.key, event, ctx, "archivist")
