from django.db import models


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
