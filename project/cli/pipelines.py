"""Pipelines from the command line: ``relaybus run`` and ``relaybus pipelines``."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from relaybus.cli.output import (
    BUDGET_HINT,
    EXIT_PROBLEM,
    EXIT_UNREACHABLE,
    budget_of,
    budget_options,
    console,
    emit_json,
    fail,
    json_option,
)
from relaybus.cli.services import celery_app


@click.command()
@click.argument("pipeline")
@click.option("--input", "input_json", required=True, help="The pipeline's input as JSON.")
@click.option("--priority", type=click.Choice(["urgent", "high", "normal", "low"]), default=None,
              help="Priority class of the whole workflow (default: RELAYBUS_DEFAULT_PRIORITY).")
@click.option("--correlation-id", default=None, help="The workflow's id (default: a new UUID).")
@click.option("--wait/--no-wait", default=True, help="Wait for the outcome (default) or return at once.")
@click.option("--timeout", type=click.FloatRange(min=0), default=120.0, show_default=True,
              help="Seconds to wait for the outcome; past it exit 1, the workflow goes on.")
@budget_options
@json_option
def run(pipeline: str, input_json: str, priority: str | None, correlation_id: str | None, wait: bool,
        timeout: float, budget_tokens: int | None, budget_cost: str | None, as_json: bool) -> None:
    """Start a pipeline (e.g. research) with a JSON input; exit 1 if it fails."""
    from relaybus.tasks.errors import InvalidInput, PublishFailed, UnknownPipeline
    from relaybus.tasks.pipelines.client import start

    try:
        data = json.loads(input_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--input") from None
    try:
        handle = start(pipeline, data, priority=priority, correlation_id=correlation_id, app=celery_app(),
                       budget=budget_of(budget_tokens, budget_cost))
    except UnknownPipeline as exc:
        raise click.BadParameter(str(exc), param_hint="PIPELINE") from None
    except InvalidInput as exc:
        about = {tuple(e.get("loc", ()))[:1] for e in exc.errors}
        hint = "--correlation-id" if ("correlation_id",) in about else "--input"
        hint = BUDGET_HINT if ("budget",) in about else hint
        raise click.BadParameter(str(exc), param_hint=hint) from None
    except PublishFailed as exc:  # blocked, stopped or unreachable broker: said after RELAYBUS_PUBLISH_TIMEOUT_S
        fail(f"the pipeline was not started: {exc}", EXIT_UNREACHABLE, stderr=True)
    if not wait:
        emit_json({"id": handle.id, "status": handle.status()}) if as_json else click.echo(handle.id)
        return
    try:
        outcome = handle.wait(timeout)
    except TimeoutError as exc:
        fail(f"{exc}; it goes on: follow it with `relaybus timeline {handle.id}`", EXIT_PROBLEM, stderr=True)
    if as_json:
        emit_json(outcome)
    else:
        console.print(f"pipeline {handle.id}: {outcome.status}")
        if outcome.reason:
            console.print(f"reason: {outcome.reason}")
    if outcome.status != "completed":
        sys.exit(EXIT_PROBLEM)


@click.command(name="pipelines")
@json_option
def list_pipelines(as_json: bool) -> None:
    """The pipelines your modules declare (RELAYBUS_EXTRA_MODULES): steps, agents, input and deadline."""
    from relaybus.tasks.pipelines.registry import declared
    from relaybus.tasks.runtime.config import runtime_config

    app = celery_app()
    default_deadline = runtime_config(app).pipeline_deadline_s
    found: list[dict[str, Any]] = [
        {
            "name": p.name,
            "description": p.description,
            "input": sorted(p.input_model.model_fields),
            "agents": p.agents,
            "steps": p.describe(),
            "deadline_s": p.deadline_s or default_deadline,
        }
        for p in declared(app)
    ]
    if as_json:
        emit_json(found)
        return
    for p in found:  # plain lines: a table would cut agent and step names in a narrow terminal
        click.echo(f"{p['name']}" + (f"  {p['description']}" if p["description"] else ""))
        click.echo(f"  input: {', '.join(p['input'])}")
        click.echo(f"  agents: {', '.join(p['agents'])}")
        click.echo(f"  deadline: {p['deadline_s']:g} s without progress")
        for line in p["steps"]:
            click.echo(f"  {line}")


COMMANDS = (run, list_pipelines)
