"""Pipelines declared, not hand-wired: steps, fan-outs, subscriptions, a bounded review loop, one failure path.

::

    triage = Pipeline("triage", input=Ticket, description="Answer a support ticket")
    triage.step(classify, input=lambda s: {"text": s.run.text})      # s.run: the pipeline's input
    triage.step(lookup)                                                # gets classify's output
    triage.fan_out(answer, each=lambda s: [{"question": q} for q in s.prev["questions"]],
                   into=compose, results="answers")                   # compose gets answers=[...]
    # the pipeline completes with the last step's output: pipeline.completed

    handle = triage.start({"text": "..."})                              # or start("triage", ...)

What the definition turns into:

* ``pipelines.<name>`` (system queue) records ``pipeline.started`` and sends the first steps. Steps
  without an ``input`` mapping follow each other as a Celery chain (each gets the previous output);
  where a step maps its input, or a fan-out starts, ``pipelines.<name>.advance`` runs the mapping
  between the two steps (one system hop) and sends the rest.
* A fan-out sends one task per item of ``each`` as a chord whose callback, ``pipelines.<name>.join``,
  builds the ``into`` step's input for you: its ``into_input`` fields plus the members' outputs in
  ``results`` (and, with ``partial``, the members that failed for good in ``failures``).
* Steps only: ``pipelines.<name>.complete`` publishes ``pipeline.completed`` with the last output.
  A pipeline that goes on with events instead ends in its :meth:`Pipeline.finish` subscription.
* Every task and subscription links the same error callback, ``pipelines.fail``: whatever fails, the
  pipeline ends ``failed`` with a reason that names the step and its agent (``tasks.pipelines.outcomes``).
* Whatever nobody foresaw (a lost message, a step on a queue no worker consumes, an event that never
  comes): a pipeline with no new record for ``deadline_s`` (``Pipeline(..., deadline_s=)``, default the
  setting ``RELAYBUS_PIPELINE_DEADLINE_S``) is ended ``timed_out`` by the sweep (``tasks.pipelines.deadline``).
  The deadline in force is recorded in ``pipeline.started``, so the sweep needs no definition.

Every process that starts or runs a pipeline imports the module that declares it: workers, clients, the
CLI and Django all load ``RELAYBUS_EXTRA_MODULES`` (``tasks.pipelines.registry.load_modules``).

The stages and the system tasks' contracts are in ``tasks.pipelines.stages``; sending the next stages (a chain,
a chord, a parked approval, the completion) is ``tasks.pipelines.dispatch``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from celery import Celery, current_app, current_task
from celery.canvas import Signature
from pydantic import BaseModel

from relaybus.tasks.bus.bus import handler_task_name, subscribe
from relaybus.tasks.bus.events import Event
from relaybus.tasks.pipelines.dispatch import send_from, send_stage
from relaybus.tasks.pipelines.outcomes import fail_on_error, record_pipeline_event, started_budget
from relaybus.tasks.pipelines.registry import PIPELINE_STARTED, PipelineCompleted, PipelineFailed, register
from relaybus.tasks.pipelines.stages import (
    SYSTEM_AGENT,
    AdvanceInput,
    ApprovalStage,
    CompleteInput,
    Dispatched,
    FanOut,
    Handler,
    JoinInput,
    Mapping_,
    RunT,
    Stage,
    Started,
    Step,
    StepInput,
    agent_ref,
)
from relaybus.tasks.runtime.config import runtime_config
from relaybus.tasks.runtime.context import BUDGET_HEADER, request_headers
from relaybus.tasks.runtime.idempotency import already_done, mark_done
from relaybus.tasks.runtime.settle import split_results
from relaybus.tasks.runtime.task import AgentContext, AgentTask, agent

if TYPE_CHECKING:
    from relaybus.tasks.llm import Budget
    from relaybus.tasks.pipelines.client import PipelineHandle

E = TypeVar("E", bound=Event)

__all__ = ["ApprovalStage", "FanOut", "Pipeline", "Step", "StepInput"]

_NAME = re.compile(r"^[a-z][a-z0-9_]*(-[a-z0-9_]+)*$")


class Pipeline(Generic[RunT]):
    """A named pipeline over agents. See the module docstring."""

    def __init__(
        self, name: str, *, input: type[RunT], description: str = "", deadline_s: float | None = None
    ) -> None:
        """``deadline_s``: end the pipeline ``timed_out`` once it has made no progress (no new record in the
        event log) for this long; None: the setting ``RELAYBUS_PIPELINE_DEADLINE_S`` of the worker that starts it."""
        if not _NAME.match(name):
            raise ValueError(f"invalid pipeline name {name!r}: lower-case letters, digits, '_' and '-'")
        if deadline_s is not None and not deadline_s > 0:
            raise ValueError(f"pipeline {name!r}: deadline_s must be positive, got {deadline_s!r}")
        self.name = name
        self.input_model = input
        self.description = description
        self.deadline_s = deadline_s
        self.stages: list[Stage] = []
        #: Stage names of the subscriptions declared with on/review/finish, by handler task name.
        self.handlers: dict[str, str] = {}
        self.finishes_on_event = False
        self.task = f"pipelines.{name}"
        self._declare_tasks()
        register(self)

    # -- declaring ----------------------------------------------------------------------------

    def step(self, agent: AgentTask | str, *, input: Mapping_ | None = None, name: str | None = None) -> Pipeline[RunT]:
        """Run ``agent`` next. Its input is the previous output (the pipeline's input for the first
        step), or what ``input(s)`` returns (``s.run``: the pipeline's input, ``s.prev``: the previous output)."""
        task, agent_name = agent_ref(agent)
        self._add(Step(name or agent_name, task, agent_name, input))
        return self

    def fan_out(
        self,
        agent: AgentTask | str,
        *,
        each: Callable[[StepInput[Any]], Iterable[Mapping[str, Any]]],
        into: AgentTask | str,
        into_input: Mapping_ | None = None,
        results: str = "results",
        failures: str | None = None,
        partial: bool | Callable[[RunT], bool] = False,
        name: str | None = None,
        into_name: str | None = None,
    ) -> Pipeline[RunT]:
        """Run ``agent`` once per item of ``each(s)``, in parallel, then ``into`` with their outputs.

        ``into`` gets ``into_input(s)`` (``s.prev``: the output before the fan-out) plus the list of
        outputs under ``results``. A member that fails for good fails the pipeline, unless ``partial``
        (a bool, or a function of the pipeline's input) is true: then ``into`` runs with the outputs
        that arrived and, under ``failures``, the failed members (``MemberFailure``: task, error_type,
        error_message). No item at all: ``into`` runs at once with an empty list.
        """
        task, agent_name = agent_ref(agent)
        decide = partial if callable(partial) else (lambda _run, _p=bool(partial): _p)
        self._add(FanOut(name or agent_name, task, agent_name, each, results, failures, decide))
        into_task, into_agent = agent_ref(into)
        self._add(Step(into_name or into_agent, into_task, into_agent, into_input))
        return self

    def approval(
        self,
        name: str,
        *,
        approvers: Iterable[str],
        timeout_s: float,
        subject: Mapping_ | None = None,
    ) -> Pipeline[RunT]:
        """Park the pipeline here until one of ``approvers`` (principals, or ``role:<name>``) approves, within
        ``timeout_s``. ``subject(s)``: what they approve (default: the previous output), redacted as it is
        stored. Approved, the next step gets the previous output as if this stage were not there; rejected
        or expired, the pipeline fails (``approval-rejected`` / ``approval-expired``). No worker waits:
        the request is a row (``relaybus approvals list``). See ``tasks.runtime.approvals``."""
        approvers = tuple(approvers)
        if not approvers:
            raise ValueError(f"pipeline {self.name!r}: approval {name!r} names no approver")
        if not timeout_s > 0:
            raise ValueError(f"pipeline {self.name!r}: approval {name!r} timeout_s must be positive")
        self._add(ApprovalStage(name, approvers, float(timeout_s), subject))
        return self

    def on(
        self, event: type[E] | str, *, agent: str, name: str | None = None
    ) -> Callable[[Callable[[E, AgentContext], Any]], Handler]:
        """Subscribe ``agent`` to ``event`` as part of this pipeline (decorator): the handler runs as
        the task ``events.<agent>.<name>`` (its name defaults to the function's), may return events to
        publish, and its failure fails the pipeline."""

        def decorate(fn: Callable[[E, AgentContext], Any]) -> Handler:
            handler = name or fn.__name__
            self.handlers[handler_task_name(agent, handler)] = handler
            subscribe(agent, event, name=handler, on_error=self.failure_path())(fn)
            return fn

        return decorate

    def finish(
        self, event: type[E] | str, *, agent: str, name: str | None = None
    ) -> Callable[[Callable[[E, AgentContext], BaseModel | Mapping[str, Any]]], Handler]:
        """The subscription that ends the pipeline (decorator): what the handler returns (a model or a
        dict) is the pipeline's output, published as ``pipeline.completed``."""
        self.finishes_on_event = True

        def decorate(fn: Callable[[E, AgentContext], BaseModel | Mapping[str, Any]]) -> Handler:
            def finish(event_: E, ctx: AgentContext) -> PipelineCompleted:
                return self.completed(fn(event_, ctx))

            finish.__name__ = fn.__name__
            finish.__doc__ = fn.__doc__
            return self.on(event, agent=agent, name=name)(finish)

        return decorate

    def review(
        self,
        candidate: type[E],
        rejection: type[Event],
        *,
        reviewer: tuple[str, Callable[[E, AgentContext], Event]],
        reviser: tuple[str, Callable[[Any, AgentContext], E]],
        round: Callable[[E], int],
        max_rounds: Callable[[E], int],
        names: tuple[str, str] = ("review", "revise"),
    ) -> Pipeline[RunT]:
        """A bounded review loop on events: ``reviewer`` judges every ``candidate`` and returns an
        approval (any event: subscribe to it with :meth:`on` or :meth:`finish`) or a ``rejection``;
        ``reviser`` turns a rejection into the next candidate. The rejection of the ``max_rounds``-th
        candidate fails the pipeline instead, with the rejection's ``feedback`` as the reason.
        """
        (review_agent, judge), (revise_agent, revise) = reviewer, reviser
        review_name, revise_name = names

        def review(event: E, ctx: AgentContext) -> Event:
            verdict = judge(event, ctx)
            done, allowed = round(event), max_rounds(event)
            if isinstance(verdict, rejection) and done >= allowed:
                feedback = "; ".join(getattr(verdict, "feedback", None) or []) or "no feedback"
                return self.failed(
                    f"{review_agent} rejected {done} of {allowed} allowed rounds ({candidate.type}): {feedback}",
                    stage=review_name,
                )
            return verdict

        review.__name__ = review_name
        self.on(candidate, agent=review_agent, name=review_name)(review)
        self.on(rejection, agent=revise_agent, name=revise_name)(revise)
        return self

    # -- outcomes -------------------------------------------------------------------------------

    def completed(self, output: BaseModel | Mapping[str, Any]) -> PipelineCompleted:
        data = output.model_dump(mode="json") if isinstance(output, BaseModel) else dict(output)
        return PipelineCompleted(pipeline=self.name, output=data)

    def failed(self, reason: str, *, stage: str | None = None) -> PipelineFailed:
        """An event that ends the pipeline as failed: return it from a handler."""
        return PipelineFailed(pipeline=self.name, reason=reason, stage=stage)

    def failure_path(self) -> Signature:
        return fail_on_error(self.name)

    def fan_in_input(self, stage: int, results: list[Any], s: StepInput[Any]) -> dict[str, Any]:
        """The input of the step after the fan-out ``stage``: its ``into_input`` fields, the members'
        outputs under ``results`` and, if named, the failed members under ``failures``."""
        fan, into = self.stages[stage], self.stages[stage + 1]
        if not isinstance(fan, FanOut) or not isinstance(into, Step):
            raise ValueError(f"stage {stage} of pipeline {self.name!r} is not a fan-out")
        ok, failed = split_results(results)
        kwargs = dict(into.input(s)) if into.input else {}
        kwargs[fan.results] = ok
        if fan.failures:
            kwargs[fan.failures] = [f.model_dump(mode="json") for f in failed]
        return kwargs

    # -- what the registry, the client and the CLI read ----------------------------------------

    @property
    def agents(self) -> list[str]:
        seen = [s.agent for s in self.stages] + [t.split(".")[1] for t in self.handlers]
        return list(dict.fromkeys(seen))

    def stage_of(self, task_name: str) -> str | None:
        """The step a task belongs to: ``agents.researcher`` -> ``researcher``; None if not this pipeline's."""
        for stage in self.stages:
            if stage.task and stage.task == task_name:
                return stage.name
        return self.handlers.get(task_name)

    def describe(self) -> list[str]:
        lines = []
        for stage in self.stages:
            if isinstance(stage, ApprovalStage):
                lines.append(f"approval {stage.name}: by {', '.join(stage.approvers)} within {stage.timeout_s:g} s")
                continue
            kind = "fan-out" if isinstance(stage, FanOut) else "step"
            lines.append(f"{kind} {stage.name}: {stage.task}")
        lines += [f"on event: {task} ({stage})" for task, stage in self.handlers.items()]
        return lines

    def start(
        self,
        input: RunT | Mapping[str, Any],
        *,
        priority: str | int | None = None,
        correlation_id: str | None = None,
        app: Celery | None = None,
        budget: Budget | Mapping[str, Any] | None = None,
    ) -> PipelineHandle:
        from relaybus.tasks.pipelines.client import start

        return start(self, input, priority=priority, correlation_id=correlation_id, app=app, budget=budget)

    # -- running ---------------------------------------------------------------------------------

    def _add(self, stage: Stage) -> None:
        if any(s.name == stage.name for s in self.stages):
            raise ValueError(f"pipeline {self.name!r} already has a step named {stage.name!r}; pass name=...")
        self.stages.append(stage)

    def _declare_tasks(self) -> None:
        prefix = self.task

        @agent(SYSTEM_AGENT, input=self.input_model, output=Started, task_name=prefix)
        def begin(inp: RunT, ctx: AgentContext) -> Started:
            app = current_app
            if not already_done(app, ctx.task_id):  # a redelivered start must not launch a second run
                deadline_s = self.deadline_s or runtime_config(app).pipeline_deadline_s
                budget = request_headers(current_task.request).get(BUDGET_HEADER)
                record_pipeline_event(
                    app, PIPELINE_STARTED, ctx.correlation_id,
                    {"pipeline": self.name, "input": inp.model_dump(mode="json"), "deadline_s": deadline_s,
                     **started_budget(budget)},
                    task_id=ctx.task_id,
                )
                send_stage(self, app, 0, None, inp, ctx.correlation_id)
                mark_done(app, ctx.task_id)
            return Started(pipeline_id=ctx.correlation_id)

        @agent(SYSTEM_AGENT, input=AdvanceInput, output=Dispatched, task_name=f"{prefix}.advance")
        def advance(inp: AdvanceInput, ctx: AgentContext) -> Dispatched:
            run = self._run(inp.run)
            return self._once(ctx, lambda app: send_stage(self, app, inp.stage, inp.prev, run, ctx.correlation_id))

        @agent(SYSTEM_AGENT, input=JoinInput, output=Dispatched, task_name=f"{prefix}.join")
        def join(inp: JoinInput, ctx: AgentContext) -> Dispatched:
            run = self._run(inp.run)
            kwargs = self.fan_in_input(inp.stage, inp.results, StepInput(run, inp.prev, ctx.correlation_id))
            return self._once(ctx, lambda app: send_from(self, app, inp.stage + 1, kwargs, run))

        @agent(SYSTEM_AGENT, input=CompleteInput, output=Dispatched, task_name=f"{prefix}.complete")
        def complete(inp: CompleteInput, ctx: AgentContext) -> Dispatched:
            from relaybus.tasks.bus.bus import publish

            publish(self.completed(inp.output))
            return Dispatched(sent=1)

        self.entry, self.advance_task, self.join_task, self.complete_task = begin, advance, join, complete

    @staticmethod
    def _once(ctx: AgentContext, send: Callable[[Celery], int]) -> Dispatched:
        """Send the next tasks once: a redelivered system task finds its done-marker and sends nothing
        (the flows it built carry ids derived from its own, so a crash between the two is de-duplicated)."""
        app = current_app
        if already_done(app, ctx.task_id):
            return Dispatched(sent=0)
        sent = send(app)
        mark_done(app, ctx.task_id)
        return Dispatched(sent=sent)

    def _run(self, data: Mapping[str, Any]) -> RunT:
        return self.input_model.model_validate(data)
