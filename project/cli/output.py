"""How every command prints: the console, tables, JSON, and leaving with an exit code.

Exit codes: 0 done; 1 the operation found a problem (a broken chain, a failed workflow, nothing by that
id); 2 bad usage (click); 3 a service could not be reached; 4 refused (``approvals approve|reject`` by someone
not among the approvers, or of an approval decided already).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn

import click
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_REFUSED = 4

console = Console()
#: The width a table may take when stdout is not a terminal: wide enough never to shorten a cell.
WIDTH_WHEN_PIPED = 100_000


#: ``--json`` on every command that prints: the same data, for scripts.
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (every field, ids in full) instead of a table."
)


def emit_json(data: Any) -> None:
    """``data`` (a model, a list of models, or plain JSON values) as indented JSON on stdout."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    elif isinstance(data, list):
        data = [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in data]
    click.echo(json.dumps(data, indent=2, default=str))


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """A titled table; ``None`` cells are left empty."""
    shown = Table(title=title)
    for column in columns:
        shown.add_column(column)
    for row in rows:
        shown.add_row(*["" if v is None else str(v) for v in row])
    # Piped or redirected, a table keeps every cell whole (ids included) rather than fitting 80 columns.
    # (Console.print's width cannot exceed the console's, so a wide console of its own.)
    (console if console.is_terminal else Console(width=WIDTH_WHEN_PIPED)).print(shown, crop=False)


def fail(message: str, code: int = EXIT_PROBLEM, *, stderr: bool = False) -> NoReturn:
    """Say what went wrong and exit with ``code``: in red on stdout, or plain on stderr (always so for an
    unreachable service, which a script's ``2>`` should catch)."""
    if stderr or code == EXIT_UNREACHABLE:
        click.echo(message, err=True)
    else:
        console.print(f"[red]{message}[/red]")
    sys.exit(code)


def milliseconds(value: float | None, *, from_seconds: bool = False) -> str:
    """A duration in milliseconds, ``""`` when unknown."""
    if value is None:
        return ""
    return f"{value * 1000 if from_seconds else value:.1f} ms"


def budget_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--budget-tokens`` and ``--budget-cost``: what the workflow's LLM calls may spend (README, Budgets)."""
    command = click.option("--budget-cost", default=None, metavar="AMOUNT",
                           help="Cost budget in RELAYBUS_LLM_PRICE_CURRENCY, a decimal such as 0.05.")(command)
    return click.option("--budget-tokens", type=click.IntRange(min=1), default=None,
                        help="Token budget (prompt + completion) of the workflow's LLM calls.")(command)


def budget_of(tokens: int | None, cost: str | None) -> dict[str, Any] | None:
    """The budget the flags give, or None; a cost that is not a decimal is named."""
    if tokens is None and cost is None:
        return None
    if cost is not None:
        try:
            Decimal(cost)
        except InvalidOperation:
            raise click.BadParameter(f"{cost!r} is not a decimal amount", param_hint="--budget-cost") from None
    return {k: v for k, v in (("tokens", tokens), ("cost", cost)) if v is not None}


BUDGET_HINT = "--budget-tokens/--budget-cost"
