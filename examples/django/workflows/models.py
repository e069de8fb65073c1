from django.db import models
from django.utils import timezone


class WorkflowRequest(models.Model):
    """A workflow someone asked for. Its id is the workflow's correlation id in relaybus's event log."""

    correlation_id = models.UUIDField(primary_key=True, editable=False)
    request = models.TextField()
    priority = models.CharField(max_length=10, default="normal")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.correlation_id}: {self.request[:60]}"


class OutboxMessage(models.Model):
    """A pipeline start that must reach the broker, written in the same transaction as its request.

    One per request, keyed by the request (so by the pipeline id): publishing it again after an ambiguous
    publish sends the same pipeline id, which relaybus runs once. ``published_at`` is set once the broker
    confirmed the publish; ``refused_at`` when relaybus refused the start for good (it is never retried).
    Until one of them is set, ``python manage.py relaybus_outbox`` retries it from ``next_attempt_at`` on.
    """

    workflow = models.OneToOneField(WorkflowRequest, primary_key=True, on_delete=models.CASCADE, related_name="outbox")
    pipeline = models.CharField(max_length=200)
    input = models.JSONField()
    priority = models.CharField(max_length=10, default="normal")
    created_at = models.DateTimeField(auto_now_add=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.TextField(blank=True, default="")
    published_at = models.DateTimeField(null=True, blank=True)
    refused_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["published_at", "refused_at", "next_attempt_at"], name="outbox_due")]

    def __str__(self) -> str:
        state = "published" if self.published_at else "refused" if self.refused_at else "unpublished"
        return f"{self.pk} ({self.pipeline}): {state}, {self.attempts} attempt(s)"
