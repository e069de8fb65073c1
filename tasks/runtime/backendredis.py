"""The Redis client of an app's result backend, for what relaybus keeps beside Celery's results."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.backends.redis import RedisBackend


def redis_client(app: Celery) -> Any | None:
    """The Redis client of ``app``'s result backend; ``None`` when the backend is not Redis (the embedded mode)."""
    backend = app.backend
    return backend.client if isinstance(backend, RedisBackend) else None
