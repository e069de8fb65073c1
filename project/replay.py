"""Re-driving a recorded workflow from a chosen step, under a new correlation id.

The steps before the chosen one are not run again: the chosen step is sent with the input it was
recorded with, which already holds their outputs. What ran after it in the original (its chain,
callbacks and error callbacks, as recorded with ``task.sent``) runs again, as do the event
subscriptions it triggers. Every message of the new run carries ``x_replay_of`` = the original
correlation id; with ``deterministic``, also ``x_llm_replay_of``, so agents get the recorded LLM
completions instead of calling the provider.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from pydantic import BaseModel, ConfigDict

from relaybus.eventstore import EventStore, NewEvent
from relaybus.eventstore.replay import run_steps
from relaybus.eventstore.types import TASK_SENT, WORKFLOW_REPLAYED
from relaybus.tasks.runtime.context import new_id, workflow_context


class RedriveError(ValueError):
    """Raised when a workflow cannot be re-driven from the step asked for; the message says why."""


class Redrive(BaseModel):
    model_config = ConfigDict(frozen=True)

    original: str
    correlation_id: str
    step: str
    task: str
    task_id: str
    deterministic: bool


def _choose(steps: list[Any], from_step: str) -> Any:
    """``from_step``: a 1-based step number, an agent name (its first call) or ``agent#n``."""
    if from_step.isdigit():
        index = int(from_step)
        if not 1 <= index <= len(steps):
            raise RedriveError(f"step {index} is out of range: the run has {len(steps)} steps")
        return steps[index - 1]
    agent, _, ordinal = from_step.partition("#")
    wanted = int(ordinal) if ordinal.isdigit() else 1
    for step in steps:
        if step.agent == agent and step.ordinal == wanted:
            return step
    names = ", ".join(f"{s.agent}#{s.ordinal}" for s in steps)
    raise RedriveError(f"no step {from_step!r} in this run; its steps are: {names}")


def fresh_ids(value: Any) -> Any:
    """A copy of recorded signatures without their task ids: the re-driven steps are new tasks, and
    the ids (from which event ids and idempotency markers derive) must not collide with the original's."""
    if isinstance(value, list):
        return [fresh_ids(v) for v in value]
    if isinstance(value, dict):
        copy = {k: fresh_ids(v) for k, v in value.items()}
        options = copy.get("options")
        if "task" in copy and isinstance(options, dict):
            copy["options"] = {k: v for k, v in options.items() if k not in ("task_id", "root_id", "parent_id")}
        return copy
    return value


def redrive(app: Celery, store: EventStore, original: str, from_step: str, *, deterministic: bool = False,
            correlation_id: str | None = None) -> Redrive:
    events = store.by_correlation(original)
    if not events:
        raise RedriveError(f"no events for correlation id {original!r}")
    steps = run_steps(events)
    step = _choose(steps, from_step)
    sent = next((e for e in events if e.type == TASK_SENT and e.task_id == step.task_id), None)
    if sent is None or "task" not in sent.payload:
        raise RedriveError(f"step {from_step!r} has no recorded task.sent with its task name and input")
    if sent.payload.get("group_id") or sent.payload.get("links", {}).get("chord"):
        raise RedriveError(
            f"step {from_step!r} is a member of a fan-out (a chord header): re-drive from the step that "
            "started the fan-out, or from its callback"
        )
    task_name = sent.payload["task"]
    recorded = sent.payload.get("input", {})
    links = fresh_ids(sent.payload.get("links", {}))
    new = correlation_id or new_id()
    store.append([NewEvent(stream_id=new, type=WORKFLOW_REPLAYED, causation_id=sent.event_id,
                           payload={"replay_of": original, "from_step": from_step, "task": task_name,
                                    "deterministic": deterministic})])
    with workflow_context(new, replay_of=original, llm_replay_of=original if deterministic else None):
        result = app.send_task(
            task_name,
            args=recorded.get("args") or None,
            kwargs=recorded.get("kwargs") or {},
            chain=links.get("chain"),
            link=links.get("callbacks"),
            link_error=links.get("errbacks"),
            priority=sent.priority,
        )
    return Redrive(original=original, correlation_id=new, step=f"{step.agent}#{step.ordinal}", task=task_name,
                   task_id=result.id, deterministic=deterministic)
