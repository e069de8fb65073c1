"""relaybus's event store: an append-only, hash-chained event log on SQLite or PostgreSQL.

A leaf package: it knows SQLAlchemy, alembic and pydantic, and nothing of Celery or of the rest
of relaybus. ::

    store = open_store("sqlite:///.relaybus/events.sqlite")
    store.append([NewEvent(stream_id=cid, type=types.TASK_SENT, task_id=tid, payload={...})])
    store.timeline(cid).model_dump(mode="json")
"""

if __name__ != "relaybus.eventstore":  # imported by its folder name from the repository root
    raise ImportError(
        f"the eventstore/ folder is installed as relaybus.eventstore: import relaybus.eventstore, not {__name__}"
        " (a second copy of its modules would bring a second registry and app)"
    )

from relaybus.eventstore import checkpoints, migrations, payloads, roles, types
from relaybus.eventstore.errors import (
    AppendOnlyViolation,
    ChainKeyError,
    CheckpointError,
    ConcurrencyError,
    EventStoreError,
    MalformedEvent,
    PayloadAltered,
    PayloadError,
    PayloadMissing,
    SchemaError,
    StoreDiskError,
    StoreUnavailable,
    UnsafeAppRole,
    UnstorableEvent,
)
from relaybus.eventstore.integrity import BrokenLink, CheckpointFinding, LogState, VerifyReport
from relaybus.eventstore.keys import ChainKeys
from relaybus.eventstore.models import DEFAULT_REDACT_KEYS, NewEvent, RecordedEvent, StoreConfig
from relaybus.eventstore.payloads import PayloadFinding, PayloadRef
from relaybus.eventstore.projections import WorkflowStatus, WorkflowStatusProjection, apply, fold
from relaybus.eventstore.queries import AgentStats, RateLimitWaits, TaskStep, Timeline
from relaybus.eventstore.replay import DryRun, RunDiff, RunStep, StepDifference, diff, dry_run
from relaybus.eventstore.store import EventStore, open_store
from relaybus.eventstore.usage import LLMUsage

# Grouped by concern, as dramatiq does, rather than sorted.
__all__ = [  # noqa: RUF022
    # Opening and writing
    "DEFAULT_REDACT_KEYS",
    "ChainKeys",
    "EventStore",
    "NewEvent",
    "PayloadRef",
    "RecordedEvent",
    "StoreConfig",
    "open_store",
    # Errors
    "AppendOnlyViolation",
    "ChainKeyError",
    "CheckpointError",
    "ConcurrencyError",
    "EventStoreError",
    "MalformedEvent",
    "PayloadAltered",
    "PayloadError",
    "PayloadMissing",
    "SchemaError",
    "StoreDiskError",
    "StoreUnavailable",
    "UnsafeAppRole",
    "UnstorableEvent",
    # Audit results
    "AgentStats",
    "LLMUsage",
    "BrokenLink",
    "CheckpointFinding",
    "PayloadFinding",
    "LogState",
    "RateLimitWaits",
    "TaskStep",
    "Timeline",
    "VerifyReport",
    # Projection and replay
    "DryRun",
    "RunDiff",
    "RunStep",
    "StepDifference",
    "WorkflowStatus",
    "WorkflowStatusProjection",
    "apply",
    "diff",
    "dry_run",
    "fold",
    # Modules
    "checkpoints",
    "migrations",
    "payloads",
    "roles",
    "types",
]
