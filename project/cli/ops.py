"""Operating a deployment: ``worker``, ``status``, ``dlq …`` and ``db upgrade``."""

from __future__ import annotations

import os

import click

from relaybus.cli.errors import unreachable
from relaybus.cli.output import EXIT_USAGE, console, emit_json, fail, json_option, table
from relaybus.cli.services import celery_app, service_errors
from relaybus.settings import get_settings


def _agents_option(value: str | None) -> list[str] | None:
    return [a.strip() for a in value.split(",") if a.strip()] if value else None


@click.command()
@click.option("--agents", default=None, help="Comma-separated agent names (default: all).")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=None,
              help="Pool processes or threads (default: Celery's, the number of CPUs).")
@click.option("--pool", type=click.Choice(["prefork", "threads", "solo"]), default="prefork", show_default=True,
              help="Celery's execution pool.")
@click.option("--urgent", is_flag=True, help="Consume only the agents' urgent queues (a dedicated urgent worker).")
@click.option("--hostname", "-n", default=None, help="The worker's node name (Celery's -n, e.g. writer@%h).")
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
@json_option
def status(as_json: bool) -> None:
    """Queue depth, consumers, urgent and dead-letter depth per agent and event subscriber (over AMQP)."""
    from relaybus.status import queue_status

    try:
        rows = queue_status(celery_app())
    except service_errors() as exc:
        unreachable(exc)
    if as_json:
        emit_json(rows)
        return
    table("queues", ["kind", "agent", "queue", "depth", "consumers", "urgent", "dead letters"],
          [[r.kind, r.agent, r.queue, r.depth, r.consumers, r.urgent_depth, r.dead_letter_depth] for r in rows])


@click.group()
def dlq() -> None:
    """Dead-letter queues: list, show, requeue, purge."""


AGENTS_HELP = "Comma-separated agents or event subscribers (default: every dead-letter queue)."


@dlq.command("list")
@click.option("--agents", default=None, help=AGENTS_HELP)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True,
              help="At most this many letters per queue.")
@json_option
def dlq_list(agents: str | None, limit: int, as_json: bool) -> None:
    """The dead letters of every agent's and event subscriber's dead-letter queue, left in place."""
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
@json_option
def dlq_show(task_id: str, as_json: bool) -> None:
    """One dead letter, by task id (or event id for an event subscriber's): its reason, error and body."""
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
@click.option("--agents", default=None, help=AGENTS_HELP)
@click.option("--id", "task_id", default=None, help="Only this task id.")
@json_option
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
@click.option("--agents", default=None, help=AGENTS_HELP)
@click.option("--id", "task_id", default=None, help="Only this task id.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dlq_purge(agents: str | None, task_id: str | None, yes: bool) -> None:
    """Drop dead letters for good (asks first, unless --yes)."""
    from relaybus.dlq import purge

    if not yes:
        click.confirm("Drop these dead letters for good?", abort=True)
    console.print(f"purged {purge(celery_app(), _agents_option(agents), task_id)} message(s)")


@click.command("revoke")
@click.argument("task_ids", nargs=-1, required=True)
@click.option("--terminate", is_flag=True, help="Also kill the task if a worker runs it now (Celery's terminate).")
@json_option
def revoke_command(task_ids: tuple[str, ...], terminate: bool, as_json: bool) -> None:
    """Revoke tasks for good: kept in the result backend, so a worker that starts later refuses them too."""
    from redis.exceptions import RedisError

    from relaybus.tasks.runtime.revokes import revoke

    errors: tuple[type[BaseException], ...] = (*service_errors(), RedisError)
    try:
        revoked = revoke(task_ids, terminate=terminate, app=celery_app())
    except errors as exc:
        unreachable(exc)
    if as_json:
        emit_json({"revoked": revoked, "terminate": terminate})
        return
    console.print(f"revoked {len(revoked)} task(s){' (terminated where running)' if terminate else ''}")


@click.group("db")
def db() -> None:
    """The event-store database."""


def _show_migrations() -> None:
    """Progress: each migration alembic runs, one line on stderr ("Running upgrade 0004 -> 0005, ...")."""
    import logging
    import sys

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(lambda record: record.getMessage().startswith("Running "))
    migration_log = logging.getLogger("alembic.runtime.migration")
    migration_log.addHandler(handler)
    migration_log.setLevel(logging.INFO)
    migration_log.propagate = False


@db.command("upgrade")
@click.option("--app-role", envvar="RELAYBUS_DB_APP_ROLE", default=None,
              help="Also create this role if missing and grant it what workers, clients and the CLI need "
                   "(INSERT and SELECT on the log, never UPDATE/DELETE/TRUNCATE). PostgreSQL only. "
                   "[env RELAYBUS_DB_APP_ROLE]")
@click.option("--app-password-file", envvar="RELAYBUS_DB_APP_PASSWORD_FILE", default=None,
              type=click.Path(exists=True, dir_okay=False),
              help="Set the app role's password from this file (first line; never printed). "
                   "[env RELAYBUS_DB_APP_PASSWORD_FILE]")
def db_upgrade(app_role: str | None, app_password_file: str | None) -> None:
    """Create or migrate the event-store schema (alembic) at RELAYBUS_EVENTSTORE_URL, as the tables' owner."""
    from relaybus.eventstore import EventStoreError, StoreUnavailable, migrations, roles

    if app_password_file is not None and app_role is None:
        fail("--app-password-file needs --app-role", EXIT_USAGE, stderr=True)
    url = get_settings().eventstore_url
    _show_migrations()
    try:
        migrations.upgrade(url)
    except StoreUnavailable as exc:
        unreachable(exc)
    click.echo("event store schema is up to date")
    if app_role is None:
        return
    password = None
    if app_password_file is not None:
        with open(app_password_file, encoding="utf-8") as file:
            password = file.readline().rstrip("\r\n")
    try:
        granted = roles.grant_app_role(url, app_role, password=password)
    except StoreUnavailable as exc:
        unreachable(exc)
    except (EventStoreError, ValueError) as exc:
        fail(str(exc), stderr=True)
    if url.startswith("postgres"):  # the reference saga's stand-in tables (its workers cannot create them)
        from relaybus.tasks.agents import content_store

        content_store.grant_app_role(url, granted.role)
    click.echo(f"app role {granted.role} {'created' if granted.created else 'exists'}"
               f"{', password set' if granted.password_set else ''}; granted on schema {granted.schema}: "
               + "; ".join(f"{t} {', '.join(p)}" for t, p in roles.APP_PRIVILEGES.items())
               + "; EXECUTE on the append's lock functions")


COMMANDS = (worker, status, dlq, revoke_command, db)
