"""The ``relaybus`` command line.

Exit codes: 0 done; 1 the operation found a problem (a broken chain, a failed workflow); 2 bad
usage (click); 3 a service could not be reached.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from relaybus.cli.saga import saga as saga_group
from relaybus.settings import get_settings

console = Console()
EXIT_PROBLEM = 1
EXIT_UNREACHABLE = 3


def _emit_json(data: Any) -> None:
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    elif isinstance(data, list):
        data = [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in data]
    click.echo(json.dumps(data, indent=2, default=str))


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*["" if v is None else str(v) for v in row])
    console.print(table)


def _app() -> Any:
    from relaybus.celery import app

    return app


def _agents_option(value: str | None) -> list[str] | None:
    return [a.strip() for a in value.split(",") if a.strip()] if value else None


def _unreachable(exc: BaseException) -> None:
    console.print(f"[red]cannot reach the broker:[/red] {exc}")
    sys.exit(EXIT_UNREACHABLE)


@click.group()
def main() -> None:
    """relaybus: event-driven AI-agent orchestration on Celery."""


main.add_command(saga_group)


@main.command()
@click.option("--request", "request_text", default=None, help="What the pipeline should write about.")
@click.option("--embedded", is_flag=True, help="Use the embedded broker even if RabbitMQ and Redis answer.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def demo(request_text: str | None, embedded: bool, as_json: bool) -> None:
    """Run the reference workflow through real worker processes and print its timeline."""
    from relaybus.demo import DEFAULT_REQUEST, run_demo

    result = run_demo(get_settings(), request_text or DEFAULT_REQUEST, force_embedded=embedded)
    if as_json:
        _emit_json(result)
        return
    console.print(f"[bold]mode:[/bold] {result.mode}   [bold]correlation id:[/bold] {result.correlation_id}")
    colour = "green" if result.status == "completed" else "red"
    console.print(f"[{colour}]pipeline {result.status}[/{colour}] in {result.seconds:.2f}s")
    console.print_json(json.dumps(result.output))
    _table(f"timeline of {result.correlation_id}", ["agent", "task", "status", "attempts", "queue wait", "run time"],
           [[s["agent"], s["task_id"][:8], s["status"], s["attempts"], _ms(s["queue_wait_ms"]), _ms(s["run_ms"])]
            for s in result.timeline])


    if result.saga:
        saga = result.saga
        colour = "green" if saga["status"] in ("completed", "compensated") else "red"
        console.print(f"\n[bold]saga[/bold] {saga['saga_id']} (publishing made to fail): "
                      f"[{colour}]{saga['status']}[/{colour}] in {saga['seconds']:.2f}s, "
                      f"{saga['live_side_effects']} side effects left")
        _table("saga history", ["#", "transition", "step"],
               [[i + 1, h["type"], h["step"]] for i, h in enumerate(saga["history"])])


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f} ms"


@main.command()
@click.argument("pipeline")
@click.option("--input", "input_json", required=True, help="The pipeline's input as JSON.")
@click.option("--priority", type=click.Choice(["urgent", "high", "normal", "low"]), default=None)
@click.option("--correlation-id", default=None)
@click.option("--wait/--no-wait", default=True, help="Wait for the outcome (default) or return at once.")
@click.option("--timeout", type=click.FloatRange(min=0), default=120.0)
@click.option("--json", "as_json", is_flag=True)
def run(pipeline: str, input_json: str, priority: str | None, correlation_id: str | None, wait: bool,
        timeout: float, as_json: bool) -> None:
    """Start a pipeline (e.g. research) with a JSON input; exit 1 if it fails."""
    from relaybus.tasks.errors import InvalidInput, UnknownPipeline
    from relaybus.tasks.pipelines.client import start

    try:
        data = json.loads(input_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--input") from None
    try:
        handle = start(pipeline, data, priority=priority, correlation_id=correlation_id, app=_app())
    except UnknownPipeline as exc:
        raise click.BadParameter(str(exc), param_hint="PIPELINE") from None
    except InvalidInput as exc:
        raise click.BadParameter(str(exc), param_hint="--input") from None
    if not wait:
        _emit_json({"id": handle.id, "status": handle.status()}) if as_json else click.echo(handle.id)
        return
    outcome = handle.wait(timeout)
    if as_json:
        _emit_json(outcome)
    else:
        console.print(f"pipeline {handle.id}: {outcome.status}")
        if outcome.reason:
            console.print(f"reason: {outcome.reason}")
    if outcome.status != "completed":
        sys.exit(EXIT_PROBLEM)


@main.command()
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
        argv = worker_argv(topology_of(_app()), _agents_option(agents), concurrency=concurrency, pool=pool,
                           urgent_only=urgent, hostname=hostname)
    except UnknownAgent as exc:
        raise click.BadParameter(str(exc), param_hint="--agents") from None
    if dry_run:
        click.echo(" ".join(argv))
        return
    os.execv(argv[0], argv)


@main.command()
@click.option("--json", "as_json", is_flag=True)
def status(as_json: bool) -> None:
    """Queue depth, consumers, urgent and dead-letter depth per agent (over AMQP)."""
    from relaybus.status import queue_status

    try:
        rows = queue_status(_app())
    except OSError as exc:
        _unreachable(exc)
        return
    if as_json:
        _emit_json(rows)
        return
    _table("agent queues", ["agent", "queue", "depth", "consumers", "urgent", "dead letters"],
           [[r.agent, r.queue, r.depth, r.consumers, r.urgent_depth, r.dead_letter_depth] for r in rows])


@main.group()
def dlq() -> None:
    """Dead-letter queues: list, show, requeue, purge."""


@dlq.command("list")
@click.option("--agents", default=None)
@click.option("--limit", type=click.IntRange(min=1), default=100)
@click.option("--json", "as_json", is_flag=True)
def dlq_list(agents: str | None, limit: int, as_json: bool) -> None:
    from relaybus.dlq import peek

    letters = peek(_app(), _agents_option(agents), limit)
    if as_json:
        _emit_json(letters)
        return
    _table("dead letters", ["task id", "task", "reason", "error", "attempts", "from", "correlation id"],
           [[d.task_id, d.task, d.reason, f"{d.error_type}: {d.error_message}", d.attempts, d.original_queue,
             d.correlation_id] for d in letters])


@dlq.command("show")
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True)
def dlq_show(task_id: str, as_json: bool) -> None:
    from relaybus.dlq import peek

    matches = [d for d in peek(_app(), None, 100_000) if d.task_id == task_id]
    if not matches:
        console.print(f"[red]no dead letter with task id {task_id!r}[/red]")
        sys.exit(EXIT_PROBLEM)
    if as_json:
        _emit_json(matches[0])
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
        moved = requeue(_app(), _agents_option(agents), task_id, progress=lambda _letter: progress.advance(bar))
    if as_json:
        _emit_json(moved)
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
    console.print(f"purged {purge(_app(), _agents_option(agents), task_id)} message(s)")


def _register() -> None:
    from relaybus.cli.log import COMMANDS

    for command in COMMANDS:
        main.add_command(command)


_register()
