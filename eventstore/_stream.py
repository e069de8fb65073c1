"""Reading a large result in one snapshot without holding it in memory: a server-side cursor.

Rebuilds and verification read the whole log. Pages of ``position > n`` in short transactions
cost a query (and on PostgreSQL a plan) per page and a Python row object per row; a server-side
cursor (PostgreSQL: a named cursor, fetched ``batch_size`` rows at a time; SQLite: the statement
stepped as rows are fetched) reads the log once, in one consistent snapshot, as plain tuples.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection

from relaybus.eventstore._gcpause import gc_paused
from relaybus.eventstore._insert import driver_errors

_names = itertools.count()


def stream_rows(
    conn: Connection, sql: str, params: tuple[Any, ...] = (), *, batch_size: int = 5000, prefetch: bool = False
) -> Iterator[Any]:
    """The rows of ``sql`` (driver-level, ``%s`` placeholders on PostgreSQL, ``?`` on SQLite), as the
    driver's tuples, ``batch_size`` at a time, in ``conn``'s transaction.

    ``prefetch`` (PostgreSQL): the next batch is fetched by a thread while the caller works through
    this one, so the server's time producing rows overlaps the caller's (verify's hashing); the
    connection is used by that thread alone until the rows are read or the iterator is closed."""
    driver = conn.connection.driver_connection
    assert driver is not None
    if conn.dialect.name == "postgresql":
        cursor = driver.cursor(name=f"eventstore_stream_{next(_names)}")
        cursor.itersize = batch_size
    else:
        cursor = driver.cursor()
    try:
        with driver_errors(conn, sql):  # as SQLAlchemy would raise them, for translate()
            cursor.execute(sql, params)
        if prefetch and conn.dialect.name == "postgresql":
            yield from _prefetched(conn, cursor, sql, batch_size)
            return
        while True:
            with gc_paused(), driver_errors(conn, sql):  # else every 700 fetched tuples start a collection
                rows = cursor.fetchmany(batch_size)
            if not rows:
                return
            yield from rows
    finally:
        cursor.close()


def _prefetched(conn: Connection, cursor: Any, sql: str, batch_size: int) -> Iterator[Any]:
    batches: queue.Queue[list[Any] | BaseException] = queue.Queue(maxsize=2)
    stop = threading.Event()

    def fetch() -> None:
        try:
            while not stop.is_set():
                with gc_paused(), driver_errors(conn, sql):
                    rows = cursor.fetchmany(batch_size)
                batches.put(rows)
                if not rows:
                    return
        except BaseException as error:  # handed to the reader, raised there
            batches.put(error)

    fetcher = threading.Thread(target=fetch, name="eventstore-prefetch", daemon=True)
    fetcher.start()
    try:
        while True:
            rows = batches.get()
            if isinstance(rows, BaseException):
                raise rows
            if not rows:
                return
            yield from rows
    finally:
        stop.set()
        while fetcher.is_alive():  # unblock a put on a full queue, then let the fetch in flight end
            try:
                batches.get_nowait()
            except queue.Empty:
                fetcher.join(0.01)
