"""What a pipeline is made of: its stages (steps, fan-outs, approvals), what their mappings see, and the
contracts of the system tasks that run between them (``tasks.pipelines.definition`` declares them)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from relaybus.tasks.runtime.settle import results_of
from relaybus.tasks.runtime.task import AGENT_TASK_PREFIX, AgentContext, AgentModel, AgentTask

RunT = TypeVar("RunT", bound=BaseModel)

SYSTEM_AGENT = "system"


@dataclass(frozen=True)
class StepInput(Generic[RunT]):
    """What an ``input``/``each`` mapping sees: the pipeline's input and the previous step's output."""

    run: RunT
    #: The previous step's output (for the first step, ``None``; for a fan-out's ``into`` step, the
    #: output of the step before the fan-out).
    prev: dict[str, Any] | None
    pipeline_id: str


Mapping_ = Callable[[StepInput[Any]], Mapping[str, Any]]
Handler = Callable[[Any, AgentContext], Any]


@dataclass(frozen=True)
class Step:
    name: str
    task: str
    agent: str
    input: Mapping_ | None = None


@dataclass(frozen=True)
class FanOut:
    name: str
    task: str
    agent: str
    each: Callable[[StepInput[Any]], Iterable[Mapping[str, Any]]]
    results: str
    failures: str | None
    partial: Callable[[Any], bool]


@dataclass(frozen=True)
class ApprovalStage:
    """The pipeline parks until a person approves (``Pipeline.approval``); nothing runs meanwhile."""

    name: str
    approvers: tuple[str, ...]
    timeout_s: float
    subject: Mapping_ | None = None
    task: str = ""  # no task of its own: the stage is a row in the approvals table
    agent: str = SYSTEM_AGENT


Stage = Step | FanOut | ApprovalStage


# -- the system tasks' contracts ------------------------------------------------------------------


class Started(AgentModel):
    pipeline_id: str


class Dispatched(AgentModel):
    sent: int


class AdvanceInput(AgentModel):
    """Between two steps: the next stage's index, the pipeline's input and the previous output."""

    stage: int
    run: dict[str, Any]
    prev: dict[str, Any] | None = None

    @classmethod
    def from_upstream(cls, upstream: Any, kwargs: dict[str, Any]) -> AdvanceInput:
        return cls.model_validate({**kwargs, "prev": upstream})


class JoinInput(AgentModel):
    """A fan-out's callback: the members' results (a list, failures marked) and what came before them."""

    stage: int
    run: dict[str, Any]
    prev: dict[str, Any] | None = None
    results: list[Any]

    @classmethod
    def from_upstream(cls, upstream: Any, kwargs: dict[str, Any]) -> JoinInput:
        return cls.model_validate({**kwargs, "results": results_of(upstream)})


class CompleteInput(AgentModel):
    output: dict[str, Any]

    @classmethod
    def from_upstream(cls, upstream: Any, kwargs: dict[str, Any]) -> CompleteInput:
        return cls.model_validate({**kwargs, "output": upstream if isinstance(upstream, dict) else {}})


def agent_ref(ref: AgentTask | str) -> tuple[str, str]:
    """``(task name, agent name)`` of an agent task object or an agent's name."""
    if isinstance(ref, str):
        name = ref.removeprefix(AGENT_TASK_PREFIX)
        return AGENT_TASK_PREFIX + name, name.partition(".")[0]
    spec = getattr(ref, "spec", None)
    if spec is None:
        raise TypeError(f"{ref!r} is not an agent: declare it with @agent(...) or pass the agent's name")
    return str(ref.name), str(spec.name)
