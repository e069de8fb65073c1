"""What the commands talk to: the Celery app and the event store, opened on first use so that
``relaybus --help`` loads neither Celery nor SQLAlchemy."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from relaybus.cli.errors import unreachable
from relaybus.cli.output import EXIT_UNREACHABLE, EXIT_USAGE, fail
from relaybus.settings import get_settings

if TYPE_CHECKING:
    from celery import Celery

    from relaybus.eventstore import EventStore


#: A command gives up on an unreachable result backend after a few seconds (a worker waits minutes).
CLI_BACKEND_RETRY_POLICY = {"max_retries": 3, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}


def celery_app() -> Celery:
    from relaybus.celery import app

    if not app.conf.get("relaybus_cli"):
        from relaybus.tracing import setup as setup_tracing

        setup_tracing()  # RELAYBUS_OTEL: what a command sends starts its workflow's trace
        # Before the backend is first used (it reads these once): reconnecting to Redis (a send subscribes
        # to its result channel) and retrying a read stop after seconds, and the command says why (exit 3).
        app.conf.update(
            relaybus_cli=True,
            result_backend_transport_options={
                **(app.conf.result_backend_transport_options or {}), "retry_policy": CLI_BACKEND_RETRY_POLICY
            },
            result_backend_max_retries=3,
        )
    return app


def service_errors() -> tuple[type[BaseException], ...]:
    """The errors meaning that the broker, the result backend or the event store did not answer."""
    from kombu.exceptions import OperationalError

    from relaybus.eventstore import StoreUnavailable

    return (OSError, OperationalError, StoreUnavailable)


def _missing_sqlite_file(url: str) -> Path | None:
    """The absolute path of a SQLite event log that does not exist; ``None`` for any other URL."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return None  # open_store names a malformed URL
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database).resolve()
    return None if path.exists() else path


@contextmanager
def event_store() -> Iterator[EventStore]:
    """The event store at ``RELAYBUS_EVENTSTORE_URL``, closed afterwards; exits 3 if it cannot be opened or,
    on SQLite, if its file does not exist (``relaybus db upgrade`` creates it)."""
    from relaybus.eventstore import ChainKeyError, StoreConfig, StoreUnavailable, open_store

    settings = get_settings()
    missing = _missing_sqlite_file(settings.eventstore_url)
    if missing is not None:
        # Opening it would create an empty log here and answer from it as if nothing had happened.
        fail(f"no event log at {missing} (RELAYBUS_EVENTSTORE_URL={settings.eventstore_url}): run the command "
             "where the log is, set RELAYBUS_EVENTSTORE_URL, or create it with `relaybus db upgrade`",
             EXIT_UNREACHABLE, stderr=True)
    try:
        store = open_store(
            settings.eventstore_url,
            config=StoreConfig(redact_keys=frozenset(settings.redact_keys), redact_patterns=settings.redact_patterns,
                               max_payload_bytes=settings.max_event_payload_bytes,
                               chain_key_file=settings.chain_key_file,
                               payload_inline_max_bytes=settings.payload_inline_max_bytes or None,
                               postgres_prepare=settings.eventstore_prepare),
        )
    except StoreUnavailable as exc:
        unreachable(exc)
    except ChainKeyError as exc:
        fail(f"RELAYBUS_CHAIN_KEY_FILE: {exc}", EXIT_USAGE, stderr=True)
    try:
        yield store
    finally:
        store.close()
