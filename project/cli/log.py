"""Event-log commands of the ``relaybus`` CLI: db, timeline, events, stats, verify, projections, replay."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import click
from rich.progress import Progress

from relaybus.settings import get_settings

EXIT_PROBLEM = 1
EXIT_UNREACHABLE = 3


@contextmanager
def _store() -> Iterator[Any]:
    from relaybus.eventstore import StoreConfig, StoreUnavailable, open_store

    settings = get_settings()
    try:
        store = open_store(
            settings.eventstore_url,
            config=StoreConfig(redact_keys=frozenset(settings.redact_keys),
                               max_payload_bytes=settings.max_event_payload_bytes),
        )
    except StoreUnavailable as exc:
        click.echo(f"cannot open the event store: {exc}", err=True)
        sys.exit(EXIT_UNREACHABLE)
    try:
        yield store
    finally:
        store.close()


def _echo(data: Any) -> None:
    from relaybus.cli import _emit_json

    _emit_json(data)


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from relaybus.cli import _table as table

    table(title, columns, rows)


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value * 1000:.1f} ms"


@click.group("db")
def db() -> None:
    """The event-store database."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the event-store schema (alembic) at RELAYBUS_EVENTSTORE_URL."""
    from relaybus.eventstore import StoreUnavailable, migrations

    try:
        migrations.upgrade(get_settings().eventstore_url)
    except StoreUnavailable as exc:
        click.echo(f"cannot reach the event store: {exc}", err=True)
        sys.exit(EXIT_UNREACHABLE)
    click.echo("event store schema is up to date")


@click.command()
@click.argument("correlation_id")
@click.option("--json", "as_json", is_flag=True)
def timeline(correlation_id: str, as_json: bool) -> None:
    """The ordered timeline of one workflow, with each step's queue wait and run time."""
    with _store() as store:
        result = store.timeline(correlation_id)
    if not result.events:
        click.echo(f"no events for correlation id {correlation_id!r}", err=True)
        sys.exit(EXIT_PROBLEM)
    if as_json:
        _echo(result)
        return
    status = result.workflow.status if result.workflow else "?"
    click.echo(f"workflow {correlation_id}: {status}")
    _table("steps", ["task", "agent", "status", "attempts", "queue wait", "run time"],
           [[s.task_id[:8], s.agent, s.status, s.attempts, _seconds(s.queue_wait_s), _seconds(s.run_time_s)]
            for s in result.steps])
    _table("events", ["#", "at", "type", "agent", "task"],
           [[e.position, e.occurred_at.isoformat(timespec="milliseconds"), e.type, e.agent, (e.task_id or "")[:8]]
            for e in result.events])


@click.command()
@click.option("--type", "type_", default=None, help="Exact type, or a prefix glob such as 'task.*'.")
@click.option("--agent", default=None)
@click.option("--status", default=None, help="succeeded, failed, dead_lettered, …")
@click.option("--correlation-id", default=None)
@click.option("--since", type=click.DateTime(), default=None)
@click.option("--until", type=click.DateTime(), default=None)
@click.option("--limit", type=click.IntRange(min=1), default=100)
@click.option("--json", "as_json", is_flag=True)
def events(type_: str | None, agent: str | None, status: str | None, correlation_id: str | None,
           since: datetime | None, until: datetime | None, limit: int, as_json: bool) -> None:
    """Events filtered by type, agent, status and time range."""
    with _store() as store:
        found = store.find(type=type_, agent=agent, status=status, correlation_id=correlation_id,
                           since=since, until=until, limit=limit)
    if as_json:
        _echo(found)
        return
    _table("events", ["#", "at", "type", "agent", "correlation id"],
           [[e.position, e.occurred_at.isoformat(timespec="milliseconds"), e.type, e.agent, e.correlation_id]
            for e in found])


