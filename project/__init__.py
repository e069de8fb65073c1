"""relaybus composition root: settings, the Celery app, queue topology, wiring and the CLI.

``celery -A project worker`` finds :data:`app` here.
"""

from project.celery import app, create_app
from project.settings import Settings, get_settings

__all__ = ["Settings", "app", "create_app", "get_settings"]
