"""Done-markers for steps whose effect is to launch or publish more work.

Celery delivers at least once: a redelivered or retried step would launch its chord, or run its
handler, a second time. A step that finished leaves a marker in the result backend (a cache with
the results' expiry, not the record); the next copy of the same task id finds it and does nothing.
The marker is written after the effect, so a crash in between repeats the effect rather than
losing it; what is repeated carries the same ids (derived task and event ids) and is de-duplicated
downstream.
"""

from __future__ import annotations

from celery import Celery
from celery.backends.base import BaseKeyValueStoreBackend

_PREFIX = "relaybus-done-"


def already_done(app: Celery, key: str) -> bool:
    backend = app.backend
    return isinstance(backend, BaseKeyValueStoreBackend) and bool(backend.get(_PREFIX + key))


def mark_done(app: Celery, key: str) -> None:
    backend = app.backend
    if isinstance(backend, BaseKeyValueStoreBackend):
        backend.set(_PREFIX + key, "1")
