"""``relaybus saga ...``: start, list, show, resume and sweep sagas.

Exit codes as for the rest of the CLI: 0 done, 1 the saga was not found (or cannot be resumed),
2 bad usage (the message names the argument), 3 a service could not be reached.
"""

from __future__ import annotations

import json
from typing import Any

import click

from relaybus.cli.errors import unreachable
from relaybus.cli.output import BUDGET_HINT, budget_of, budget_options, console, emit_json, fail, json_option, table
from relaybus.cli.services import celery_app, service_errors

STATUSES = ("running", "compensating", "completed", "compensated", "compensation_failed")


def _print_view(view: Any) -> None:
    console.print(
        f"[bold]saga[/bold] {view.saga_id} ({view.saga})   [bold]status:[/bold] {view.status}   "
        f"[bold]round:[/bold] {view.round}   [bold]correlation id:[/bold] {view.correlation_id}"
    )
    duration = f"{view.duration_s:.3f}s" if view.duration_s is not None else "-"
    console.print(f"started {view.started_at.isoformat()}   ended {view.ended_at or '-'}   took {duration}")
    rows = []
    for s in view.steps:
        name = s.step if s.member == s.step else f"{s.step}/{s.member}"
        c = s.compensation
        error = (c.error if c is not None and c.error else None) or s.error
        rows.append([
            name,
            s.outcome,
            s.attempt,
            s.started_at.strftime("%H:%M:%S.%f")[:-3] if s.started_at else "",
            f"{s.duration_s:.3f}" if s.duration_s is not None else "",
            c.status if c is not None else "n/a",
            c.attempt if c is not None else "",
            _short(error),
        ])
    table("steps", ["step", "outcome", "attempt", "started", "took s", "compensation", "undo attempt", "error"], rows)


def _short(error: Any) -> str:
    if isinstance(error, dict):
        return f"{error.get('error_type', '')}: {error.get('error_message', '')}"[:80]
    return "" if error is None else str(error)[:80]


@click.group()
def saga() -> None:
    """Sagas: start, list, show, resume, sweep."""


@saga.command("start")
@click.argument("name")
@click.option("--input", "input_text", default="null", help="The saga's input, as JSON.")
@click.option("--id", "saga_id", default=None, help="The saga id (default: a new UUID); starting one twice is a no-op.")
@click.option("--correlation-id", default=None, help="Tie the saga into a wider workflow's timeline.")
@budget_options
@json_option
def saga_start(name: str, input_text: str, saga_id: str | None, correlation_id: str | None,
               budget_tokens: int | None, budget_cost: str | None, as_json: bool) -> None:
    """Start the saga NAME; prints its id."""
    from relaybus.sagas import UnknownSaga
    from relaybus.tasks.errors import InvalidInput
    from relaybus.tasks.saga import known_sagas, start_saga

    try:
        data = json.loads(input_text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--input") from None
    app = celery_app()
    try:
        started = start_saga(name, data, saga_id=saga_id, correlation_id=correlation_id, app=app,
                             budget=budget_of(budget_tokens, budget_cost))
    except InvalidInput as exc:
        about_budget = any(tuple(e.get("loc", ()))[:1] == ("budget",) for e in exc.errors)
        raise click.BadParameter(str(exc), param_hint=BUDGET_HINT if about_budget else "--input") from None
    except UnknownSaga:
        known = ", ".join(known_sagas(app)) or "none"
        raise click.BadParameter(f"no saga named {name!r}; known sagas: {known}", param_hint="NAME") from None
    except ValueError as exc:
        hint = "--id" if "saga id" in str(exc) else "--input"
        raise click.BadParameter(str(exc), param_hint=hint) from None
    except service_errors() as exc:
        unreachable(exc)
    if as_json:
        emit_json({"saga_id": started, "saga": name})
    else:
        click.echo(started)


@saga.command("list")
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only sagas in this status.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many.")
@json_option
def saga_list(status: str | None, limit: int, as_json: bool) -> None:
    """The newest sagas first."""
    from relaybus.tasks.saga import list_sagas

    views = list_sagas(status, limit, app=celery_app())  # type: ignore[arg-type]
    if as_json:
        emit_json([v.model_dump(mode="json", exclude={"history", "input", "output"}) for v in views])
        return
    table("sagas", ["saga id", "saga", "status", "round", "started", "took s", "correlation id"],
          [[v.saga_id, v.saga, v.status, v.round, v.started_at.isoformat(timespec="seconds"),
            f"{v.duration_s:.3f}" if v.duration_s is not None else "", v.correlation_id] for v in views])


@saga.command("show")
@click.argument("saga_id")
@json_option
def saga_show(saga_id: str, as_json: bool) -> None:
    """A saga's steps, their outcomes and timings, and its compensations."""
    from relaybus.sagas import SagaNotFound
    from relaybus.tasks.saga import saga_status

    try:
        view = saga_status(saga_id, app=celery_app())
    except SagaNotFound:
        fail(f"no saga {saga_id!r}")
    if as_json:
        emit_json(view)
    else:
        _print_view(view)


@saga.command("resume")
@click.argument("saga_id")
@json_option
def saga_resume(saga_id: str, as_json: bool) -> None:
    """Retry the failed compensations of a compensation_failed saga, once its cause is fixed."""
    from relaybus.sagas import InvalidTransition, SagaNotFound
    from relaybus.tasks.saga import resume_saga

    try:
        view = resume_saga(saga_id, app=celery_app())
    except SagaNotFound:
        fail(f"no saga {saga_id!r}")
    except InvalidTransition as exc:
        fail(f"saga {saga_id!r} cannot be resumed: {exc.reason}")
    except service_errors() as exc:
        unreachable(exc)
    if as_json:
        emit_json(view)
    else:
        console.print(f"resumed saga {saga_id}: compensation round {view.round}, status {view.status}")


@saga.command("sweep")
@click.option(
    "--horizon-days",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    help="Only sagas started or resumed in the last N days.",
)
@click.option(
    "--stuck-after",
    type=click.FloatRange(min=0),
    default=600.0,
    help="Send again a compensation running longer than this many seconds.",
)
@json_option
def saga_sweep(horizon_days: float, stuck_after: float, as_json: bool) -> None:
    """Time out steps past their deadline and act as each saga's policy says (what beat runs every 30 s)."""
    from relaybus.tasks.saga import sweep_sagas

    try:
        report = sweep_sagas(celery_app(), horizon_s=horizon_days * 86400, stuck_compensation_after_s=stuck_after)
    except service_errors() as exc:
        unreachable(exc)
    if as_json:
        emit_json(report)
        return
    console.print(
        f"open sagas: {report.open_sagas}   timed out: {len(report.timed_out)}   "
        f"dispatched: {len(report.dispatched)}   sent again: {len(report.redispatched)}   "
        f"ended: {len(report.ended)}   errors: {len(report.errors)}"
    )
    for line in report.timed_out:
        console.print(f"  timed out: {line}")
    for saga_id, error in report.errors.items():
        console.print(f"  [red]{saga_id}: {error}[/red]")


COMMANDS = (saga,)
