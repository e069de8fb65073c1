"""Reading the event log: ``timeline``, ``events``, ``stats``, ``projections``, ``replay`` (verify: integrity.py).

Problems are reported plain on stderr, so that stdout holds only what was asked for.
"""

from __future__ import annotations

import sys
from datetime import datetime

import click
from rich.progress import Progress

from relaybus.cli.output import EXIT_PROBLEM, emit_json, fail, json_option, milliseconds, table
from relaybus.cli.services import celery_app, event_store
from relaybus.eventstore.usage import LLMUsage, spending_summary


@click.command()
@click.argument("correlation_id")
@json_option
def timeline(correlation_id: str, as_json: bool) -> None:
    """The ordered timeline of one workflow, with each step's queue wait and run time."""
    with event_store() as store:
        result = store.timeline(correlation_id)
    if not result.events:
        fail(f"no events for correlation id {correlation_id!r}", stderr=True)
    if as_json:
        emit_json(result)
        return
    status = result.workflow.status if result.workflow else "?"
    click.echo(f"workflow {correlation_id}: {status}")
    table("steps", ["task", "agent", "status", "attempts", "queue wait", "run time"],
          [[s.task_id, s.agent, s.status, s.attempts, milliseconds(s.queue_wait_s, from_seconds=True),
            milliseconds(s.run_time_s, from_seconds=True)] for s in result.steps])
    table("events", ["#", "at", "type", "agent", "task"],
          [[e.position, e.occurred_at.isoformat(timespec="milliseconds"), e.type, e.agent, e.task_id]
           for e in result.events])
    spending = spending_summary(result.events)
    if spending:
        click.echo(spending)


@click.command()
@click.option("--type", "type_", default=None, help="Exact type, or a prefix glob such as 'task.*'.")
@click.option("--agent", default=None, help="Only this agent's events.")
@click.option("--status", default=None, help="succeeded, failed, dead_lettered, …")
@click.option("--correlation-id", default=None, help="Only this workflow's events.")
@click.option("--since", type=click.DateTime(), default=None, help="From this time on (UTC).")
@click.option("--until", type=click.DateTime(), default=None, help="Before this time (UTC).")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="At most this many.")
@json_option
def events(type_: str | None, agent: str | None, status: str | None, correlation_id: str | None,
           since: datetime | None, until: datetime | None, limit: int, as_json: bool) -> None:
    """Events filtered by type, agent, status and time range."""
    with event_store() as store:
        found = store.find(type=type_, agent=agent, status=status, correlation_id=correlation_id,
                           since=since, until=until, limit=limit)
    if as_json:
        emit_json(found)
        return
    table("events", ["#", "at", "type", "agent", "correlation id"],
          [[e.position, e.occurred_at.isoformat(timespec="milliseconds"), e.type, e.agent, e.correlation_id]
           for e in found])


@click.command()
@click.option("--since", type=click.DateTime(), default=None, help="From this time on (UTC).")
@click.option("--until", type=click.DateTime(), default=None, help="Before this time (UTC).")
@json_option
def stats(since: datetime | None, until: datetime | None, as_json: bool) -> None:
    """Per-agent counts, failures, p50/p95 run time and queue wait: which agent is the bottleneck?

    Below them, when any task waited for an LLM rate limit: how often, and how long, per agent and model; and
    when LLM calls were made: their tokens and cost per agent and model, and per workflow (the costliest)."""
    with event_store() as store:
        rows = store.agent_stats(since, until)
        waits = store.rate_limit_waits(since, until)
        usage = store.llm_usage(since, until)
        workflows = store.llm_usage(since, until, by=("correlation_id",))
    if as_json:
        emit_json(rows)  # the JSON shape stays a list of agents; the waits are ``relaybus events --type task.deferred``
        return
    table("agents", ["agent", "count", "failures", "run p50", "run p95", "wait p50", "wait p95"],
          [[r.agent, r.count, r.failures,
            *(milliseconds(v, from_seconds=True)
              for v in (r.run_time_p50_s, r.run_time_p95_s, r.queue_wait_p50_s, r.queue_wait_p95_s))] for r in rows])
    if waits:
        table("rate-limit waits", ["agent", "provider", "model", "deferrals", "total wait", "max wait"],
              [[w.agent, w.provider, w.model, w.count, milliseconds(w.total_wait_s, from_seconds=True),
                milliseconds(w.max_wait_s, from_seconds=True)] for w in waits])
    if usage:
        table("llm usage", ["agent", "provider", "model", "calls", "prompt tokens", "completion tokens", "cost"],
              [[u.agent, u.provider, u.model, u.calls, u.prompt_tokens, u.completion_tokens, _cost(u)]
               for u in usage])
        costliest = sorted(workflows, key=lambda u: (u.cost_micros, u.tokens), reverse=True)[:STATS_WORKFLOWS]
        table(f"llm usage by workflow (costliest {STATS_WORKFLOWS})", ["workflow", "calls", "tokens", "cost"],
              [[u.correlation_id, u.calls, u.tokens, _cost(u)] for u in costliest])


#: The workflows ``stats`` lists by LLM spending.
STATS_WORKFLOWS = 20


def _cost(usage: LLMUsage) -> str:
    """The cost with its currency; ``-`` when no call was priced, ``(n of m priced)`` when some were not."""
    if not usage.priced_calls:
        return "-"
    text = f"{usage.cost} {usage.currency or ''}".rstrip()
    return text if usage.priced_calls == usage.calls else f"{text} ({usage.priced_calls} of {usage.calls} priced)"


@click.group()
def projections() -> None:
    """Read models derived from the event log."""


@projections.command("rebuild")
def projections_rebuild() -> None:
    """Rebuild the workflow-status projection from scratch, showing progress."""
    with event_store() as store, Progress() as progress:
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
@json_option
def replay_dry_run(correlation_id: str, as_json: bool) -> None:
    """Rebuild a workflow's state and timeline from its events alone; runs nothing."""
    with event_store() as store:
        result = store.dry_run(correlation_id)
    if result.events_replayed == 0:
        fail(f"no events for correlation id {correlation_id!r}")
    if as_json:
        emit_json(result)
        return
    click.echo(result.model_dump_json(indent=2))


@replay.command("diff")
@click.argument("correlation_a")
@click.argument("correlation_b")
@json_option
def replay_diff(correlation_a: str, correlation_b: str, as_json: bool) -> None:
    """Compare two runs; report the first step whose input or output differs (exit 1 if any)."""
    with event_store() as store:
        result = store.diff(correlation_a, correlation_b)
    if as_json:
        emit_json(result)
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
@json_option
def replay_redrive(correlation_id: str, from_step: str, deterministic: bool, as_json: bool) -> None:
    """Run a recorded workflow again from a step, under a new correlation id (replay_of the original)."""
    from relaybus.replay import RedriveError, redrive

    with event_store() as store:
        try:
            result = redrive(celery_app(), store, correlation_id, from_step, deterministic=deterministic)
        except RedriveError as exc:
            raise click.BadParameter(str(exc), param_hint="--from-step") from None
    if as_json:
        emit_json(result)
    else:
        click.echo(f"re-driven from {result.step} as {result.correlation_id} (replay of {result.original})")


COMMANDS = (timeline, events, stats, projections, replay)
