import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("workflows", "0001_initial")]

    operations = [
        migrations.CreateModel(
            name="OutboxMessage",
            fields=[
                (
                    "workflow",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="outbox",
                        serialize=False,
                        to="workflows.workflowrequest",
                    ),
                ),
                ("pipeline", models.CharField(max_length=200)),
                ("input", models.JSONField()),
                ("priority", models.CharField(default="normal", max_length=10)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("attempts", models.PositiveIntegerField(default=0)),
                ("next_attempt_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("last_error", models.TextField(blank=True, default="")),
                ("published_at", models.DateTimeField(blank=True, null=True)),
                ("refused_at", models.DateTimeField(blank=True, null=True)),
            ],
            options={
                "indexes": [models.Index(fields=["published_at", "refused_at", "next_attempt_at"], name="outbox_due")]
            },
        ),
    ]
