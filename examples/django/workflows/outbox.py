"""A transactional outbox for pipeline starts: a request's row never waits on a publish that failed.

The view writes the request and its :class:`~workflows.models.OutboxMessage` in one transaction, and
``transaction.on_commit`` tries to publish it at once (:func:`publish`). When the broker is away the
message stays unpublished, with its error and the time of its next attempt (exponential backoff with
jitter), and ``python manage.py relaybus_outbox`` (:func:`publish_due`) publishes it later: run it from
cron, a systemd timer or as a long-running ``--loop`` process.

Publishing twice is harmless: every attempt starts the pipeline under the request's id, relaybus derives
the entry task's id from it, and the entry task does nothing when a copy of it already ran (its done-marker).
So an attempt whose publish reached the broker but whose ``published_at`` was never saved (a crash, a lost
confirm) is simply published again.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

import relaybus
from workflows.models import OutboxMessage, WorkflowRequest
from workflows.pipelines import PIPELINE, start_workflow

logger = logging.getLogger(__name__)

#: Waits between attempts double from ``backoff_s`` up to ``backoff_max_s``; each is jittered to 50-100 %.
DEFAULTS = {"backoff_s": 2.0, "backoff_max_s": 300.0}


def _option(name: str) -> float:
    return float(getattr(settings, "RELAYBUS_OUTBOX", {}).get(name, DEFAULTS[name]))


def backoff(attempts: int) -> timedelta:
    """How long to wait after the ``attempts``-th failed attempt."""
    ceiling = min(_option("backoff_s") * 2 ** max(attempts - 1, 0), _option("backoff_max_s"))
    return timedelta(seconds=ceiling * random.uniform(0.5, 1.0))


def enqueue(row: WorkflowRequest) -> OutboxMessage:
    """Write the start of ``row``'s pipeline to the outbox; call it inside the transaction that saves ``row``."""
    return OutboxMessage.objects.create(
        workflow=row, pipeline=PIPELINE, input={"request": row.request}, priority=row.priority
    )


@dataclass
class Attempt:
    """What one publish attempt did: ``published``, ``failed`` (will be retried) or ``refused`` (never)."""

    workflow_id: str
    outcome: str
    error: str = ""


def publish(workflow_id: object) -> Attempt | None:
    """Try to publish one outbox message now; ``None`` if it is already published, refused or being
    published by another process (its row is locked: PostgreSQL, MySQL; SQLite has one writer anyway)."""
    with transaction.atomic():
        message = (
            OutboxMessage.objects.select_for_update(skip_locked=True)
            .filter(pk=workflow_id, published_at=None, refused_at=None)
            .first()
        )
        if message is None:
            return None
        return _attempt(message)


def _attempt(message: OutboxMessage) -> Attempt:
    workflow_id = str(message.pk)
    message.attempts += 1
    try:
        start_workflow(message.input, workflow_id, message.priority, pipeline=message.pipeline)
    except (relaybus.TransientError, BrokerError, OSError) as exc:
        # The broker (or the event log) is away or did not confirm: try again later, with the same id.
        message.last_error = f"{type(exc).__name__}: {exc}"
        message.next_attempt_at = timezone.now() + backoff(message.attempts)
        message.save(update_fields=["attempts", "last_error", "next_attempt_at"])
        logger.warning("outbox: %s not published (attempt %d): %s", workflow_id, message.attempts, exc)
        return Attempt(workflow_id, "failed", message.last_error)
    except relaybus.AgentError as exc:
        # InvalidInput, an unknown pipeline, an agent without a queue: publishing again cannot help.
        message.last_error = f"{type(exc).__name__}: {exc}"
        message.refused_at = timezone.now()
        message.save(update_fields=["attempts", "last_error", "refused_at"])
        logger.error("outbox: %s refused by relaybus: %s", workflow_id, exc)
        return Attempt(workflow_id, "refused", message.last_error)
    message.published_at = timezone.now()
    message.last_error = ""
    message.save(update_fields=["attempts", "last_error", "published_at"])
    return Attempt(workflow_id, "published")


def publish_after_commit(workflow_id: object) -> None:
    """The ``on_commit`` callback: one attempt, and never an exception into the request (a failed attempt
    is on the message, and the outbox command retries it)."""
    try:
        publish(workflow_id)
    except Exception:  # the database itself: the message is committed and still unpublished
        logger.exception("outbox: first attempt for %s failed; the outbox command will retry it", workflow_id)


@dataclass
class Pass:
    """What one pass of :func:`publish_due` did."""

    published: list[str] = field(default_factory=list)
    failed: list[Attempt] = field(default_factory=list)
    refused: list[Attempt] = field(default_factory=list)
    unpublished: int = 0  # messages still waiting after the pass (published by a later one)


def publish_due(now: datetime | None = None, limit: int = 100) -> Pass:
    """Publish the unpublished messages whose next attempt is due, oldest first."""
    now = now or timezone.now()
    pending = OutboxMessage.objects.filter(published_at=None, refused_at=None)
    due = list(pending.filter(next_attempt_at__lte=now).order_by("created_at").values_list("pk", flat=True)[:limit])
    result = Pass()
    for workflow_id in due:
        attempt = publish(workflow_id)
        if attempt is None:
            continue
        if attempt.outcome == "published":
            result.published.append(attempt.workflow_id)
        elif attempt.outcome == "refused":
            result.refused.append(attempt)
        else:
            result.failed.append(attempt)
            # The broker is away: the others would fail the same way; they wait for the next pass.
            break
    result.unpublished = pending.count()
    return result
