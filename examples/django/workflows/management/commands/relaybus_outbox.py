"""``python manage.py relaybus_outbox``: publish the pipeline starts the broker did not take yet.

One pass by default (for cron or a systemd timer): every unpublished message whose next attempt is due
is published, oldest first; the first one the broker refuses ends the pass (the others would fail the same
way) and is retried after its backoff. ``--loop`` keeps going, one pass every ``--interval`` seconds.

Exit codes as for the ``relaybus`` CLI: 0 nothing failed, 3 the broker (or the event log) could not be
reached, so some messages are still waiting.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workflows import outbox

EXIT_UNREACHABLE = 3


class Command(BaseCommand):
    help = "Publish the pipeline starts waiting in the outbox (retried with backoff until the broker takes them)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--loop", action="store_true", help="Run a pass every --interval seconds, until stopped.")
        parser.add_argument("--interval", type=float, default=5.0, help="Seconds between passes with --loop.")
        parser.add_argument("--limit", type=int, default=100, help="At most this many messages per pass.")

    def handle(self, *args: Any, loop: bool, interval: float, limit: int, **options: Any) -> None:
        while True:
            result = outbox.publish_due(limit=limit)
            for workflow_id in result.published:
                self.stdout.write(f"published {workflow_id}")
            for attempt in result.refused:
                self.stderr.write(f"refused {attempt.workflow_id}: {attempt.error}")
            for attempt in result.failed:
                self.stderr.write(f"not published {attempt.workflow_id}: {attempt.error}")
            self.stdout.write(
                f"outbox: {len(result.published)} published, {len(result.failed)} failed, "
                f"{len(result.refused)} refused, {result.unpublished} still unpublished"
            )
            if not loop:
                if result.failed:
                    raise CommandError(
                        "the broker did not take every due message; they are retried later", returncode=EXIT_UNREACHABLE
                    )
                return
            time.sleep(interval)
