"""Publishing with a bounded wait: RabbitMQ's py-amqp transport, with publisher confirms that time out.

With ``confirm_publish`` py-amqp waits for each publish's confirm, and without a ``confirm_timeout`` (kombu
and Celery give none) it waits for ever: a broker that blocks publishers (a memory or disk alarm makes it
stop reading their sockets) or a stopped node held ``apply_async`` and ``relaybus.start`` for good (issue 13,
fault 4). This transport bounds every confirm by ``publish_timeout`` (``RELAYBUS_PUBLISH_TIMEOUT_S``), and
inside :func:`publish_deadline` the whole publish, its reconnections included. Past it a publish raises
:class:`~tasks.errors.PublishTimeout`, saying whether the broker had blocked the connection (and why) or did
not answer at all, or :class:`~tasks.errors.BrokerUnreachable` when no connection could be made.

A timed-out publish drops its connection: the confirm may still arrive later and would be taken for the
next publish's, and a blocked broker reads nothing more from that socket anyway. The next publish
connects afresh.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from amqp import spec
from amqp.exceptions import RecoverableConnectionError
from kombu.transport import pyamqp

from relaybus.tasks.errors import BrokerUnreachable, PublishTimeout

#: The wait for a confirm when nothing else is configured (``Settings.publish_timeout_s``).
DEFAULT_PUBLISH_TIMEOUT_S = 10.0
#: What py-amqp says when RabbitMQ's ``connection.blocked`` carries no reason.
UNKNOWN_BLOCK_REASON = "connection blocked, see broker logs"


class _Deadline:
    """One publish's budget, its reconnections included, and what the broker told us meanwhile."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ends = time.monotonic() + seconds
        self.blocked: str | None = None
        self.last_error: BaseException | None = None

    def remaining(self) -> float:
        return self.ends - time.monotonic()

    def expired(self, address: str) -> PublishTimeout | BrokerUnreachable:
        """The error for a publish past its deadline, named after what went wrong meanwhile."""
        if self.blocked or isinstance(self.last_error, PublishTimeout):
            return PublishTimeout(self.seconds, blocked=self.blocked)
        return BrokerUnreachable(address, str(self.last_error or "no connection"), self.seconds)


_DEADLINE: ContextVar[_Deadline | None] = ContextVar("relaybus_publish_deadline", default=None)


@contextmanager
def publish_deadline(seconds: float) -> Iterator[None]:
    """Everything published inside waits ``seconds`` at most, in all (nested scopes share the outer one)."""
    if _DEADLINE.get() is not None:
        yield
        return
    token = _DEADLINE.set(_Deadline(seconds))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def _drop(connection: Any) -> None:
    """Close a connection without the closing handshake a stopped or blocked broker would never answer."""
    client = getattr(connection, "client", None)  # the kombu Connection, which then reconnects on next use
    try:
        if client is not None:
            client.collect()
        else:
            connection.collect()
    except Exception:
        pass


class Channel(pyamqp.Channel):
    def basic_publish(self, *args: Any, **kwargs: Any) -> Any:
        """An unconfirmed publish (the worker's monitoring events, tasks.runtime.monitoring): no confirm to
        wait for, but the socket write is bounded as a confirmed one's is (a blocked broker stops reading)."""
        connection = self.connection
        if connection is None:
            raise RecoverableConnectionError("connection already closed")
        limit = float(getattr(connection, "publish_timeout", DEFAULT_PUBLISH_TIMEOUT_S))
        kwargs["timeout"] = min(kwargs.get("timeout") or limit, limit)
        try:
            return self._basic_publish(*args, **kwargs)
        except TimeoutError as exc:
            blocked = connection.blocked_reason
            _drop(connection)
            raise PublishTimeout(limit, blocked=blocked) from exc

    def basic_publish_confirm(self, *args: Any, **kwargs: Any) -> Any:
        connection = self.connection
        if connection is None:  # the channel was closed under us (the broker restarted): a recoverable error,
            # which kombu retries on a new connection, as py-amqp's own publish would raise it
            raise RecoverableConnectionError("connection already closed")
        deadline = _DEADLINE.get()
        limit = float(getattr(connection, "publish_timeout", DEFAULT_PUBLISH_TIMEOUT_S))
        if deadline is not None:
            limit = min(limit, deadline.remaining())
            if limit <= 0:
                deadline.blocked = deadline.blocked or connection.blocked_reason
                raise deadline.expired(_address(connection))
        kwargs["confirm_timeout"] = min(kwargs.get("confirm_timeout") or limit, limit)
        kwargs["timeout"] = min(kwargs.get("timeout") or limit, limit)  # a full socket buffer blocks the write
        try:
            return super().basic_publish_confirm(*args, **kwargs)
        except TimeoutError as exc:  # socket.timeout: no confirm came
            blocked = connection.blocked_reason or (deadline.blocked if deadline is not None else None)
            _drop(connection)
            error = PublishTimeout(deadline.seconds if deadline is not None else limit, blocked=blocked)
            if deadline is not None:
                deadline.last_error = error  # a retry's reconnection past the deadline says the same
            raise error from exc


class Connection(pyamqp.Connection):
    Channel = Channel

    # RabbitMQ says why it blocks ("low on memory", "low on disk"); py-amqp reads no argument and drops it.
    _METHODS = {**pyamqp.Connection._METHODS, spec.Connection.Blocked: spec.method(spec.Connection.Blocked, "s")}

    def __init__(self, *args: Any, publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT_S, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.publish_timeout = float(publish_timeout)
        #: Set while the broker blocks this connection's publishes (``connection.blocked``).
        self.blocked_reason: str | None = None

    def _on_blocked(self, reason: str = "") -> Any:
        self.blocked_reason = reason or UNKNOWN_BLOCK_REASON
        deadline = _DEADLINE.get()
        if deadline is not None:
            deadline.blocked = self.blocked_reason
        return super()._on_blocked()

    def _on_unblocked(self) -> Any:
        self.blocked_reason = None
        return super()._on_unblocked()


class Transport(pyamqp.Transport):
    """kombu's ``pyamqp`` transport with :class:`Connection`; inside a deadline, connecting waits no longer."""

    Connection = Connection

    def establish_connection(self) -> Any:
        deadline = _DEADLINE.get()
        if deadline is None:
            return super().establish_connection()  # type: ignore[no-untyped-call]
        remaining = deadline.remaining()
        if remaining <= 0:
            raise deadline.expired(_address(self.client))
        client: Any = self.client
        saved = client.connect_timeout
        client.connect_timeout = min(saved, remaining) if saved else remaining
        try:
            return super().establish_connection()  # type: ignore[no-untyped-call]
        except Exception as exc:
            deadline.last_error = exc
            raise
        finally:
            client.connect_timeout = saved


class SSLTransport(Transport):
    """The same over TLS (``amqps://``), as kombu's ``pyamqp.SSLTransport``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        client: Any = self.client
        if not client.ssl:
            client.ssl = True


#: ``broker_transport`` for each URL scheme this module serves.
TRANSPORTS = {
    "amqp": f"{__name__}:Transport",
    "pyamqp": f"{__name__}:Transport",
    "amqps": f"{__name__}:SSLTransport",
}


def transport_for(broker_url: str) -> str | None:
    """The ``broker_transport`` for ``broker_url``: ours for RabbitMQ, Celery's choice (None) otherwise."""
    scheme = broker_url.split("://", 1)[0].lower() if "://" in broker_url else ""
    return TRANSPORTS.get(scheme)


def _address(client: Any) -> str:
    try:
        return str(client.host)
    except Exception:
        return "the broker"
