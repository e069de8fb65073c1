"""Pipelines by name, and the outcome every pipeline ends with.

Declaring a :class:`~tasks.pipelines.definition.Pipeline` registers it here under its name. Workers,
clients, the CLI and Django find the pipelines the same way: they import the modules named by the
one setting ``RELAYBUS_EXTRA_MODULES`` (the app's ``include`` list, :func:`load_modules`), so a
pipeline a worker runs is one a client can start. Every pipeline ends with exactly one outcome event,
:class:`PipelineCompleted`, :class:`PipelineFailed` or (from the deadline sweep) :class:`PipelineTimedOut`:
they share one event id per pipeline, and the log keeps one outcome record per pipeline, the first one
recorded, which is the outcome every reader sees.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar, Literal, Protocol

from celery import Celery
from pydantic import BaseModel, ConfigDict

# Log records (``stream = pipeline id``) that open and close a pipeline, next to the bus events.
from relaybus.eventstore.types import PIPELINE_COMPLETED as PIPELINE_COMPLETED
from relaybus.eventstore.types import PIPELINE_FAILED as PIPELINE_FAILED
from relaybus.eventstore.types import PIPELINE_STARTED as PIPELINE_STARTED
from relaybus.eventstore.types import PIPELINE_TIMED_OUT as PIPELINE_TIMED_OUT
from relaybus.tasks.bus.events import Event, derived_id
from relaybus.tasks.errors import UnknownPipeline

OUTCOME_KEY = "pipeline.outcome"
#: The error callback every step of a pipeline links (``tasks.outcomes.fail_pipeline``).
FAIL_TASK = "pipelines.fail"


class Declared(Protocol):
    """What the registry, the client and the CLI need of a declared pipeline."""

    name: str
    task: str
    description: str
    #: No progress for this long ends the pipeline ``timed_out``; None: the setting's default.
    deadline_s: float | None

    @property
    def input_model(self) -> type[BaseModel]: ...

    @property
    def agents(self) -> list[str]: ...

    def stage_of(self, task_name: str) -> str | None: ...

    def describe(self) -> list[str]: ...


_PIPELINES: dict[str, Declared] = {}


def register(pipeline: Declared) -> Declared:
    """Called by ``Pipeline(...)``. Declaring a second, different pipeline under a taken name is an error."""
    known = _PIPELINES.get(pipeline.name)
    if known is not None and known is not pipeline and known.task != pipeline.task:
        raise ValueError(f"a pipeline named {pipeline.name!r} is already declared")
    _PIPELINES[pipeline.name] = pipeline
    return pipeline


def load_modules(app: Celery) -> None:
    """Import the modules that declare agents and pipelines (the app's ``include``: relaybus's own and
    ``RELAYBUS_EXTRA_MODULES``), as a worker does when it starts. Idempotent."""
    app.loader.import_default_modules()


def declared(app: Celery | None = None) -> list[Declared]:
    """Every pipeline declared by the modules ``app`` loads, by name."""
    if app is not None:
        load_modules(app)
    return [_PIPELINES[name] for name in sorted(_PIPELINES)]


def pipeline_named(name: str, app: Celery | None = None) -> Declared:
    """The pipeline ``name``; the app's modules are loaded first if it is not declared yet."""
    if name not in _PIPELINES and app is not None:
        load_modules(app)
    try:
        return _PIPELINES[name]
    except KeyError:
        known = ", ".join(sorted(_PIPELINES)) or "none"
        raise UnknownPipeline(
            f"unknown pipeline {name!r}; known pipelines: {known} (a pipeline is found when its module is "
            "in RELAYBUS_EXTRA_MODULES)"
        ) from None


def stage_of(pipeline: str, task_name: str) -> str | None:
    """The step of ``pipeline`` that ``task_name`` runs, if the pipeline is declared in this process."""
    known = _PIPELINES.get(pipeline)
    return known.stage_of(task_name) if known is not None else None


def start_task_id(pipeline_id: str) -> str:
    """The entry task's id: derived from the pipeline id, so a client can look at it by id alone."""
    return derived_id(pipeline_id, "start")


class PipelineCompleted(Event):
    """A pipeline ended with its output."""

    type: ClassVar[str] = "pipeline.completed"
    version: ClassVar[int] = 1
    unique_per_correlation: ClassVar[str | None] = OUTCOME_KEY

    pipeline: str
    output: dict[str, Any]


class PipelineFailed(Event):
    """A pipeline ended without output; ``reason`` says why and ``stage`` where."""

    type: ClassVar[str] = "pipeline.failed"
    version: ClassVar[int] = 1
    unique_per_correlation: ClassVar[str | None] = OUTCOME_KEY

    pipeline: str
    reason: str
    stage: str | None = None


class PipelineTimedOut(Event):
    """A pipeline made no progress within its deadline and was ended by the sweep (``tasks.pipelines.deadline``).

    ``reason`` says how long it had been silent and what its last record was; ``stage`` is the step that
    record belongs to, when known.
    """

    type: ClassVar[str] = "pipeline.timed_out"
    version: ClassVar[int] = 1
    unique_per_correlation: ClassVar[str | None] = OUTCOME_KEY

    pipeline: str
    reason: str
    stage: str | None = None
    deadline_s: float
    last_event_at: datetime


Ending = PipelineCompleted | PipelineFailed | PipelineTimedOut
OutcomeStatus = Literal["completed", "failed", "timed_out"]
_RECORD_STATUS: dict[str, OutcomeStatus] = {
    PIPELINE_COMPLETED: "completed",
    PIPELINE_FAILED: "failed",
    PIPELINE_TIMED_OUT: "timed_out",
}


class PipelineOutcome(BaseModel):
    """How a pipeline ended, as a client reads it: ``completed`` with its output, or ``failed`` or
    ``timed_out`` with a reason."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pipeline_id: str
    pipeline: str
    status: OutcomeStatus
    output: dict[str, Any] | None = None
    reason: str | None = None
    stage: str | None = None

    @classmethod
    def of(cls, pipeline_id: str, event: Ending) -> PipelineOutcome:
        if isinstance(event, PipelineCompleted):
            return cls(pipeline_id=pipeline_id, pipeline=event.pipeline, status="completed", output=event.output)
        status: OutcomeStatus = "timed_out" if isinstance(event, PipelineTimedOut) else "failed"
        return cls(
            pipeline_id=pipeline_id, pipeline=event.pipeline, status=status, reason=event.reason, stage=event.stage
        )

    @classmethod
    def from_record(cls, pipeline_id: str, type_: str, payload: Mapping[str, Any]) -> PipelineOutcome:
        """The outcome an outcome record of the log (``pipeline.completed``...) holds; its other keys
        (a timed-out record's deadline and last event) are left out."""
        fields = {k: payload[k] for k in ("pipeline", "output", "reason", "stage") if k in payload}
        return cls(pipeline_id=pipeline_id, status=_RECORD_STATUS[type_], **fields)

    def record(self) -> tuple[str, dict[str, Any]]:
        """``(type, payload)`` of the log record of this outcome."""
        type_ = next(k for k, v in _RECORD_STATUS.items() if v == self.status)
        return type_, self.model_dump(mode="json", exclude={"pipeline_id"})
