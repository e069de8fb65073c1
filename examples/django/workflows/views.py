"""Start a workflow after the request's row is committed; show its status from relaybus's event log."""

from __future__ import annotations

import functools
import uuid
from uuid import UUID

from django import forms
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from relaybus.settings import PRIORITY_LEVELS
from workflows.models import WorkflowRequest
from workflows.pipelines import start_workflow, workflow_status


class StartForm(forms.Form):
    request = forms.CharField(min_length=3, max_length=4000)
    priority = forms.ChoiceField(choices=[(p, p) for p in PRIORITY_LEVELS], initial="normal", required=False)


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    recent = WorkflowRequest.objects.all()[:20]
    return render(request, "workflows/index.html", {"form": StartForm(), "recent": recent})


@require_POST
def start(request: HttpRequest) -> JsonResponse:
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
        # Publish only after the commit: a request that is rolled back never starts a workflow, and no
        # worker can run (or a status page show) a workflow whose row is not there yet. Inside an outer
        # transaction (ATOMIC_REQUESTS, a caller's atomic block) this waits for that one to commit.
        transaction.on_commit(functools.partial(start_workflow, row.request, str(correlation_id), row.priority))
    status_url = reverse("workflows:status", args=[correlation_id])
    return JsonResponse({"id": str(correlation_id), "status_url": status_url}, status=202)


@require_GET
def status(request: HttpRequest, correlation_id: UUID) -> JsonResponse:
    row = get_object_or_404(WorkflowRequest, pk=correlation_id)
    return JsonResponse(
        {
            "id": str(row.correlation_id),
            "request": row.request,
            "priority": row.priority,
            "created_at": row.created_at.isoformat(),
            **workflow_status(str(row.correlation_id)),
        }
    )
