"""relaybus for applications: the few names an app or an agent module needs, in one place.

::

    from relaybus.tasks.api import Event, publish, start, subscribe
"""

from relaybus.tasks.approvals import Approval, approve, get_approval, list_approvals, pending_approvals, reject
from relaybus.tasks.bus.bus import declare_subscriptions, publish, subscribe
from relaybus.tasks.bus.events import Event, EventEnvelope, upcaster
from relaybus.tasks.errors import (
    AgentError,
    AlreadyDecided,
    ApprovalError,
    ApprovalNotFound,
    EventRejected,
    InvalidInput,
    NotAnApprover,
    PermanentError,
    PipelineError,
    PipelineFailure,
    PipelineNotFinished,
    TransientError,
    UnknownPipeline,
)
from relaybus.tasks.llm import Budget, BudgetExceeded
from relaybus.tasks.pipelines.canvas import (
    MemberFailure,
    fan_in,
    parallel,
    results_of,
    sequence,
    settled,
    split_results,
)
from relaybus.tasks.pipelines.client import PipelineHandle, start
from relaybus.tasks.pipelines.definition import Pipeline, StepInput
from relaybus.tasks.pipelines.registry import (
    PipelineCompleted,
    PipelineFailed,
    PipelineOutcome,
)
from relaybus.tasks.runtime.context import workflow_context
from relaybus.tasks.runtime.task import AgentContext, AgentModel, agent

# Grouped by purpose, as the house style asks, rather than sorted.
__all__ = [  # noqa: RUF022
    # Starting and following pipelines
    "start",
    "PipelineHandle",
    "PipelineOutcome",
    "Pipeline",
    "StepInput",
    # Budgets (what a pipeline's or saga's LLM calls may spend)
    "Budget",
    "BudgetExceeded",
    # Human approval
    "approve",
    "reject",
    "pending_approvals",
    "list_approvals",
    "get_approval",
    "Approval",
    # Agents
    "agent",
    "AgentContext",
    "AgentModel",
    "workflow_context",
    # Events
    "Event",
    "EventEnvelope",
    "publish",
    "subscribe",
    "upcaster",
    "declare_subscriptions",
    "PipelineCompleted",
    "PipelineFailed",
    # Composition
    "sequence",
    "parallel",
    "fan_in",
    "settled",
    "results_of",
    "split_results",
    "MemberFailure",
    # Errors
    "AgentError",
    "TransientError",
    "PermanentError",
    "InvalidInput",
    "EventRejected",
    "PipelineError",
    "ApprovalError",
    "ApprovalNotFound",
    "NotAnApprover",
    "AlreadyDecided",
    "PipelineFailure",
    "PipelineNotFinished",
    "UnknownPipeline",
]
