"""What the commands talk to: the Celery app and the event store, opened on first use so that
``relaybus --help`` loads neither Celery nor SQLAlchemy."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from relaybus.cli.output import EXIT_UNREACHABLE, EXIT_USAGE, fail
from relaybus.settings import get_settings

if TYPE_CHECKING:
    from celery import Celery

    from relaybus.eventstore import EventStore


def celery_app() -> Celery:
    from relaybus.celery import app

    return app


def service_errors() -> tuple[type[BaseException], ...]:
    """The errors meaning that the broker, the result backend or the event store did not answer."""
    from kombu.exceptions import OperationalError

    from relaybus.eventstore import StoreUnavailable

    return (OSError, OperationalError, StoreUnavailable)


@contextmanager
def event_store() -> Iterator[EventStore]:
    """The event store at ``RELAYBUS_EVENTSTORE_URL``, closed afterwards; exits 3 if it cannot be opened."""
    from relaybus.eventstore import ChainKeyError, StoreConfig, StoreUnavailable, open_store

    settings = get_settings()
    try:
        store = open_store(
            settings.eventstore_url,
            config=StoreConfig(redact_keys=frozenset(settings.redact_keys),
                               max_payload_bytes=settings.max_event_payload_bytes,
                               chain_key_file=settings.chain_key_file),
        )
    except StoreUnavailable as exc:
        fail(f"cannot open the event store: {exc}", EXIT_UNREACHABLE, stderr=True)
    except ChainKeyError as exc:
        fail(f"RELAYBUS_CHAIN_KEY_FILE: {exc}", EXIT_USAGE, stderr=True)
    try:
        yield store
    finally:
        store.close()
