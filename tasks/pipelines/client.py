"""Starting pipelines from an application, and following them.

::

    from relaybus.celery import create_app
    from relaybus.tasks.api import start

    handle = start("research", {"request": "How do sagas compensate?"}, priority="high", app=create_app())
    outcome = handle.wait(timeout=60)          # PipelineOutcome(status="completed", output={...})
    handle.events()                            # the pipeline's timeline, from the event log

Works from any Python process with the broker and result backend in reach: the modules that declare
pipelines are loaded as a worker loads them (``RELAYBUS_EXTRA_MODULES``), the input is validated with
the pipeline's input model, then the entry task is sent by name.
The pipeline id is its correlation id: every task, event and log record of the run carries it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from celery import Celery, current_app, signature, states
from pydantic import BaseModel, ValidationError

from relaybus.eventstore import StoreUnavailable
from relaybus.tasks.errors import InvalidInput, PipelineError, PipelineFailure, PipelineNotFinished
from relaybus.tasks.llm import Budget
from relaybus.tasks.pipelines.outcomes import record_pipeline_event, started_budget
from relaybus.tasks.pipelines.registry import (
    FAIL_TASK,
    PIPELINE_STARTED,
    Declared,
    PipelineOutcome,
    pipeline_named,
    start_task_id,
)
from relaybus.tasks.runtime.claimcheck import resolve_value
from relaybus.tasks.runtime.config import runtime_config
from relaybus.tasks.runtime.context import BUDGET_HEADER, CORRELATION_HEADER, TRACK_STARTED_HEADER, id_problems, new_id

logger = logging.getLogger(__name__)

Status = Literal["pending", "running", "completed", "failed", "timed_out"]


@dataclass
class PipelineHandle:
    """A started pipeline. Cheap to rebuild from its id alone: ``PipelineHandle(id, app)``."""

    id: str
    app: Celery
    pipeline: str = ""
    _outcome: PipelineOutcome | None = field(default=None, repr=False)

    def status(self) -> Status:
        """``pending`` (not picked up yet), ``running``, ``completed``, ``failed`` or ``timed_out`` (it made
        no progress within its deadline and the sweep ended it)."""
        outcome = self._poll()
        if outcome is not None:
            return outcome.status
        started = self.app.backend.get_state(start_task_id(self.id))
        if started != states.PENDING:
            return "running"
        # The start task's state expires from Redis within an hour: the event log knows whether it ran.
        begun = {"task.started", "task.succeeded"}
        ran = any(e.type in begun and e.task_id == start_task_id(self.id) for e in self.events())
        return "running" if ran else "pending"

    def wait(self, timeout: float = 60.0, interval: float = 0.05) -> PipelineOutcome:
        """Block until the pipeline ends; raises ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            outcome = self._poll()
            if outcome is not None:
                return outcome
            if time.monotonic() >= deadline:
                raise TimeoutError(f"pipeline {self.id} did not end within {timeout}s (status: {self.status()})")
            time.sleep(interval)

    def result(self) -> dict[str, Any]:
        """The output of a completed pipeline; raises ``PipelineFailure`` or ``PipelineNotFinished``."""
        outcome = self._poll()
        if outcome is None:
            raise PipelineNotFinished(f"pipeline {self.id} is {self.status()}")
        if outcome.status != "completed":
            raise PipelineFailure(self.id, outcome.reason or "unknown reason")
        return dict(outcome.output or {})

    def events(self) -> list[Any]:
        """Every record of this pipeline in the event log (``eventstore.RecordedEvent``), in order."""
        config = runtime_config(self.app)
        if not config.record_events:
            return []
        from relaybus.eventstore import open_store

        store = open_store(config.eventstore_url)
        try:
            return list(store.by_correlation(self.id))
        finally:
            store.close()

    def _poll(self) -> PipelineOutcome | None:
        if self._outcome is None:
            meta = self.app.backend.get_task_meta(self.id)
            if meta.get("status") == states.SUCCESS and isinstance(meta.get("result"), dict):
                # A large output is stored by reference (tasks.runtime.claimcheck): read back here.
                self._outcome = PipelineOutcome.model_validate(resolve_value(self.app, meta["result"]))
        return self._outcome


