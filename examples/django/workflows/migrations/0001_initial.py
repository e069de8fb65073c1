from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="WorkflowRequest",
            fields=[
                ("correlation_id", models.UUIDField(editable=False, primary_key=True, serialize=False)),
                ("request", models.TextField()),
                ("priority", models.CharField(default="normal", max_length=10)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
            options={"ordering": ["-created_at"]},
        ),
    ]
