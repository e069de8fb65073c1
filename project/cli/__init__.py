"""The ``relaybus`` command line: one root group, the commands in a module per concern.

::

    pipelines.py   run                      ops.py    worker, status, dlq …, db upgrade
    saga.py        saga …                   log.py    timeline, events, stats, projections, replay
    demo.py        demo                     workflows.py  workflows list, sweep (pipelines and sagas)
    integrity.py   verify, checkpoint, chain-key

They print through :mod:`relaybus.cli.output` (which lists the exit codes) and reach Celery and the event
store through :mod:`relaybus.cli.services`; neither they nor those import this module.
"""

from __future__ import annotations

import click

from relaybus.cli import demo, integrity, log, ops, pipelines, saga, workflows


@click.group()
def main() -> None:
    """relaybus: event-driven AI-agent orchestration on Celery."""


for _module in (pipelines, ops, saga, workflows, log, integrity, demo):
    for _command in _module.COMMANDS:
        main.add_command(_command)
