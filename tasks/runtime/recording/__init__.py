"""Recording task transitions in the event log.

Where each transition is written:

* ``task.sent`` — in the publishing process (``before_task_publish``), client or worker;
* ``task.received`` and ``task.started`` — in the pool child when the task begins, held back and
  written in the same transaction as the task's next record (usually its terminal one), or by a
  background flush once the task has run for :data:`START_FLUSH_AFTER_S`: one commit per short
  task instead of two. A crash inside that window loses the dead attempt's start, never anything
  the broker thinks done: the redelivered attempt records its own start, marked ``redelivered``;
* ``task.retried``, ``task.succeeded``, ``task.failed`` (+ ``task.dead_lettered``) — in the child,
  before the task returns, so the terminal event is durable before the message is acknowledged;
* ``task.revoked``, ``task.rejected`` and unknown tasks — in the worker's main process.

Event ids are derived from the task id, the attempt and the transition, so a redelivered message
records nothing twice (the store ignores an event id it already holds).

The database may be away for a while (a restart, a failover): every append waits for it, retrying
with backoff for up to :data:`STORE_WAIT_S` seconds before ``StoreUnavailable`` is raised. Waiting
is what keeps the log whole: ``task.sent`` is written from a Celery signal, whose errors Celery logs
and swallows, and a terminal event written after the work must not be dropped. When even the wait
runs out, the task base gives the message back to the broker (tasks.runtime.task).
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from celery import Celery

from relaybus.tasks.runtime.config import RuntimeConfig, resources, runtime_config
from relaybus.tasks.runtime.context import CAUSATION_HEADER, CORRELATION_HEADER, REDRIVE_HEADER, current_task_id

logger = logging.getLogger(__name__)
_NAMESPACE = uuid.UUID("6f1c1d0e-5b7e-4a55-9d0b-2f1c0a7e4b11")


def event_id(*parts: object) -> str:
    """A deterministic event id: the same transition of the same delivery always gets the same id."""
    return str(uuid.uuid5(_NAMESPACE, ":".join(str(p) for p in parts)))


def _now() -> datetime:
    return datetime.now(UTC)


def _error_payload(error: BaseException) -> dict[str, Any]:
    return {"error_type": type(error).__name__, "error_message": str(error)[:2000]}


class NullRecorder:
    """Used when recording is switched off (``RELAYBUS_RECORD_EVENTS=false``)."""

    def append(self, events: list[Any], task_id: str | None = None) -> None:
        return None

    def task_started(self, task: Any, request: Any, args: Any, kwargs: Any) -> None:
        return None

    def task_retried(self, task: Any, request: Any, error: BaseException, countdown: float) -> None:
        return None

    def task_succeeded(self, task: Any, request: Any, result: Any, duration_s: float) -> None:
        return None

    def task_failed(
        self, task: Any, request: Any, error: BaseException, duration_s: float, *, dead_letter_reason: str
    ) -> None:
        return None

    def task_sent(self, headers: dict[str, Any], body: Any, routing_key: str | None, priority: int | None) -> None:
        return None

    def llm_completed(self, task: Any, request: Any, llm_request: Any, completion: Any) -> None:
        return None

    def recorded_completions(self, correlation_id: str) -> dict[str, Any]:
        return {}


START_FLUSH_AFTER_S = 0.1
#: How long an append waits for an unavailable event store before it raises (seconds).
STORE_WAIT_S = 120.0
#: Backoff between attempts: doubling from the first to the last value, with jitter.
STORE_RETRY_FIRST_S = 0.2
STORE_RETRY_MAX_S = 5.0


class EventRecorder(NullRecorder):
    def __init__(self, config: RuntimeConfig) -> None:
        from relaybus.eventstore import StoreConfig, open_store

        self.config = config
        self.store = open_store(
            config.eventstore_url,
            config=StoreConfig(
                redact_keys=frozenset(config.redact_keys),
                max_payload_bytes=config.max_event_payload_bytes,
            ),
        )
        self.host = socket.gethostname()
        self._pending: dict[str, tuple[float, list[Any]]] = {}
        self._pending_lock = threading.Lock()
        # Held while writing, so the flusher never commits a task's start after its terminal record.
        self._io_lock = threading.RLock()
        self._flusher: threading.Thread | None = None

    def append(self, events: list[Any], task_id: str | None = None) -> None:
        """Append ``events``, preceded by the held-back start records of the running task.

        Waits for an unavailable store (module docstring); if it gives up, the start records go back
        to be held, and ``StoreUnavailable`` is raised.
        """
        from relaybus.eventstore import StoreUnavailable

        task_id = task_id or current_task_id()
        with self._io_lock:
            held = self._take(task_id)
            deadline = time.monotonic() + STORE_WAIT_S
            delay = STORE_RETRY_FIRST_S
            while True:
                try:
                    self.store.append([*held, *events])
                    return
                except StoreUnavailable as exc:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        if held and task_id is not None:
                            with self._pending_lock:
                                self._pending.setdefault(task_id, (time.monotonic(), held))
                        raise
                    logger.warning("event store unavailable (%s); retrying for up to %.0f s more", exc, left)
                    time.sleep(min(left, delay / 2 + random.uniform(0, delay / 2)))  # a database to wait for: no event
                    delay = min(delay * 2, STORE_RETRY_MAX_S)

    # -- held-back start records ---------------------------------------------------------------

    def _hold(self, task_id: str, events: list[Any]) -> None:
        with self._pending_lock:
            self._pending[task_id] = (time.monotonic(), events)
        if self._flusher is None or not self._flusher.is_alive():
            self._flusher = threading.Thread(target=self._flush_loop, name="relaybus-recorder", daemon=True)
            self._flusher.start()

    def _take(self, task_id: str | None) -> list[Any]:
        if task_id is None:
            return []
        with self._pending_lock:
            entry = self._pending.pop(task_id, None)
        return entry[1] if entry else []

    def _flush_loop(self) -> None:
        while True:
            time.sleep(START_FLUSH_AFTER_S / 2)
            try:
                self.flush(older_than_s=START_FLUSH_AFTER_S)
            except Exception:  # the store is down: keep them, try again on the next tick
                logger.warning("could not flush start records; will retry", exc_info=True)

    def flush(self, older_than_s: float = 0.0) -> int:
        """Write the start records of tasks that have run longer than ``older_than_s``."""
        with self._io_lock:
            now = time.monotonic()
            with self._pending_lock:
                due = [k for k, (at, _) in self._pending.items() if now - at >= older_than_s]
                batch = [self._pending.pop(k) for k in due]
            if not batch:
                return 0
            events = [e for _, evs in batch for e in evs]
            try:
                self.store.append(events)
            except Exception:
                with self._pending_lock:
                    for k, entry in zip(due, batch, strict=True):
                        self._pending.setdefault(k, entry)
                raise
            return len(events)

    # -- helpers -----------------------------------------------------------------------------

    def _event(self, request: Any, task: Any, type_: str, eid: str, payload: dict[str, Any], **extra: Any) -> Any:
        from relaybus.eventstore import NewEvent

        headers = dict(request.headers or {})
        correlation = getattr(request, CORRELATION_HEADER, None) or headers.get(CORRELATION_HEADER) or request.id
        causation = getattr(request, CAUSATION_HEADER, None) or headers.get(CAUSATION_HEADER)
        info = request.delivery_info or {}
        return NewEvent(
            event_id=eid,
            stream_id=str(correlation),
            correlation_id=str(correlation),
            # A transition caused by another record (task.dead_lettered by task.failed) names it instead.
            causation_id=extra.pop("causation_id", causation),
            type=type_,
            task_id=request.id,
            agent=task.spec.name,
            queue=info.get("routing_key"),
            priority=info.get("priority"),
            attempt=(request.retries or 0) + 1,
            worker_host=request.hostname or self.host,
            payload=payload,
            **extra,
        )

    @staticmethod
    def _delivery(request: Any) -> str:
        headers = dict(request.headers or {})
        redrive = getattr(request, REDRIVE_HEADER, None) or headers.get(REDRIVE_HEADER) or 0
        redelivered = bool((request.delivery_info or {}).get("redelivered"))
        return f"{request.retries or 0}:{redrive}:{int(redelivered)}"

    # -- transitions -------------------------------------------------------------------------

    def task_started(self, task: Any, request: Any, args: Any, kwargs: Any) -> None:
        delivery = self._delivery(request)
        info = request.delivery_info or {}
        now = _now()
        self._hold(
            request.id,
            [
                self._event(
                    request,
                    task,
                    "task.received",
                    event_id(request.id, "received", delivery),
                    {"redelivered": bool(info.get("redelivered"))},
                    occurred_at=now,
                ),
                self._event(
                    request,
                    task,
                    "task.started",
                    event_id(request.id, "started", delivery),
                    {"redelivered": bool(info.get("redelivered"))},
                    occurred_at=now,
                ),
                *self._start_records(task, request, args, kwargs),
            ],
        )

    @staticmethod
    def _start_records(task: Any, request: Any, args: Any, kwargs: Any) -> list[Any]:
        """What the agent asks to record with its start (one append, one transaction)."""
        hook = getattr(getattr(task, "spec", None), "start_records", None)
        return list(hook(request, tuple(args), dict(kwargs))) if hook is not None else []

    def task_retried(self, task: Any, request: Any, error: BaseException, countdown: float) -> None:
        payload = {**_error_payload(error), "countdown_s": round(countdown, 3)}
        self.append(
            [
                self._event(
                    request, task, "task.retried", event_id(request.id, "retried", request.retries or 0), payload
                )
            ],
            task_id=request.id,
        )

    def task_succeeded(self, task: Any, request: Any, result: Any, duration_s: float) -> None:
        redrive = self._delivery(request).split(":")[1]
        payload = {"output": result, "duration_s": round(duration_s, 6)}
        self.append(
            [self._event(request, task, "task.succeeded", event_id(request.id, "terminal", redrive), payload)],
            task_id=request.id,
        )

    def task_failed(
        self, task: Any, request: Any, error: BaseException, duration_s: float, *, dead_letter_reason: str
    ) -> None:
        redrive = self._delivery(request).split(":")[1]
        failed = self._event(
            request,
            task,
            "task.failed",
            event_id(request.id, "terminal", redrive),
            {**_error_payload(error), "duration_s": round(duration_s, 6)},
        )
        dead = self._event(
            request,
            task,
            "task.dead_lettered",
            event_id(request.id, "dead_lettered", redrive),
            {**_error_payload(error), "reason": dead_letter_reason, "attempts": (request.retries or 0) + 1},
            causation_id=failed.event_id,
        )
        self.append([failed, dead], task_id=request.id)

    def llm_completed(self, task: Any, request: Any, llm_request: Any, completion: Any) -> None:
        fingerprint = completion.request_fingerprint
        self.append(
            [
                self._event(
                    request,
                    task,
                    "llm.completed",
                    event_id(request.id, "llm", self._delivery(request), fingerprint),
                    {
                        "fingerprint": fingerprint,
                        "request": llm_request.model_dump(mode="json"),
                        "completion": completion.model_dump(mode="json"),
                    },
                )
            ],
            task_id=request.id,
        )

    def recorded_completions(self, correlation_id: str) -> dict[str, Any]:
        from relaybus.tasks.llm import Completion

        found: dict[str, Any] = {}
        for event in self.store.by_correlation(correlation_id):
            if event.type == "llm.completed":
                completion = Completion.model_validate(event.payload["completion"])
                found[completion.request_fingerprint] = completion
        return found

    def task_sent(self, headers: dict[str, Any], body: Any, routing_key: str | None, priority: int | None) -> None:
        from relaybus.eventstore import NewEvent

        task_name = str(headers.get("task", ""))
        agent = agent_for_task(task_name)
        if agent is None:
            return
        task_id = str(headers.get("id"))
        correlation = str(headers.get(CORRELATION_HEADER) or task_id)
        args, kwargs = ([], {})
        if isinstance(body, (list, tuple)) and len(body) >= 2:
            args, kwargs = body[0], body[1]
        retries = headers.get("retries") or 0
        redrive = headers.get(REDRIVE_HEADER) or 0
        self.append(
            [
                NewEvent(
                    event_id=event_id(task_id, "sent", retries, redrive),
                    stream_id=correlation,
                    correlation_id=correlation,
                    causation_id=headers.get(CAUSATION_HEADER),
                    type="task.sent",
                    task_id=task_id,
                    agent=agent,
                    queue=routing_key,
                    priority=priority,
                    attempt=int(retries) + 1,
                    worker_host=self.host,
                    payload={
                        "task": task_name,
                        "input": {"args": list(args), "kwargs": kwargs},
                        # What runs after it (chain, callbacks, error callbacks), so a re-drive from
                        # this step continues the workflow the way the original did.
                        "links": _links(body),
                        "parent_id": headers.get("parent_id"),
                        "root_id": headers.get("root_id"),
                        "group_id": headers.get("group"),
                        "eta": headers.get("eta"),
                    },
                )
            ]
        )


def _links(body: Any) -> dict[str, Any]:
    embed = body[2] if isinstance(body, (list, tuple)) and len(body) >= 3 and isinstance(body[2], dict) else {}
    return {k: embed.get(k) for k in ("chain", "callbacks", "errbacks", "chord") if embed.get(k)}


def agent_for_task(task_name: str) -> str | None:
    """Which agent a task's transitions belong to; None for Celery's own tasks (not recorded)."""
    head, _, rest = task_name.partition(".")
    if head in ("agents", "events") and rest:
        return rest.split(".", 1)[0]
    if head == "celery" or not task_name:
        return None
    return "system"  # pipelines.*, relaybus.* orchestration tasks run on the system queue


def recorder_for(app: Celery) -> NullRecorder:
    config = runtime_config(app)
    if not config.record_events:
        return NullRecorder()
    recorder: NullRecorder = resources().get(f"recorder:{config.eventstore_url}", lambda: EventRecorder(config))
    return recorder


def on_before_task_publish(
    app: Celery,
    body: Any = None,
    headers: dict[str, Any] | None = None,
    properties: dict[str, Any] | None = None,
    routing_key: str | None = None,
    **_: Any,
) -> None:
    """``before_task_publish`` handler recording ``task.sent`` in the publishing process."""
    if headers is None:
        return
    priority = (properties or {}).get("priority")
    recorder_for(app).task_sent(headers, body, routing_key, priority)
