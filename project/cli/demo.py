"""``relaybus demo``: the reference workflow and saga through real workers (see :mod:`relaybus.demo`)."""

from __future__ import annotations

import json

import click

from relaybus.cli.output import console, emit_json, milliseconds, table
from relaybus.settings import get_settings


@click.command()
@click.option("--request", "request_text", default=None, help="What the pipeline should write about.")
@click.option("--embedded", is_flag=True, help="Use the embedded broker even if RabbitMQ and Redis answer.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def demo(request_text: str | None, embedded: bool, as_json: bool) -> None:
    """Run the reference workflow through real worker processes and print its timeline."""
    from relaybus.demo import DEFAULT_REQUEST, run_demo

    result = run_demo(get_settings(), request_text or DEFAULT_REQUEST, force_embedded=embedded)
    if as_json:
        emit_json(result)
        return
    console.print(f"[bold]mode:[/bold] {result.mode}   [bold]correlation id:[/bold] {result.correlation_id}")
    colour = "green" if result.status == "completed" else "red"
    console.print(f"[{colour}]pipeline {result.status}[/{colour}] in {result.seconds:.2f}s")
    console.print_json(json.dumps(result.output))
    table(f"timeline of {result.correlation_id}", ["agent", "task", "status", "attempts", "queue wait", "run time"],
          [[s["agent"], s["task_id"], s["status"], s["attempts"], milliseconds(s["queue_wait_ms"]),
            milliseconds(s["run_ms"])] for s in result.timeline])

    if result.saga:
        saga = result.saga
        colour = "green" if saga["status"] in ("completed", "compensated") else "red"
        console.print(f"\n[bold]saga[/bold] {saga['saga_id']} (publishing made to fail): "
                      f"[{colour}]{saga['status']}[/{colour}] in {saga['seconds']:.2f}s, "
                      f"{saga['live_side_effects']} side effects left")
        table("saga history", ["#", "transition", "step"],
              [[i + 1, h["type"], h["step"]] for i, h in enumerate(saga["history"])])


COMMANDS = (demo,)
