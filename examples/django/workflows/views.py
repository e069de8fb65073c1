"""Start a workflow through the outbox; show its status and steps from relaybus's event log."""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

from django import forms
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from relaybus.eventstore import StoreUnavailable
from relaybus.settings import PRIORITY_LEVELS
from workflows import outbox
from workflows.models import OutboxMessage, WorkflowRequest
from workflows.pipelines import FINISHED, workflow_status


class StartForm(forms.Form):
    request = forms.CharField(min_length=3, max_length=4000)
    priority = forms.ChoiceField(choices=[(p, p) for p in PRIORITY_LEVELS], initial="normal", required=False)


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    recent = WorkflowRequest.objects.all()[:20]
    return render(request, "workflows/index.html", {"form": StartForm(), "recent": recent})


@require_POST
def start(request: HttpRequest) -> HttpResponse:
    """Save the request and its outbox message in one transaction; publish after the commit.

    Answers ``202`` with the workflow's id, its status page and whether the broker took it already
    (``started``) or not yet (``queued``: the outbox publishes it when the broker is back), or ``400``.
    A browser's form post (``Accept: text/html``) is redirected to the status page instead.
    """
    form = StartForm(request.POST)
    if not form.is_valid():
        return JsonResponse({"errors": form.errors}, status=400)
    correlation_id = uuid.uuid4()
    with transaction.atomic():
        row = WorkflowRequest.objects.create(
            correlation_id=correlation_id,
            request=form.cleaned_data["request"],
            priority=form.cleaned_data["priority"] or "normal",
        )
        # The request and the start of its pipeline commit together, or neither does. The publish waits for
        # the commit: a request that is rolled back never starts a workflow, and no worker can run (or a status
        # page show) a workflow whose row is not there yet. Inside an outer transaction (ATOMIC_REQUESTS, a
        # caller's atomic block) it waits for that one to commit.
        outbox.enqueue(row)
        transaction.on_commit(lambda: outbox.publish_after_commit(correlation_id))
    body: dict[str, Any] = {
        "id": str(correlation_id),
        "status_url": reverse("workflows:status", args=[correlation_id]),
        "status_json_url": reverse("workflows:status_json", args=[correlation_id]),
    }
    if "text/html" in request.headers.get("Accept", ""):
        see_other = HttpResponseRedirect(body["status_url"])
        see_other.status_code = 303
        return see_other
    if connection.in_atomic_block:
        body.update(status="queued", message="queued: it is published when the transaction commits")
        return JsonResponse(body, status=202)
    message = OutboxMessage.objects.get(pk=correlation_id)
    if message.published_at is not None:
        body.update(status="started", message="started")
    elif message.refused_at is not None:  # relaybus refused the start for good: say so at once
        body.update(status="failed", message="not started", reason=message.last_error)
        return JsonResponse(body, status=422)
    else:
        body.update(
            status="queued",
            message="queued: the broker did not take it; it is published when the broker is back",
            error=message.last_error,
        )
    return JsonResponse(body, status=202)


def request_status(row: WorkflowRequest) -> dict[str, Any]:
    """The request's status: ``queued`` while its start waits in the outbox, ``failed`` if relaybus refused
    it, then the pipeline's own from the event log (``pending``, ``running``, ``completed``, ``failed``,
    ``timed_out``…, as ``relaybus timeline`` shows them)."""
    message = OutboxMessage.objects.filter(pk=row.pk).first()
    base: dict[str, Any] = {
        "id": str(row.correlation_id),
        "request": row.request,
        "priority": row.priority,
        "created_at": row.created_at.isoformat(),
        "outbox": None,
    }
    if message is not None:
        base["outbox"] = {
            "attempts": message.attempts,
            "published_at": message.published_at.isoformat() if message.published_at else None,
            "next_attempt_at": None if message.published_at else message.next_attempt_at.isoformat(),
            "last_error": message.last_error or None,
        }
        if message.refused_at is not None:
            return {
                **base,
                "status": "failed",
                "reason": f"not started: {message.last_error}",
                "output": None,
                "steps": [],
                "events": [],
            }
        if message.published_at is None:
            return {**base, "status": "queued", "reason": None, "output": None, "steps": [], "events": []}
    try:
        return {**base, **workflow_status(str(row.correlation_id))}
    except StoreUnavailable as exc:
        return {
            **base,
            "status": "unknown",
            "reason": f"the event log cannot be read: {exc}",
            "output": None,
            "steps": [],
            "events": [],
        }


@require_GET
def status(request: HttpRequest, correlation_id: UUID) -> HttpResponse:
    row = get_object_or_404(WorkflowRequest, pk=correlation_id)
    state = request_status(row)
    return render(
        request,
        "workflows/status.html",
        {
            "row": row,
            "state": state,
            "finished": state["status"] in FINISHED,
            "status_label": state["status"].replace("_", " "),
        },
        status=503 if state["status"] == "unknown" else 200,
    )


@require_GET
def status_json(request: HttpRequest, correlation_id: UUID) -> JsonResponse:
    row = get_object_or_404(WorkflowRequest, pk=correlation_id)
    state = request_status(row)
    return JsonResponse(state, status=503 if state["status"] == "unknown" else 200)
