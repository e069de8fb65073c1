"""relaybus composition root: settings, the Celery app, queue topology, wiring and the CLI.

``celery -A relaybus worker`` finds :data:`app` here.
"""

if __name__ != "relaybus":  # imported by its folder name from the repository root
    raise ImportError(
        f"the project/ folder is installed as relaybus: import relaybus, not {__name__}"
        " (a second copy of its modules would bring a second registry and app)"
    )

from relaybus.celery import app, create_app
from relaybus.settings import Settings, get_settings

__all__ = ["Settings", "app", "create_app", "get_settings"]
