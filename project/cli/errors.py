"""Every error a command lets through becomes one line on stderr and an exit code, never a traceback.

:func:`explain` names the service that did not answer and its URL with the password masked (exit 3), says
what to do when the event log has no schema (exit 3), and reports anything else as one line (exit 1).
``RELAYBUS_DEBUG=1`` prints the traceback as well, for a bug report.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NoReturn

from relaybus.cli.output import EXIT_PROBLEM, EXIT_UNREACHABLE, fail
from relaybus.settings import get_settings

_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^@\s/]*@")


def masked(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` URL in it replaced by ``***``."""
    return _PASSWORD_IN_URL.sub(r"\g<head>***@", text)


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the errors it was raised from or while handling, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _modules(error: BaseException) -> set[str]:
    """The top-level packages whose code the error passed through (its traceback's frames)."""
    found: set[str] = set()
    tb = error.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_globals.get("__name__", "")
        found.add(name.split(".", 1)[0])
        tb = tb.tb_next
    return found


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _service(error: BaseException) -> str | None:
    """Which service ``error`` means could not be reached: "broker", "result backend", "event store"."""
    from kombu.exceptions import OperationalError as KombuOperationalError

    from relaybus.eventstore import StoreUnavailable

    for link in _chain(error):
        if isinstance(link, StoreUnavailable):
            return "event store"
        module = type(link).__module__.split(".", 1)[0]
        if module == "redis" and type(link).__name__ in {"ConnectionError", "TimeoutError", "BusyLoadingError"}:
            return "result backend"
        if isinstance(link, KombuOperationalError) or (module == "amqp" and "Connection" in type(link).__name__):
            return "broker"
        if isinstance(link, OSError):
            frames = _modules(link)
            if frames & {"amqp", "kombu"}:
                return "broker"
            if "redis" in frames:
                return "result backend"
            if frames & {"sqlalchemy", "psycopg", "sqlite3"}:
                return "event store"
    return None


def _url(service: str) -> str:
    settings = get_settings()
    url = {"broker": settings.broker_url, "result backend": settings.result_backend,
           "event store": settings.eventstore_url}[service]
    return masked(url)


def explain(error: BaseException) -> tuple[int, str]:
    """The exit code and the one-line message for an error a command did not handle itself."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    from relaybus.eventstore import SchemaError

    for link in _chain(error):
        if isinstance(link, SchemaError):
            return EXIT_UNREACHABLE, masked(
                f"the event store at {_url('event store')} is not set up: {_first_line(link)}"
            )
        if isinstance(link, CeleryTimeout):
            return EXIT_PROBLEM, masked(f"timed out waiting for the result: {_first_line(link)}")
    service = _service(error)
    if service is not None:
        return EXIT_UNREACHABLE, masked(f"cannot reach the {service} at {_url(service)}: {_first_line(error)}")
    return EXIT_PROBLEM, masked(
        f"error: {type(error).__name__}: {_first_line(error)} (RELAYBUS_DEBUG=1 prints the traceback)"
    )


def unreachable(error: BaseException) -> NoReturn:
    """Leave as :func:`explain` says, for a command that caught a service's error itself."""
    code, message = explain(error)
    fail(message, code, stderr=True)
