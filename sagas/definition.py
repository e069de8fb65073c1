"""What a saga is: an ordered list of steps, each an agent task plus an optional compensation task.

A step may be a :class:`ParallelStep`, a group of members that start together; the saga moves on
only when every member succeeded. Task names are Celery task names (``"agents.writer"``): this
package never imports a task, the executor dispatches by name.

Definitions are frozen and validated when they are built, so a malformed saga fails at import
time, not half-way through a run. Type errors (a number where a name belongs) surface as
pydantic's ``ValidationError``; broken rules raise :class:`~sagas.errors.DefinitionError`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from relaybus.sagas.errors import DefinitionError, UnknownSaga

OnTimeout = Literal["retry", "compensate"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_name(name: str, what: str) -> None:
    # Idempotency keys are "saga_id:step:member:kind": a colon in a name would make two keys collide.
    if not name.strip() or ":" in name or name != name.strip():
        raise DefinitionError(f"{what} name {name!r} must be non-empty, without surrounding spaces, and contain no ':'")


def _check_task(task: str, what: str) -> None:
    if not task.strip() or task != task.strip():
        raise DefinitionError(f"{what} task name {task!r} must be a non-empty Celery task name")


#: The task of a step that waits for a person's approval (``tasks.saga.approval``; see :func:`approval_step`).
APPROVAL_TASK = "relaybus.saga.approval"
#: How much longer than its approval's deadline an approval step's own ``timeout_s`` runs: the approval
#: expires first (with its own reason), the step's timeout is only the safety net.
APPROVAL_GRACE_S = 300.0


class Approval(_Frozen):
    """Who may approve a step (principals, or ``role:<name>``) and how long they have."""

    approvers: tuple[str, ...]
    timeout_s: float

    @model_validator(mode="after")
    def _check(self) -> Approval:
        if not self.approvers or any(not a.strip() for a in self.approvers):
            raise DefinitionError("an approval needs at least one approver, each a non-empty name")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise DefinitionError("an approval's timeout_s must be a positive number of seconds")
        return self


class Step(_Frozen):
    """One agent task, and the task that undoes it (``None`` for a step with nothing to undo).

    A step whose worker does not answer by ``timeout_s`` is marked timed out by the sweep: its
    outcome becomes *unknown* (it may have had effects). ``on_timeout="compensate"`` aborts the saga;
    ``"retry"`` dispatches it again with the same idempotency key, up to ``max_attempts`` dispatches
    in all. A step that *fails* is never retried here: the task base already retried its transient
    errors, so a recorded failure is final.
    """

    name: str
    task: str
    compensation: str | None = None
    timeout_s: float
    on_timeout: OnTimeout = "compensate"
    max_attempts: int = 1
    #: A step that waits for a person (build it with :func:`approval_step`).
    approval: Approval | None = None

    @model_validator(mode="after")
    def _check(self) -> Step:
        _check_name(self.name, "step")
        _check_task(self.task, f"step {self.name!r}")
        if self.compensation is not None:
            _check_task(self.compensation, f"step {self.name!r} compensation")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise DefinitionError(f"step {self.name!r}: timeout_s must be a positive number of seconds")
        if self.on_timeout == "retry" and self.max_attempts < 2:
            raise DefinitionError(f"step {self.name!r}: on_timeout='retry' needs max_attempts >= 2")
        if self.on_timeout == "compensate" and self.max_attempts != 1:
            raise DefinitionError(f"step {self.name!r}: max_attempts only applies with on_timeout='retry'")
        if (self.approval is not None) != (self.task == APPROVAL_TASK):
            raise DefinitionError(f"step {self.name!r}: an approval step is built with approval_step(...)")
        if self.approval is not None and self.timeout_s <= self.approval.timeout_s:
            raise DefinitionError(f"step {self.name!r}: timeout_s must outlast the approval's timeout_s")
        return self


def approval_step(name: str, *, approvers: Iterable[str], timeout_s: float) -> Step:
    """A step that waits for one of ``approvers`` to approve, within ``timeout_s``: approved, the saga goes
    on (the next step gets this step's input); rejected or expired, the step fails and the saga compensates
    the steps that completed, last first. Nothing to undo for the approval itself."""
    return Step(
        name=name, task=APPROVAL_TASK, timeout_s=timeout_s + APPROVAL_GRACE_S,
        approval=Approval(approvers=tuple(approvers), timeout_s=timeout_s),
    )


class ParallelStep(_Frozen):
    """A group of members that start together; each member is compensated on its own."""

    name: str
    members: tuple[Step, ...]

    @model_validator(mode="after")
    def _check(self) -> ParallelStep:
        _check_name(self.name, "parallel step")
        if not self.members:
            raise DefinitionError(f"parallel step {self.name!r} has no members")
        _check_unique((m.name for m in self.members), f"parallel step {self.name!r} member")
        return self


AnyStep = Step | ParallelStep


def members_of(step: AnyStep) -> tuple[Step, ...]:
    """The members of a step: a plain step is its own single member (member name = step name)."""
    return step.members if isinstance(step, ParallelStep) else (step,)


def _check_unique(names: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DefinitionError(f"{what} name {name!r} is used twice")
        seen.add(name)


class SagaDefinition(_Frozen):
    """A named, ordered, non-empty tuple of steps with unique names."""

    name: str
    steps: tuple[AnyStep, ...]

    @model_validator(mode="after")
    def _check(self) -> SagaDefinition:
        _check_name(self.name, "saga")
        if not self.steps:
            raise DefinitionError(f"saga {self.name!r} has no steps")
        _check_unique((s.name for s in self.steps), f"saga {self.name!r} step")
        return self

    def index(self, step: str) -> int:
        """The position of a step by name; ``KeyError`` if the saga has no such step."""
        for i, candidate in enumerate(self.steps):
            if candidate.name == step:
                return i
        raise KeyError(step)

    def member(self, step: str, member: str) -> Step:
        """A member's definition by step and member name; ``KeyError`` if there is none."""
        for candidate in members_of(self.steps[self.index(step)]):
            if candidate.name == member:
                return candidate
        raise KeyError(f"{step}/{member}")


class SagaRegistry:
    """Saga name -> definition. The executor finds a running saga's definition here by name.

    Registering the same definition twice is harmless (modules get imported twice); registering a
    different definition under a taken name raises :class:`~sagas.errors.DefinitionError`.
    """

    def __init__(self, definitions: Iterable[SagaDefinition] = ()) -> None:
        self._definitions: dict[str, SagaDefinition] = {}
        for definition in definitions:
            self.register(definition)

    def register(self, definition: SagaDefinition) -> SagaDefinition:
        existing = self._definitions.get(definition.name)
        if existing is not None and existing != definition:
            raise DefinitionError(f"another saga is already registered under {definition.name!r}")
        self._definitions[definition.name] = definition
        return definition

    def get(self, name: str) -> SagaDefinition:
        try:
            return self._definitions[name]
        except KeyError:
            raise UnknownSaga(name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._definitions

    def __iter__(self) -> Iterator[SagaDefinition]:
        return iter(self._definitions.values())

    def __len__(self) -> int:
        return len(self._definitions)
