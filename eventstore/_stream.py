"""Reading a large result in one snapshot without holding it in memory: a server-side cursor.

Rebuilds and verification read the whole log. Pages of ``position > n`` in short transactions
cost a query (and on PostgreSQL a plan) per page and a Python row object per row; a server-side
cursor (PostgreSQL: a named cursor, fetched ``batch_size`` rows at a time; SQLite: the statement
stepped as rows are fetched) reads the log once, in one consistent snapshot, as plain tuples.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection

from relaybus.eventstore._insert import driver_errors

_names = itertools.count()


def stream_rows(conn: Connection, sql: str, params: tuple[Any, ...] = (), *, batch_size: int = 5000) -> Iterator[Any]:
    """The rows of ``sql`` (driver-level, ``%s`` placeholders on PostgreSQL, ``?`` on SQLite), as the
    driver's tuples, ``batch_size`` at a time, in ``conn``'s transaction."""
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
        while True:
            with driver_errors(conn, sql):
                rows = cursor.fetchmany(batch_size)
            if not rows:
                return
            yield from rows
    finally:
        cursor.close()
