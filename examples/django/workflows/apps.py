from django.apps import AppConfig


class WorkflowsConfig(AppConfig):
    name = "workflows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Connects the setting_changed receiver that rebuilds the Celery app when RELAYBUS changes.
        from workflows import pipelines  # noqa: F401
