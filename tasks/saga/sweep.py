"""The sweep: find the sagas whose steps stopped answering, and act as each saga's policy says.

Run by beat (``relaybus.saga.sweep``, see ``project.celery``) and by ``relaybus saga sweep``. For
every open saga (started or resumed, not ended) it decides at ``now`` with nothing new:

* a running step past its deadline is marked ``timed_out`` (its outcome is now *unknown*: its message
  vanished with a dead worker, or it overran); the saga's policy then retries it (same idempotency
  key) or compensates, which includes undoing the unknown step itself;
* a compensation running for longer than ``stuck_compensation_after_s`` is sent again under the same
  attempt and keys (compensations carry no deadline in the saga logic; they are idempotent, and a
  late result of either copy is recorded once).

Each saga advances under the event store's optimistic concurrency, so a sweep racing a step's
callback, or another sweep, cannot act twice.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from celery import Celery
from pydantic import BaseModel, ConfigDict, Field

from relaybus.eventstore import ConcurrencyError, StoreUnavailable
from relaybus.sagas import InvalidTransition, RunCompensation, StepTimedOut, UnknownEvent, UnknownSaga, still_running
from relaybus.tasks.saga.dispatch import dispatch, dispatch_decision
from relaybus.tasks.saga.registry import repository

DEFAULT_HORIZON_S = 30 * 24 * 3600.0
DEFAULT_STUCK_COMPENSATION_S = 600.0


class SweepReport(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    swept_at: datetime
    open_sagas: int
    timed_out: list[str] = Field(default_factory=list)
    dispatched: list[str] = Field(default_factory=list)
    redispatched: list[str] = Field(default_factory=list)
    ended: dict[str, str] = Field(default_factory=dict)
    errors: dict[str, str] = Field(default_factory=dict)


def sweep_sagas(
    app: Celery,
    *,
    now: datetime | None = None,
    horizon_s: float | None = DEFAULT_HORIZON_S,
    stuck_compensation_after_s: float = DEFAULT_STUCK_COMPENSATION_S,
) -> SweepReport:
    """One pass over the open sagas started (or resumed) within ``horizon_s`` (``None``: all of them)."""
    repo = repository(app)
    now = now or datetime.now(UTC)
    since = now - timedelta(seconds=horizon_s) if horizon_s else None
    open_ids = repo.open_saga_ids(since)
    timed_out: list[str] = []
    dispatched: list[str] = []
    redispatched: list[str] = []
    ended: dict[str, str] = {}
    errors: dict[str, str] = {}
    for saga_id in open_ids:
        try:
            loaded = repo.load(saga_id)
            stuck = [
                f.command
                for f in repo.in_flight(loaded)
                if isinstance(f.command, RunCompensation)
                and (now - f.started_at).total_seconds() > stuck_compensation_after_s
            ]
            decision = repo.tick(saga_id, now=now)
        except (InvalidTransition, UnknownSaga, UnknownEvent, ConcurrencyError, StoreUnavailable) as error:
            errors[saga_id] = f"{type(error).__name__}: {error}"  # the next sweep tries again
            continue
        timed_out += [
            f"{e.saga_id} {e.step}/{e.member} attempt {e.attempt}"
            for e in decision.recorded
            if isinstance(e, StepTimedOut)
        ]
        dispatched += dispatch_decision(app, decision)
        state = decision.state
        still = [c for c in stuck if still_running(state, c)]
        redispatched += dispatch(app, decision.saga, decision.correlation_id, still)
        if state.terminal:
            ended[saga_id] = state.status
    return SweepReport(
        swept_at=now,
        open_sagas=len(open_ids),
        timed_out=timed_out,
        dispatched=dispatched,
        redispatched=redispatched,
        ended=ended,
        errors=errors,
    )
