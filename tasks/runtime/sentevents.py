"""A client's ``task-sent`` events, on a connection without publisher confirms.

Celery publishes the ``task-sent`` event with the producer that has just published the task, on the same
channel, once the task's confirm has come. With relaybus's publisher confirms every send therefore waited
for two confirms, the task's and the event's: one more broker round trip on every start and every step a
task sends. The event is monitoring (Flower, ``celery events``), not a record: the event log holds
``task.sent``, written once the task's own confirm came. So it goes on a connection of its own without
confirms, as the worker's task events do (tasks.runtime.consumer); its socket write is still bounded
(relaybus.broker). An event that cannot be published is logged and dropped: the task has gone out, and
its sender must not see the send fail.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

from celery import Celery
from celery.utils.log import get_logger

logger = get_logger(__name__)

#: The transport options of the event connection, on top of the app's.
UNCONFIRMED = {"confirm_publish": False}


class UnconfirmedEvents:
    """A stand-in producer for Celery's event dispatcher, which calls only :meth:`publish`: one connection per
    process (a fork makes its own), shared by the process's threads under a lock."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._connection: Any = None
        self._producer: Any = None

    def publish(self, body: Any, **kwargs: Any) -> None:
        kwargs.pop("retry", None)
        kwargs.pop("retry_policy", None)
        with self._lock:
            for attempt in (1, 2):  # a connection left idle may have been closed: one fresh try
                try:
                    self._producer_here().publish(body, retry=False, **kwargs)
                    return
                except Exception as error:
                    self._close()
                    if attempt == 2:
                        logger.warning("a task-sent event was not published (monitoring only): %r", error)

    def _producer_here(self) -> Any:
        if self._pid != os.getpid() or self._producer is None:
            self._connection = self.app.connection_for_write(transport_options=UNCONFIRMED)
            self._producer = self._connection.Producer()
            self._pid = os.getpid()
        return self._producer

    def _close(self) -> None:
        connection, self._connection, self._producer = self._connection, None, None
        if connection is not None and self._pid == os.getpid():
            with contextlib.suppress(Exception):
                connection.collect()  # no closing handshake: the broker may be the reason we are here