def start(
    pipeline: str | Declared,
    input: BaseModel | Mapping[str, Any],
    *,
    priority: str | int | None = None,
    correlation_id: str | None = None,
    app: Celery | None = None,
    budget: Budget | Mapping[str, Any] | None = None,
) -> PipelineHandle:
    """Validate ``input`` with the pipeline's input model and send its entry task; returns a handle.

    ``priority`` is a class (``urgent``, ``high``, ``normal``, ``low``) or a number; every step of
    the run inherits it. ``correlation_id`` becomes the pipeline id (a new one by default).
    ``budget`` (:class:`~tasks.llm.Budget`, or ``{"tokens": 2000, "cost": "0.05"}``) caps what the run's LLM
    calls may spend; it is recorded in ``pipeline.started``, and a call that would exceed it is refused unsent
    and fails the pipeline with reason ``budget-exceeded``.
    Raises :class:`~tasks.errors.InvalidInput` before anything is sent if the input or the budget does not validate.
    """
    app = app or current_app
    ref = pipeline_named(pipeline, app) if isinstance(pipeline, str) else pipeline
    _check_queues(app, ref)
    model = ref.input_model
    try:
        data = input.model_dump(mode="json") if isinstance(input, BaseModel) else dict(input)
        validated = model.model_validate(data)
    except ValidationError as exc:
        errors = [{"loc": tuple(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        raise InvalidInput(ref.name, errors, kind="pipeline") from None
    config = runtime_config(app)
    kwargs = validated.model_dump(mode="json")
    size = len(json.dumps(kwargs).encode())
    if size > config.max_payload_bytes:  # what is over payload_inline_max_bytes travels by reference
        raise InvalidInput(ref.name, [{"loc": ("input",), "msg": f"{size} bytes is over the limit of "
                                                                f"{config.max_payload_bytes}"}], kind="pipeline")
    problems = id_problems(correlation_id=correlation_id)
    if problems:  # the event log could not record the pipeline under this id: nothing is sent
        raise InvalidInput(ref.name, problems, kind="pipeline")
    recorded_budget = _budget(ref.name, budget)
    pipeline_id = correlation_id or new_id()
    # The entry task stores its STARTED state, which status() reads (agent tasks store none otherwise).
    headers: dict[str, Any] = {CORRELATION_HEADER: pipeline_id, TRACK_STARTED_HEADER: True}
    if recorded_budget is not None:
        headers[BUDGET_HEADER] = recorded_budget  # the entry task records it in pipeline.started too
    app.send_task(
        ref.task,
        kwargs=kwargs,
        task_id=start_task_id(pipeline_id),
        priority=config.priority(priority),
        headers=headers,
        # Even the first step failing ends the pipeline (pipeline.failed) rather than leaving it running.
        link_error=signature(FAIL_TASK, kwargs={"pipeline": ref.name}),
    )
    _record_started(app, ref, pipeline_id, kwargs, ref.deadline_s or config.pipeline_deadline_s, recorded_budget)
    return PipelineHandle(pipeline_id, app, ref.name)


def _budget(pipeline: str, budget: Budget | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The budget as ``pipeline.started`` records it, or InvalidInput naming what is wrong with it."""
    if budget is None:
        return None
    try:
        checked = budget if isinstance(budget, Budget) else Budget.model_validate(dict(budget))
    except ValidationError as exc:
        errors = [{"loc": ("budget", *e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        raise InvalidInput(pipeline, errors, kind="pipeline") from None
    return checked.record()


def _record_started(
    app: Celery, ref: Declared, pipeline_id: str, kwargs: dict[str, Any], deadline_s: float,
    budget: dict[str, Any] | None = None,
) -> None:
    """Record ``pipeline.started`` once the entry task is sent, so that a pipeline whose entry message is lost
    still has the record the deadline sweep looks for. The entry task records it too, under the same id
    (the log keeps one); if the log is away, that one will do."""
    payload = {"pipeline": ref.name, "input": kwargs, "deadline_s": deadline_s, **started_budget(budget)}
    try:
        record_pipeline_event(app, PIPELINE_STARTED, pipeline_id, payload, task_id=start_task_id(pipeline_id))
    except StoreUnavailable as exc:
        logger.warning("pipeline %s: pipeline.started not recorded by the client (%s)", pipeline_id, exc)


def _check_queues(app: Celery, pipeline: Declared) -> None:
    """Every agent of the pipeline has a queue in the app's topology, or nothing is sent: a task for an
    agent without one would sit on the system queue, where no worker of that agent looks."""
    topology = app.conf.get("relaybus_topology")
    known = getattr(topology, "agents", None)
    if known is None:
        return
    missing = [a for a in pipeline.agents if a not in known]
    if missing:
        raise PipelineError(
            f"pipeline {pipeline.name!r} uses agent(s) {', '.join(missing)} with no queue: add them to "
            "RELAYBUS_EXTRA_AGENTS (workers and clients alike)"
        )
