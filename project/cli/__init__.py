"""The ``relaybus`` command line: one root group, the commands in a module per concern.

::

    pipelines.py   run                      ops.py    worker, status, dlq …, db upgrade
    saga.py        saga …                   log.py    timeline, events, stats, projections, replay
    demo.py        demo                     workflows.py  workflows list, sweep (pipelines and sagas)
    integrity.py   verify, checkpoint, chain-key   web.py  web (the operations console)
    approvals.py   approvals list, show, approve, reject

They print through :mod:`relaybus.cli.output` (which lists the exit codes) and reach Celery and the event
store through :mod:`relaybus.cli.services`; neither they nor those import this module.
"""

from __future__ import annotations

import os
import time
import traceback
from typing import Any

import click

from relaybus.cli import approvals, demo, integrity, log, ops, pipelines, saga, web, workflows

#: How long a command waits for an unavailable event log before it says so (``RELAYBUS_CLI_STORE_WAIT_S``).
CLI_STORE_WAIT_S = 10.0


class _Root(click.Group):
    """The root group: an error no command handled becomes one line and an exit code (:mod:`.errors`)."""

    def invoke(self, ctx: click.Context) -> Any:
        from relaybus.tasks.runtime.recording.eventlog import waiting_until

        try:
            # A client records what it sends (task.sent, saga.started): an unavailable event log is waited
            # for this long from a terminal, not the two minutes a worker waits, then named (exit 3).
            wait_s = float(os.environ.get("RELAYBUS_CLI_STORE_WAIT_S", CLI_STORE_WAIT_S))
            with waiting_until(time.monotonic() + wait_s):
                return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as error:
            from relaybus.cli.errors import explain

            code, message = explain(error)
            if os.environ.get("RELAYBUS_DEBUG"):
                traceback.print_exc()
            click.echo(message, err=True)
            ctx.exit(code)


@click.group(cls=_Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="relaybus", prog_name="relaybus")
def main() -> None:
    """relaybus: event-driven AI-agent orchestration on Celery.

    Exit codes: 0 done; 1 a problem was found (a broken chain, a failed workflow, nothing by that id);
    2 bad usage; 3 a service (broker, result backend, event store) could not be reached or is not set up.
    Settings come from RELAYBUS_* environment variables (README: Configuration).
    """


for _module in (pipelines, ops, saga, approvals, workflows, log, integrity, demo, web):
    for _command in _module.COMMANDS:
        main.add_command(_command)
