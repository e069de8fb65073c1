"""The host writer: one process per prefork worker that commits the records of all its pool processes together.

A prefork pool process runs one task at a time, so a writer thread inside it has nothing to group. The
worker's main process therefore starts this writer (``worker_init``) before it forks the pool, and each pool
process hands its records to it over a Unix socket and waits for the answer: the writer's
:func:`~.group.write_until_done` appends what all processes sent meanwhile in one transaction, and answers
each one only once that transaction committed. A task's terminal record is therefore still durable before its
pool process returns, and so before the worker acknowledges the message.

Failure, and why nothing is lost:

* the writer dies (SIGKILL, OOM) before answering: the pool process cannot know whether the batch
  committed, so it writes the same records itself; event ids make that idempotent (``append_new`` skips
  what is stored). From then on it writes directly, as it did without a writer;
* the whole worker dies: no message it was running was acknowledged; the broker redelivers them and the
  records are written again, idempotently;
* the store's own errors travel back by name and are raised in the pool process as the same
  :mod:`relaybus.eventstore` errors, so the task base handles them as before (requeue while the store is
  away, ``record-failed`` for a record the database refuses).

The writer exits when its parent (the worker's main process) is gone. Its configuration (the event-store URL
may hold a password) is passed on its standard input, never on its command line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

from relaybus.eventstore import NewEvent, open_store
from relaybus.eventstore import errors as store_errors
from relaybus.tasks.runtime.claimcheck import store_config
from relaybus.tasks.runtime.config import RuntimeConfig
from relaybus.tasks.runtime.recording.group import AppendsNew, Request, write_until_done

logger = logging.getLogger(__name__)

#: Where pool processes find the writer (inherited through the fork from the worker's main process).
ADDRESS_ENV = "RELAYBUS_RECORDER_SOCKET"
_HEADER = struct.Struct("!I")
#: What the writer is told of the runtime configuration (not the LLM provider's settings and keys).
WRITER_CONFIG = {
    "eventstore_url", "record_events", "redact_keys", "redact_patterns", "max_event_payload_bytes", "chain_key_file",
}
#: How long a pool process waits for an answer beyond its own store deadline (the writer answers
#: ``StoreUnavailable`` at that deadline; the margin covers a transaction still committing) before it writes
#: the records itself. Small: the deadline is set below the task's soft time limit.
ANSWER_MARGIN_S = 2.0


class WriterGone(Exception):
    """The host writer did not answer (dead, or never started): write directly."""


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    data = json.dumps(message, default=_iso).encode()
    sock.sendall(_HEADER.pack(len(data)) + data)


def _recv(sock: socket.socket) -> dict[str, Any] | None:
    header = _recv_exactly(sock, _HEADER.size)
    if header is None:
        return None
    body = _recv_exactly(sock, _HEADER.unpack(header)[0])
    if body is None:
        return None
    message: dict[str, Any] = json.loads(body)
    return message


def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _iso(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"not JSON: {type(value).__name__}")


# -- the pool process's side --------------------------------------------------------------------------------


class HostWriterClient:
    """A pool process's connection to the host writer (one socket per thread and process)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._local = threading.local()

    def append(self, events: list[NewEvent], wait_s: float) -> None:
        """Have the writer append ``events``, waiting up to ``wait_s`` for an unavailable store; raises the
        store's error, or :class:`WriterGone` when the writer did not answer."""
        sock = self._socket()
        try:
            sock.settimeout(wait_s + ANSWER_MARGIN_S)
            _send(sock, {"wait_s": wait_s, "events": [e.model_dump() for e in events]})
            answer = _recv(sock)
        except OSError as error:
            self._close()
            raise WriterGone(str(error)) from error
        except BaseException:
            # Interrupted mid-exchange (a soft time limit): its answer may still come and would be read as
            # the next request's, so this connection is done.
            self._close()
            raise
        if answer is None:
            self._close()
            raise WriterGone("the writer closed the connection")
        if "error" in answer:
            error_class = getattr(store_errors, str(answer["error"]), None)
            if not (isinstance(error_class, type) and issubclass(error_class, store_errors.EventStoreError)):
                error_class = store_errors.EventStoreError
            raise error_class(str(answer.get("message", "")))

    def _socket(self) -> socket.socket:
        pid = os.getpid()
        if getattr(self._local, "pid", None) != pid:  # new thread, or a fork's inherited socket
            self._local.sock, self._local.pid = None, pid
        if self._local.sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect("\0" + self.address)
            except OSError as error:
                sock.close()
                raise WriterGone(str(error)) from error
            self._local.sock = sock
        sock_: socket.socket = self._local.sock
        return sock_

    def _close(self) -> None:
        sock = getattr(self._local, "sock", None)
        self._local.sock = None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