@click.command()
@click.option("--since", type=click.DateTime(), default=None)
@click.option("--until", type=click.DateTime(), default=None)
@click.option("--json", "as_json", is_flag=True)
def stats(since: datetime | None, until: datetime | None, as_json: bool) -> None:
    """Per-agent counts, failures, p50/p95 run time and queue wait: which agent is the bottleneck?"""
    with _store() as store:
        rows = store.agent_stats(since, until)
    if as_json:
        _echo(rows)
        return
    _table("agents", ["agent", "count", "failures", "run p50", "run p95", "wait p50", "wait p95"],
           [[r.agent, r.count, r.failures, _seconds(r.run_time_p50_s), _seconds(r.run_time_p95_s),
             _seconds(r.queue_wait_p50_s), _seconds(r.queue_wait_p95_s)] for r in rows])


@click.command()
@click.option("--json", "as_json", is_flag=True)
def verify(as_json: bool) -> None:
    """Check every stream's hash chain; exit 1 and name the first broken link if one is broken."""
    with _store() as store:
        report = store.verify()
    if as_json:
        _echo(report)
    elif report.ok:
        click.echo(f"all chains hold: {report.events_checked} events in {report.streams_checked} streams")
    else:
        click.echo(f"BROKEN: {report.first_broken}", err=True)
    if not report.ok:
        sys.exit(EXIT_PROBLEM)


@click.group()
def projections() -> None:
    """Read models derived from the event log."""


@projections.command("rebuild")
def projections_rebuild() -> None:
    """Rebuild the workflow-status projection from scratch, showing progress."""
    with _store() as store, Progress() as progress:
        task = progress.add_task("rebuilding workflow status", total=None)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        count = store.projection.rebuild(progress=report)
    click.echo(f"rebuilt from {count} events")


@click.group()
def replay() -> None:
    """Replay recorded workflows: dry run, diff, re-drive."""


@replay.command("dry-run")
@click.argument("correlation_id")
@click.option("--json", "as_json", is_flag=True)
def replay_dry_run(correlation_id: str, as_json: bool) -> None:
    """Rebuild a workflow's state and timeline from its events alone; runs nothing."""
    with _store() as store:
        result = store.dry_run(correlation_id)
    if as_json:
        _echo(result)
        return
    click.echo(result.model_dump_json(indent=2))


@replay.command("diff")
@click.argument("correlation_a")
@click.argument("correlation_b")
@click.option("--json", "as_json", is_flag=True)
def replay_diff(correlation_a: str, correlation_b: str, as_json: bool) -> None:
    """Compare two runs; report the first step whose input or output differs (exit 1 if any)."""
    with _store() as store:
        result = store.diff(correlation_a, correlation_b)
    if as_json:
        _echo(result)
    elif result.identical:
        click.echo(f"identical: {result.steps_a} steps")
    else:
        first = result.first_difference
        assert first is not None
        click.echo(f"first difference: {first.agent} #{first.ordinal} ({first.field}) at {', '.join(first.paths)}")
    if not result.identical:
        sys.exit(EXIT_PROBLEM)


@replay.command("redrive")
@click.argument("correlation_id")
@click.option("--from-step", required=True,
              help="A step number (1-based), an agent name (its first call) or agent#n.")
@click.option("--deterministic", is_flag=True, help="Serve the recorded LLM completions; call no provider.")
@click.option("--json", "as_json", is_flag=True)
def replay_redrive(correlation_id: str, from_step: str, deterministic: bool, as_json: bool) -> None:
    """Run a recorded workflow again from a step, under a new correlation id (replay_of the original)."""
    from relaybus.celery import app
    from relaybus.replay import RedriveError, redrive

    with _store() as store:
        try:
            result = redrive(app, store, correlation_id, from_step, deterministic=deterministic)
        except RedriveError as exc:
            raise click.BadParameter(str(exc), param_hint="--from-step") from None
    if as_json:
        _echo(result)
    else:
        click.echo(f"re-driven from {result.step} as {result.correlation_id} (replay of {result.original})")


COMMANDS = (db, timeline, events, stats, verify, projections, replay)
