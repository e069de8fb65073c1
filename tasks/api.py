"""relaybus for applications: the few names an app or an agent module needs, in one place.

::

    from tasks.api import Event, publish, start, subscribe
"""

from tasks.base import AgentContext, AgentModel, agent
from tasks.bus import declare_subscriptions, publish, subscribe
from tasks.canvas import MemberFailure, fan_in, parallel, results_of, sequence, settled, split_results
from tasks.client import PipelineHandle, start
from tasks.context import workflow_context
from tasks.errors import (
    AgentError,
    EventRejected,
    InvalidInput,
    PermanentError,
    PipelineError,
    PipelineFailure,
    PipelineNotFinished,
    TransientError,
    UnknownPipeline,
)
from tasks.events import Event, EventEnvelope, upcaster
from tasks.pipelines import PipelineCompleted, PipelineFailed, PipelineOutcome, PipelineRef, register_pipeline

# Grouped by purpose, as the house style asks, rather than sorted.
__all__ = [  # noqa: RUF022
    # Starting and following pipelines
    "start",
    "PipelineHandle",
    "PipelineOutcome",
    "PipelineRef",
    "register_pipeline",
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
    "PipelineFailure",
    "PipelineNotFinished",
    "UnknownPipeline",
]
