"""Operating a deployment: ``worker``, ``status``, ``dlq …`` and ``db upgrade``."""

from __future__ import annotations

import os

import click

from relaybus.cli.output import EXIT_UNREACHABLE, console, emit_json, fail, table
from relaybus.cli.services import celery_app
from relaybus.settings import get_settings


def _agents_option(value: str | None) -> list[str] | None:
    return [a.strip() for a in value.split(",") if a.strip()] if value else None


@click.command()
@click.option("--agents", default=None, help="Comma-separated agent names (default: all).")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=None)
@click.option("--pool", type=click.Choice(["prefork", "threads", "solo"]), default="prefork")
@click.option("--urgent", is_flag=True, help="Consume only the agents' urgent queues (a dedicated urgent worker).")
@click.option("--hostname", "-n", default=None)
@click.option("--dry-run", is_flag=True, help="Print the celery command instead of running it.")
def worker(agents: str | None, concurrency: int | None, pool: str, urgent: bool, hostname: str | None,
           dry_run: bool) -> None:
    """Start a Celery worker for some agents' queues."""
    from relaybus.celery import topology_of
    from relaybus.workers import UnknownAgent, worker_argv

    try:
        argv = worker_argv(topology_of(celery_app()), _agents_option(agents), concurrency=concurrency, pool=pool,
                           urgent_only=urgent, hostname=hostname)
    except UnknownAgent as exc:
        raise click.BadParameter(str(exc), param_hint="--agents") from None
    if dry_run:
        click.echo(" ".join(argv))
        return
    os.execv(argv[0], argv)


@click.command()
@click.option("--json", "as_json", is_flag=True)
def status(as_json: bool) -> None:
    """Queue depth, consumers, urgent and dead-letter depth per agent (over AMQP)."""
    from relaybus.status import queue_status

    try:
        rows = queue_status(celery_app())
    except OSError as exc:
        fail(f"cannot reach the broker: {exc}", EXIT_UNREACHABLE)
    if as_json:
        emit_json(rows)
        return
    table("agent queues", ["agent", "queue", "depth", "consumers", "urgent", "dead letters"],
          [[r.agent, r.queue, r.depth, r.consumers, r.urgent_depth, r.dead_letter_depth] for r in rows])


@click.group()
def dlq() -> None:
    """Dead-letter queues: list, show, requeue, purge."""


@dlq.command("list")
@click.option("--agents", default=None)
@click.option("--limit", type=click.IntRange(min=1), default=100)
@click.option("--json", "as_json", is_flag=True)
def dlq_list(agents: str | None, limit: int, as_json: bool) -> None:
    from relaybus.dlq import peek

    letters = peek(celery_app(), _agents_option(agents), limit)
    if as_json:
        emit_json(letters)
        return
    table("dead letters", ["task id", "task", "reason", "error", "attempts", "from", "correlation id"],
          [[d.task_id, d.task, d.reason, f"{d.error_type}: {d.error_message}", d.attempts, d.original_queue,
            d.correlation_id] for d in letters])


@dlq.command("show")
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True)
def dlq_show(task_id: str, as_json: bool) -> None:
    from relaybus.dlq import peek

    matches = [d for d in peek(celery_app(), None, 100_000) if d.task_id == task_id]
    if not matches:
        fail(f"no dead letter with task id {task_id!r}")
    if as_json:
        emit_json(matches[0])
        return
    for key, value in matches[0].model_dump().items():
        console.print(f"[bold]{key}:[/bold] {value}")


@dlq.command("requeue")
@click.option("--agents", default=None)
@click.option("--id", "task_id", default=None, help="Only this task id.")
@click.option("--json", "as_json", is_flag=True)
def dlq_requeue(agents: str | None, task_id: str | None, as_json: bool) -> None:
    """Send dead letters back to their queue with a fresh retry budget."""
    from rich.progress import Progress

    from relaybus.dlq import requeue

    with Progress(console=console, transient=True, disable=as_json) as progress:
        bar = progress.add_task("requeueing dead letters", total=None)
        moved = requeue(celery_app(), _agents_option(agents), task_id,
                        progress=lambda _letter: progress.advance(bar))
    if as_json:
        emit_json(moved)
        return
    console.print(f"requeued {len(moved)} message(s)")


@dlq.command("purge")
@click.option("--agents", default=None)
@click.option("--id", "task_id", default=None, help="Only this task id.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dlq_purge(agents: str | None, task_id: str | None, yes: bool) -> None:
    from relaybus.dlq import purge

    if not yes:
        click.confirm("Drop these dead letters for good?", abort=True)
    console.print(f"purged {purge(celery_app(), _agents_option(agents), task_id)} message(s)")


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
        fail(f"cannot reach the event store: {exc}", EXIT_UNREACHABLE, stderr=True)
    click.echo("event store schema is up to date")


COMMANDS = (worker, status, dlq, db)
