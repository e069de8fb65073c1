"""relaybus: event-driven AI-agent orchestration on Celery.

What an application needs, in one place (everything else is internal)::

    from relaybus import AgentContext, AgentModel, Pipeline, agent

    class Ticket(AgentModel):
        text: str

    @agent("classifier", input=Ticket, output=Triage)
    def classify(ticket: Ticket, ctx: AgentContext) -> Triage: ...

    support = Pipeline("support", input=Ticket).step(classify).step(answer)

    handle = relaybus.start("support", {"text": "..."})        # validated, then sent
    handle.wait(timeout=60)                                     # PipelineOutcome

``celery -A relaybus worker`` finds :data:`app` here. Names are imported on first use, so importing
``relaybus`` (or ``relaybus.eventstore``) does not load Celery.
"""

if __name__ != "relaybus":  # imported by its folder name from the repository root
    raise ImportError(
        f"the project/ folder is installed as relaybus: import relaybus, not {__name__}"
        " (a second copy of its modules would bring a second registry and app)"
    )

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

    from relaybus.celery import create_app
    from relaybus.sagas.definition import ParallelStep, SagaDefinition
    from relaybus.sagas.definition import Step as SagaStep
    from relaybus.settings import Settings, get_settings
    from relaybus.tasks.approvals import approve, get_approval, list_approvals, pending_approvals, reject
    from relaybus.tasks.bus.bus import publish, subscribe
    from relaybus.tasks.bus.events import Event, upcaster
    from relaybus.tasks.errors import (
        AgentError,
        AlreadyDecided,
        ApprovalError,
        ApprovalNotFound,
        BrokerUnreachable,
        EventRejected,
        InvalidInput,
        NotAnApprover,
        PermanentError,
        PipelineFailure,
        PipelineNotFinished,
        PublishFailed,
        PublishTimeout,
        TransientError,
        UnknownPipeline,
    )
    from relaybus.tasks.llm import Budget, BudgetExceeded, LLMProvider, complete
    from relaybus.tasks.pipelines.client import PipelineHandle, start
    from relaybus.tasks.pipelines.definition import Pipeline, StepInput
    from relaybus.tasks.pipelines.registry import PipelineOutcome, declared
    from relaybus.tasks.runtime.revokes import revoke
    from relaybus.tasks.runtime.settle import MemberFailure
    from relaybus.tasks.runtime.task import AgentContext, AgentModel, agent
    from relaybus.tasks.saga import (
        CompensationCall,
        StepCall,
        Undone,
        register_saga,
        saga_compensation,
        saga_status,
        saga_step,
        start_saga,
        wait_for_saga,
    )

    app: Celery

_EXPORTS = {
    # Agents
    "agent": "relaybus.tasks.runtime.task",
    "AgentModel": "relaybus.tasks.runtime.task",
    "AgentContext": "relaybus.tasks.runtime.task",
    "complete": "relaybus.tasks.llm",
    "LLMProvider": "relaybus.tasks.llm",
    # Pipelines: declare, start, follow
    "Pipeline": "relaybus.tasks.pipelines.definition",
    "StepInput": "relaybus.tasks.pipelines.definition",
    "MemberFailure": "relaybus.tasks.runtime.settle",
    "start": "relaybus.tasks.pipelines.client",
    "PipelineHandle": "relaybus.tasks.pipelines.client",
    "PipelineOutcome": "relaybus.tasks.pipelines.registry",
    "declared": "relaybus.tasks.pipelines.registry",
    # revoke tasks for good: kept in Redis, so a restart of every worker does not undo it
    "revoke": "relaybus.tasks.runtime.revokes",
    # Events
    "Event": "relaybus.tasks.bus.events",
    "upcaster": "relaybus.tasks.bus.events",
    "publish": "relaybus.tasks.bus.bus",
    "subscribe": "relaybus.tasks.bus.bus",
    # Sagas: define, implement the steps, start, follow
    "SagaDefinition": "relaybus.sagas.definition",
    "SagaStep": "relaybus.sagas.definition:Step",
    "ParallelStep": "relaybus.sagas.definition",
    "register_saga": "relaybus.tasks.saga",
    "saga_step": "relaybus.tasks.saga",
    "saga_compensation": "relaybus.tasks.saga",
    "StepCall": "relaybus.tasks.saga",
    "CompensationCall": "relaybus.tasks.saga",
    "Undone": "relaybus.tasks.saga",
    "start_saga": "relaybus.tasks.saga",
    "saga_status": "relaybus.tasks.saga",
    "wait_for_saga": "relaybus.tasks.saga",
    # Budgets: what a pipeline's or saga's LLM calls may spend (start(..., budget=...))
    "Budget": "relaybus.tasks.llm",
    "BudgetExceeded": "relaybus.tasks.llm",
    # Human approval: decide what a workflow waits for
    "approve": "relaybus.tasks.approvals",
    "reject": "relaybus.tasks.approvals",
    "pending_approvals": "relaybus.tasks.approvals",
    "list_approvals": "relaybus.tasks.approvals",
    "get_approval": "relaybus.tasks.approvals",
    "ApprovalError": "relaybus.tasks.errors",
    "NotAnApprover": "relaybus.tasks.errors",
    "AlreadyDecided": "relaybus.tasks.errors",
    "ApprovalNotFound": "relaybus.tasks.errors",
    # The app and its settings
    "app": "relaybus.celery",
    "create_app": "relaybus.celery",
    "Settings": "relaybus.settings",
    "get_settings": "relaybus.settings",
    # Errors
    "AgentError": "relaybus.tasks.errors",
    "TransientError": "relaybus.tasks.errors",
    "PermanentError": "relaybus.tasks.errors",
    "InvalidInput": "relaybus.tasks.errors",
    "EventRejected": "relaybus.tasks.errors",
    "PipelineFailure": "relaybus.tasks.errors",
    "PipelineNotFinished": "relaybus.tasks.errors",
    "UnknownPipeline": "relaybus.tasks.errors",
    # what start()/publish() raise when the broker does not take a message (a TransientError: retry later)
    "PublishFailed": "relaybus.tasks.errors",
    "PublishTimeout": "relaybus.tasks.errors",
    "BrokerUnreachable": "relaybus.tasks.errors",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'relaybus' has no attribute {name!r}")
    module, _, attr = target.partition(":")
    value = getattr(import_module(module), attr or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
