"""Pipelines by name, and the outcome every pipeline ends with.

A client starts a pipeline by name (:func:`tasks.client.start`); all it needs is the
:class:`PipelineRef`: the entry task's name and the import path of the input model. The agents'
code is never imported by the client. Every pipeline ends with exactly one outcome event,
:class:`PipelineCompleted` or :class:`PipelineFailed`: they share one event id per pipeline, so the
first one published wins.

No Celery here: clients import this module.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from relaybus.tasks.bus.events import Event, derived_id
from relaybus.tasks.errors import UnknownPipeline

#: Log records (``stream = pipeline id``) that open and close a pipeline, next to the bus events.
PIPELINE_STARTED = "pipeline.started"
PIPELINE_COMPLETED = "pipeline.completed"
PIPELINE_FAILED = "pipeline.failed"
OUTCOME_KEY = "pipeline.outcome"
#: The error callback every step of a pipeline links (``tasks.outcomes.fail_pipeline``).
FAIL_TASK = "pipelines.fail"


@dataclass(frozen=True)
class PipelineRef:
    """How to start a pipeline: its entry task and its input model (``"module:Class"``)."""

    name: str
    task: str
    input_model: str

    def load_input_model(self) -> type[BaseModel]:
        module, _, attr = self.input_model.partition(":")
        model = getattr(importlib.import_module(module), attr)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"{self.input_model} is not a pydantic model")
        return model


_PIPELINES: dict[str, PipelineRef] = {
    "research": PipelineRef(
        name="research",
        task="pipelines.research",
        input_model="relaybus.tasks.agents.pipeline_models:ResearchRequest",
    ),
}


def register_pipeline(ref: PipelineRef) -> PipelineRef:
    _PIPELINES[ref.name] = ref
    return ref


def pipeline_ref(name: str) -> PipelineRef:
    try:
        return _PIPELINES[name]
    except KeyError:
        known = ", ".join(sorted(_PIPELINES)) or "none"
        raise UnknownPipeline(f"unknown pipeline {name!r}; known pipelines: {known}") from None


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


class PipelineOutcome(BaseModel):
    """How a pipeline ended, as a client reads it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pipeline_id: str
    pipeline: str
    status: Literal["completed", "failed"]
    output: dict[str, Any] | None = None
    reason: str | None = None
    stage: str | None = None

    @classmethod
    def of(cls, pipeline_id: str, event: PipelineCompleted | PipelineFailed) -> PipelineOutcome:
        if isinstance(event, PipelineCompleted):
            return cls(pipeline_id=pipeline_id, pipeline=event.pipeline, status="completed", output=event.output)
        return cls(
            pipeline_id=pipeline_id, pipeline=event.pipeline, status="failed", reason=event.reason, stage=event.stage
        )
