"""Synthetic workflows of task events with known timings, for the audit, projection and replay tests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from relaybus.eventstore import NewEvent, types

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@dataclass(frozen=True)
class Attempt:
    started: float
    outcome: Literal["succeeded", "failed", "retried"]
    ended: float


def task_run(
    correlation_id: str,
    task_id: str,
    agent: str,
    sent: float,
    attempts: list[Attempt],
    *,
    input: Any = None,
    output: Any = None,
) -> list[NewEvent]:
    """The lifecycle events the task base records for one task, attempt by attempt."""

    def event(type_: str, seconds: float, attempt: int, payload: dict[str, Any] | None = None) -> NewEvent:
        return NewEvent(
            event_id=f"{task_id}:{type_}:{attempt}",
            stream_id=correlation_id,
            type=type_,
            task_id=task_id,
            agent=agent,
            queue=f"agents.{agent}",
            attempt=attempt,
            occurred_at=at(seconds),
            payload=payload or {},
        )

    out = [event(types.TASK_SENT, sent, 1, {"input": input})]
    for number, attempt in enumerate(attempts, start=1):
        out.append(event(types.TASK_RECEIVED, attempt.started, number))
        out.append(event(types.TASK_STARTED, attempt.started, number))
        if attempt.outcome == "retried":
            out.append(event(types.TASK_RETRIED, attempt.ended, number, {"countdown_s": 1.0}))
            out.append(event(types.TASK_SENT, attempt.ended, number + 1, {"input": input}))
        elif attempt.outcome == "succeeded":
            out.append(event(types.TASK_SUCCEEDED, attempt.ended, number, {"output": output}))
        else:
            out.append(event(types.TASK_FAILED, attempt.ended, number, {"error_type": "Boom"}))
            out.append(event(types.TASK_DEAD_LETTERED, attempt.ended, number, {"reason": "failed"}))
    return out


def workflow_event(correlation_id: str, type_: str, seconds: float) -> NewEvent:
    return NewEvent(event_id=f"{correlation_id}:{type_}", stream_id=correlation_id, type=type_, occurred_at=at(seconds))


def research_workflow(
    correlation_id: str,
    *,
    sources: list[str] | None = None,
    topic: str = "tides",
    declared: bool = True,
) -> list[NewEvent]:
    """planner (wait 1 s, run 2 s) -> researcher (wait 2 s, retried once, last run 4 s) -> writer
    (wait 1 s, run 1 s, fails and is dead-lettered); ``workflow.started`` / ``workflow.failed``
    around it when ``declared``.
    """
    sources = sources if sources is not None else ["a", "b"]
    p, r, w = (f"{correlation_id}-{name}" for name in ("planner", "researcher", "writer"))
    events = [workflow_event(correlation_id, types.WORKFLOW_STARTED, 0)] if declared else []
    events += task_run(
        correlation_id, p, "planner", 0, [Attempt(1, "succeeded", 3)], input={"topic": topic}, output={"plan": [topic]}
    )
    events += task_run(
        correlation_id,
        r,
        "researcher",
        3,
        [Attempt(5, "retried", 6), Attempt(8, "succeeded", 12)],
        input={"plan": [topic]},
        output={"sources": sources},
    )
    events.append(
        NewEvent(
            event_id=f"{r}:llm",
            stream_id=correlation_id,
            type=types.LLM_COMPLETED,
            task_id=r,
            agent="researcher",
            occurred_at=at(10),
            payload={"usage": {"input_tokens": 12, "output_tokens": 30}},
        )
    )
    events += task_run(correlation_id, w, "writer", 12, [Attempt(13, "failed", 14)], input={"sources": sources})
    if declared:
        events.append(workflow_event(correlation_id, types.WORKFLOW_FAILED, 15))
    return events


def quick_workflow(correlation_id: str) -> list[NewEvent]:
    """One planner task: wait 3 s, run 4 s, succeeded; no workflow-level events."""
    return task_run(
        correlation_id,
        f"{correlation_id}-planner",
        "planner",
        100,
        [Attempt(103, "succeeded", 107)],
        input={"topic": "x"},
    )
