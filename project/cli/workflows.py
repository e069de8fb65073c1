"""``relaybus workflows list`` and ``relaybus sweep``: every workflow ends, and what has not yet.

A workflow is every record of one correlation id (a pipeline, a saga, a plain chain of tasks). Its
status is the status projection's: ``running`` until an outcome (``completed``, ``failed``,
``timed_out``, ``compensated``...), or, without one, from its tasks (``succeeded``).
``--stuck`` lists the running ones that made no progress within their deadline: a pipeline's own
(recorded when it started), the default ``RELAYBUS_PIPELINE_DEADLINE_S`` for the others.
``relaybus sweep`` runs both sweeps beat runs: pipelines past their deadline end ``timed_out``
(``tasks.pipelines.deadline``), saga steps past theirs time out as each saga's policy says.

Exit codes as for the rest of the CLI: 0 done, 2 bad usage, 3 a service could not be reached.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from relaybus.cli.errors import unreachable
from relaybus.cli.output import console, emit_json, json_option, table
from relaybus.cli.services import celery_app, event_store, service_errors
from relaybus.settings import get_settings

STATUSES = (
    "running", "succeeded", "cancelled", "completed", "failed", "timed_out", "compensating", "compensated",
    "compensation_failed",
)


@click.group()
def workflows() -> None:
    """Workflows (all records of one correlation id): list them, find the stuck ones."""


def _stuck(store: Any, now: datetime, horizon_s: float, limit: int) -> list[dict[str, Any]]:
    """Running workflows past their deadline: overdue pipelines, then other workflows idle past the default."""
    from relaybus.tasks.pipelines.deadline import find_overdue, idle_workflows

    default = get_settings().pipeline_deadline_s
    open_, late = find_overdue(store, now=now, default_deadline_s=default, horizon_s=horizon_s)
    rows: list[dict[str, Any]] = [
        {
            "correlation_id": o.pipeline_id, "kind": f"pipeline {o.pipeline}", "status": "running",
            "deadline_s": o.deadline_s, "idle_s": round(o.idle_s, 3), "last_event_at": o.last_event_at,
            "last_event": o.last_event_type, "agent": o.last_event_agent, "reason": o.reason,
        }
        for o in late
    ]
    pipelines = {w.correlation_id for w in open_}
    for w in idle_workflows(store, now=now, idle_s=default, limit=limit):
        if w.correlation_id not in pipelines:
            rows.append({
                "correlation_id": w.correlation_id, "kind": "workflow", "status": w.status, "deadline_s": default,
                "idle_s": round((now - w.last_event_at).total_seconds(), 3), "last_event_at": w.last_event_at,
                "last_event": None, "agent": None, "reason": f"no progress for over {default:g} s (default deadline)",
            })
    return rows[:limit]


@workflows.command("list")
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only workflows in this status.")
@click.option("--stuck", is_flag=True, help="Only running workflows past their deadline (what the sweep would end).")
@click.option("--horizon-days", type=click.FloatRange(min=0, min_open=True), default=30.0,
              help="--stuck: only pipelines started in the last N days.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many.")
@json_option
def workflows_list(status: str | None, stuck: bool, horizon_days: float, limit: int, as_json: bool) -> None:
    """The most recently active workflows first, with their status; --stuck: those past their deadline."""
    if stuck and status not in (None, "running"):
        raise click.BadParameter("--stuck lists running workflows only", param_hint="--status")
    now = datetime.now(UTC)
    with event_store() as store:
        try:
            if stuck:
                rows = _stuck(store, now, horizon_days * 86400, limit)
            else:
                store.projection.catch_up()
                rows = [
                    {
                        "correlation_id": w.correlation_id, "status": w.status, "first_event_at": w.first_event_at,
                        "last_event_at": w.last_event_at, "idle_s": round((now - w.last_event_at).total_seconds(), 3),
                        "tasks_succeeded": w.tasks_succeeded, "tasks_failed": w.tasks_failed,
                    }
                    for w in store.projection.workflows(status=status, limit=limit)
                ]
        except service_errors() as exc:
            unreachable(exc)
    if as_json:
        emit_json(rows)
    elif stuck:
        table("stuck workflows", ["correlation id", "kind", "idle s", "deadline s", "last record", "agent"],
              [[r["correlation_id"], r["kind"], f"{r['idle_s']:.0f}", f"{r['deadline_s']:g}", r["last_event"],
                r["agent"]] for r in rows])
    else:
        table("workflows", ["correlation id", "status", "started", "last record", "idle s", "tasks ok", "failed"],
              [[r["correlation_id"], r["status"], r["first_event_at"].isoformat(timespec="seconds"),
                r["last_event_at"].isoformat(timespec="seconds"), f"{r['idle_s']:.0f}", r["tasks_succeeded"],
                r["tasks_failed"]] for r in rows])


@click.command()
@click.option("--horizon-days", type=click.FloatRange(min=0, min_open=True), default=30.0,
              help="Only pipelines and sagas started in the last N days.")
@json_option
def sweep(horizon_days: float, as_json: bool) -> None:
    """End the pipelines past their deadline (timed_out) and time out saga steps past theirs, as beat does."""
    import relaybus.tasks.approvals  # noqa: F401  (registers the resumers an expired approval goes through)
    from relaybus.tasks.pipelines.deadline import sweep_pipelines
    from relaybus.tasks.saga import sweep_sagas

    app = celery_app()
    try:
        pipelines = sweep_pipelines(app, horizon_s=horizon_days * 86400)
        sagas = sweep_sagas(app, horizon_s=horizon_days * 86400)
    except service_errors() as exc:
        unreachable(exc)
    if as_json:
        emit_json({"pipelines": pipelines.model_dump(mode="json"), "sagas": sagas.model_dump(mode="json")})
        return
    console.print(
        f"pipelines: open {pipelines.open_pipelines}   timed out: {len(pipelines.timed_out)}   "
        f"outcome on its way: {len(pipelines.pending)}   errors: {len(pipelines.errors)}"
        + (f"   skipped: {pipelines.skipped}" if pipelines.skipped else "")
    )
    for pipeline_id, reason in pipelines.timed_out.items():
        console.print(f"  timed out: {pipeline_id}: {reason}")
    for approval_id in pipelines.approvals_expired:
        console.print(f"  approval expired: {approval_id}")
    console.print(
        f"sagas: open {sagas.open_sagas}   steps timed out: {len(sagas.timed_out)}   "
        f"dispatched: {len(sagas.dispatched)}   sent again: {len(sagas.redispatched)}   "
        f"ended: {len(sagas.ended)}   errors: {len(sagas.errors)}"
    )
    for line in sagas.timed_out:
        console.print(f"  timed out: {line}")
    for item, error in {**pipelines.errors, **sagas.errors}.items():
        console.print(f"  [red]{item}: {error}[/red]")


COMMANDS = (workflows, sweep)
