"""Replay, the pure parts: rebuild a workflow from its events alone, and compare two runs.

Re-driving a workflow and replaying LLM calls need Celery and live in ``tasks``; they build on these.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from relaybus.eventstore import types as t
from relaybus.eventstore.models import RecordedEvent
from relaybus.eventstore.projections import WorkflowStatus, fold
from relaybus.eventstore.queries import Timeline, timeline_of


class DryRun(BaseModel):
    """A workflow rebuilt from its events: the projection's state and the timeline."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    correlation_id: str
    events_replayed: int
    state: WorkflowStatus | None
    timeline: Timeline


def dry_run(correlation_id: str, events: Sequence[RecordedEvent]) -> DryRun:
    """Fold ``events`` (one workflow's, in position order) with the live projection's fold."""
    return DryRun(
        correlation_id=correlation_id,
        events_replayed=len(events),
        state=fold(events).get(correlation_id),
        timeline=timeline_of(correlation_id, events),
    )


class RunStep(BaseModel):
    """A task of a run for comparison: its agent, its n-th call of that agent, input and output."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int
    agent: str | None
    ordinal: int
    task_id: str
    input: Any = None
    output: Any = None
    succeeded: bool = False


class StepDifference(BaseModel):
    """Where two runs part: ``field`` is ``input``, ``output``, or ``missing`` (a step only one run has).

    ``paths`` lists (up to 20) JSON paths at which the two values differ, ``$`` being the value.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    agent: str | None
    ordinal: int
    field: Literal["input", "output", "missing"]
    step_a: RunStep | None
    step_b: RunStep | None
    paths: list[str]


class RunDiff(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    correlation_a: str
    correlation_b: str
    steps_a: int
    steps_b: int
    identical: bool
    first_difference: StepDifference | None


def run_steps(events: Sequence[RecordedEvent]) -> list[RunStep]:
    """A run's task steps in the order they were first sent (a retry's re-send is the same step)."""
    sent: dict[str, RecordedEvent] = {}
    outputs: dict[str, Any] = {}
    for event in events:
        if event.task_id is None:
            continue
        if event.type == t.TASK_SENT and event.task_id not in sent:
            sent[event.task_id] = event
        elif event.type == t.TASK_SUCCEEDED:
            outputs[event.task_id] = event.payload.get("output")
    ordinals: dict[str | None, int] = {}
    steps = []
    for index, (task_id, event) in enumerate(sent.items()):
        ordinals[event.agent] = ordinals.get(event.agent, 0) + 1
        steps.append(
            RunStep(
                index=index,
                agent=event.agent,
                ordinal=ordinals[event.agent],
                task_id=task_id,
                input=event.payload.get("input"),
                output=outputs.get(task_id),
                succeeded=task_id in outputs,
            )
        )
    return steps


def diff_paths(a: Any, b: Any, path: str = "$", limit: int = 20) -> list[str]:
    """JSON paths at which ``a`` and ``b`` differ (at most ``limit``)."""
    found: list[str] = []

    def walk(x: Any, y: Any, here: str) -> None:
        if len(found) >= limit:
            return
        if isinstance(x, dict) and isinstance(y, dict):
            for key in sorted(set(x) | set(y), key=str):
                walk(x.get(key, _ABSENT), y.get(key, _ABSENT), f"{here}.{key}")
        elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
            for i, (xi, yi) in enumerate(zip(x, y, strict=True)):
                walk(xi, yi, f"{here}[{i}]")
        elif x != y or type(x) is not type(y):
            found.append(here)

    walk(a, b, path)
    return found


_ABSENT = object()


def diff(
    correlation_a: str, events_a: Sequence[RecordedEvent], correlation_b: str, events_b: Sequence[RecordedEvent]
) -> RunDiff:
    """The first step, in send order, whose input or output differs between two runs.

    Steps are aligned per agent: the n-th call of an agent in run A against its n-th call in run B.
    Values are compared on content (see :class:`_Normalizer`): two runs always differ in their ids
    and clocks, which is no divergence.
    """
    steps_a, steps_b = run_steps(events_a), run_steps(events_b)
    by_key_b = {(s.agent, s.ordinal): s for s in steps_b}
    keys = {(s.agent, s.ordinal): s.index for s in steps_a}
    for s in steps_b:
        keys[(s.agent, s.ordinal)] = min(keys.get((s.agent, s.ordinal), s.index), s.index)
    by_key_a = {(s.agent, s.ordinal): s for s in steps_a}
    norm_a, norm_b = _Normalizer(correlation_a), _Normalizer(correlation_b)
    first: StepDifference | None = None
    for key in sorted(keys, key=lambda k: (keys[k], str(k[0]), k[1])):
        a, b = by_key_a.get(key), by_key_b.get(key)
        if a is None or b is None:
            first = StepDifference(agent=key[0], ordinal=key[1], field="missing", step_a=a, step_b=b, paths=["$"])
            break
        for field in ("input", "output"):
            paths = diff_paths(norm_a(getattr(a, field)), norm_b(getattr(b, field)))
            if paths:
                first = StepDifference(agent=key[0], ordinal=key[1], field=field, step_a=a, step_b=b, paths=paths)
                break
        if first is not None:
            break
    return RunDiff(
        correlation_a=correlation_a,
        correlation_b=correlation_b,
        steps_a=len(steps_a),
        steps_b=len(steps_b),
        identical=first is None,
        first_difference=first,
    )


_RUN_ID = "<this run>"
VOLATILE_KEYS = frozenset({"occurred_at", "replay"})
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class _Normalizer:
    """Rewrites one run's values so two runs compare on content: its correlation id becomes a
    marker, every other id (UUID) becomes ``<id n>`` by order of first appearance in the run, and
    clock readings are dropped."""

    def __init__(self, correlation_id: str) -> None:
        self.correlation_id = correlation_id
        self.ids: dict[str, str] = {}

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str):
            if self.correlation_id in value:
                return value.replace(self.correlation_id, _RUN_ID)
            if _UUID.match(value):
                return self.ids.setdefault(value, f"<id {len(self.ids) + 1}>")
            return value
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, dict):
            return {k: self(v) for k, v in value.items() if k not in VOLATILE_KEYS}
        return value