#: Set in a worker whose pool runs tasks on threads of its own process (threads, gevent, eventlet): its
#: recorder groups their records with a :class:`~.group.GroupCommitter` instead.
_GROUP_IN_PROCESS = False


def groups_in_process() -> bool:
    return _GROUP_IN_PROCESS


def client_from_env() -> HostWriterClient | None:
    """The host writer of this worker, if its main process started one."""
    address = os.environ.get(ADDRESS_ENV)
    return HostWriterClient(address) if address else None


# -- the worker main process's side -------------------------------------------------------------------------


class HostWriter:
    """The writer process, as started by the worker's main process."""

    def __init__(self, config: RuntimeConfig) -> None:
        # A name in Linux's abstract namespace: no file to clean up, nothing left behind by a SIGKILL.
        self.address = f"relaybus-recorder-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relaybus.tasks.runtime.recording.writer_process", self.address],
            stdin=subprocess.PIPE,
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(config.model_dump_json(include=WRITER_CONFIG).encode())
        self.proc.stdin.close()
        self._wait_listening(10.0)

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the host writer exited with {self.proc.returncode}")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect("\0" + self.address)
                return
            except OSError:
                time.sleep(0.02)
            finally:
                probe.close()
        raise RuntimeError(f"the host writer did not listen within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_for_worker(config: RuntimeConfig, pool: str) -> HostWriter | None:
    """Start the host writer for a worker about to fork its pool, and tell the pool processes where it is.
    Nothing when recording or group commit is off; a pool of threads (threads, gevent, eventlet) groups in
    its own process instead (:func:`groups_in_process`), and ``solo`` runs one task at a time."""
    global _GROUP_IN_PROCESS
    if not (config.record_events and config.group_commit):
        return None
    if pool in ("threads", "thread", "gevent", "eventlet"):
        _GROUP_IN_PROCESS = True
        return None
    if pool != "prefork":
        return None
    try:
        writer = HostWriter(config)
    except Exception:
        logger.exception("the host writer did not start; pool processes write their records directly")
        return None
    os.environ[ADDRESS_ENV] = writer.address
    return writer


# -- the writer process ---------------------------------------------------------------------------------------


def _answer(request: Request) -> dict[str, Any]:
    error = request.error
    if error is None:
        return {"ok": len(request.events)}
    if isinstance(error, store_errors.EventStoreError):
        return {"error": type(error).__name__, "message": str(error)}
    return {"error": "EventStoreError", "message": f"{type(error).__name__}: {error}"}


def _request(message: dict[str, Any]) -> Request:
    try:
        events = [NewEvent.model_validate(e) for e in message["events"]]
    except Exception as error:  # a record that is no event: refused, as the store would refuse it
        request = Request([], 0.0)
        request.error = error
        return request
    return Request(events, time.monotonic() + float(message["wait_s"]))


_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _same_user(conn: socket.socket) -> bool:
    """Whether the peer runs as this process's user: nobody else may write to the audit log through us."""
    try:
        _pid, uid, _gid = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    except OSError:
        return False
    if uid != os.getuid():
        logger.warning("refused a connection from uid %d to the host writer", uid)
        return False
    return True


def serve(server: socket.socket, store: AppendsNew, parent: int) -> None:
    """The writer's loop, on one thread (no lock handoffs between threads to wait for): take the requests of
    every pool process that sent one, write them in one transaction, answer each."""
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ)
    while os.getppid() == parent:  # the worker's main process is gone: so is every pool process
        ready = selector.select(timeout=1.0)
        pending: list[tuple[socket.socket, Request]] = []
        while ready:
            for key, _ in ready:
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is server:
                    conn, _ = server.accept()
                    if not _same_user(conn):  # an abstract socket has no file permissions: check who it is
                        conn.close()
                        continue
                    conn.settimeout(5.0)  # a pool process that died mid-message cannot hold the loop
                    selector.register(conn, selectors.EVENT_READ)
                    continue
                try:
                    message = _recv(sock)  # sent whole by one sendall: once readable, it is all coming
                except OSError:
                    message = None
                if message is None:
                    selector.unregister(sock)
                    sock.close()
                    continue
                pending.append((sock, _request(message)))
            ready = selector.select(timeout=0)  # whoever else is ready now joins this transaction
        requests = [r for _, r in pending if not r.done.is_set() and r.error is None]
        if requests:
            write_until_done(store, requests)
        for sock, request in pending:
            try:
                _send(sock, _answer(request))
            except OSError:
                with contextlib.suppress(KeyError, ValueError):
                    selector.unregister(sock)
                sock.close()


def main(address: str) -> None:
    config = RuntimeConfig.model_validate_json(sys.stdin.read())
    parent = os.getppid()
    store = open_store(
        config.eventstore_url,
        config=store_config(config),
    )
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("\0" + address)
    server.listen(128)
    serve(server, store, parent)
