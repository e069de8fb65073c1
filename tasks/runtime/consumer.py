"""A worker consumer that dead-letters, with a reason, what Celery would otherwise drop or reject bare.

Celery acknowledges (drops) a message it cannot decode and rejects an unknown task without saying
why. Here each one goes to its agent's dead-letter queue with the reason in its headers, and the
worker goes on to the next message.

Before Celery sees a task message, the consumer also dead-letters, with their reason:

* a body over ``max_message_bytes`` (``message-too-large``), unread;
* Celery protocol-2 headers or a JSON body of the wrong shape (``invalid-task-message``). Celery
  would fail on them later, in places that drop the message without a dead letter (the task fails
  before the agent's own validation), or that leak the pool slot it took (a bad ``timelimit``
  leaves a one-process worker receiving but never running anything);
* a message on which Celery's handler raises anyway (``invalid-task-message``);
* a message the broker delivered again more than ``max_redeliveries`` times (``redelivery-limit``): each
  redelivery is recorded (``task.redelivered``) before the task may run again, so a message that kills its
  worker, or is requeued over and over, stops after a bounded number of runs. Its workflow takes its failure
  path (the task is marked failed, which runs its error callbacks).

Every dead letter of this consumer is recorded (``task.dead_lettered``, with the reason) before the message
is acknowledged; while the event store is away the message is given back to the broker instead.
"""

from __future__ import annotations

import hashlib
import math
import socket
import time
from collections.abc import Callable, Container
from typing import Any

from celery.app.task import Context
from celery.exceptions import NotRegistered
from celery.utils.log import get_logger
from celery.worker.consumer.consumer import Consumer
from kombu.exceptions import ContentDisallowed

from relaybus.eventstore import StoreUnavailable
from relaybus.eventstore.types import TASK_SENT
from relaybus.tasks.runtime.config import runtime_config
from relaybus.tasks.runtime.context import CAUSATION_HEADER, CORRELATION_HEADER, id_problem
from relaybus.tasks.runtime.deadletter import dead_letter_message, oversize
from relaybus.tasks.runtime.recording import recorder_for, records
from relaybus.tasks.runtime.recording.eventlog import waiting_until
from relaybus.tasks.runtime.recording.wiring import MAIN_PROCESS_STORE_WAIT_S, record_from_main_process
from relaybus.tasks.runtime.request import in_workflow_of

logger = get_logger(__name__)


class MessageTooLarge(ValueError):
    """A broker message whose body is over the worker's ``max_message_bytes``."""


class MalformedTaskMessage(ValueError):
    """A task message whose headers or body Celery would fail on after taking it."""


class RedeliveryLimitExceeded(RuntimeError):
    """A message the broker delivered again more often than ``max_redeliveries``."""


#: Retries beyond this are not a count Celery or the event log can hold (PostgreSQL's integer).
MAX_RETRIES_HEADER = 1_000_000


_OPTIONAL_STR_HEADERS = ("root_id", "parent_id", "group", "shadow", CORRELATION_HEADER, CAUSATION_HEADER)
_OPTIONAL_LIST_EMBEDS = ("callbacks", "errbacks", "chain")


def _is_limit(value: Any) -> bool:
    return value is None or (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    )


def header_problem(headers: dict[str, Any]) -> str | None:
    """What is wrong with the Celery protocol-2 headers Celery and relaybus read, if anything."""
    if not isinstance(headers.get("task"), str):
        return f"header 'task' must be a task name, got {type(headers.get('task')).__name__}"
    task_id = headers.get("id")
    if not isinstance(task_id, str) or not task_id:
        return f"header 'id' must be a non-empty string, got {task_id!r:.80}"
    problem = id_problem(task_id)
    if problem is not None:
        return f"header 'id' {problem}"
    retries = headers.get("retries")
    if retries is not None and (
        not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= MAX_RETRIES_HEADER
    ):
        return f"header 'retries' must be an integer from 0 to {MAX_RETRIES_HEADER}, got {retries!r:.80}"
    limits = headers.get("timelimit")
    if limits is not None and not (
        isinstance(limits, list | tuple) and len(limits) == 2 and all(_is_limit(v) for v in limits)
    ):
        return f"header 'timelimit' must be [hard, soft] seconds or nulls, got {limits!r:.80}"
    for name in _OPTIONAL_STR_HEADERS:
        if headers.get(name) is not None and not isinstance(headers[name], str):
            return f"header {name!r} must be a string, got {type(headers[name]).__name__}"
    for name in (CORRELATION_HEADER, CAUSATION_HEADER):
        if headers.get(name) is not None and (problem := id_problem(headers[name])) is not None:
            return f"header {name!r} {problem}"
    return None


def body_problem(body: Any) -> str | None:
    """What is wrong with a decoded protocol-2 body ``[args, kwargs, embed]``, if anything."""
    if not isinstance(body, list | tuple) or len(body) != 3:
        return f"the body must be [args, kwargs, embed], got {type(body).__name__} {body!r:.80}"
    args, kwargs, embed = body
    if not isinstance(args, list | tuple):
        return f"args must be a list, got {type(args).__name__}"
    if not isinstance(kwargs, dict):
        return f"kwargs must be an object, got {type(kwargs).__name__}"
    if embed is None:
        return None
    if not isinstance(embed, dict):
        return f"the third element must be an object or null, got {type(embed).__name__}"
    for name in _OPTIONAL_LIST_EMBEDS:
        value = embed.get(name)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, dict) for v in value)):
            return f"{name!r} must be a list of signatures, got {value!r:.80}"
    if embed.get("chord") is not None and not isinstance(embed["chord"], dict):
        return f"'chord' must be a signature, got {embed['chord']!r:.80}"
    return None


def task_message_problem(message: Any, known_tasks: Container[str]) -> str | None:
    """Checks the parts of a protocol-2 message Celery takes on trust. Anything else (no task header,
    an unknown task, a body that does not decode or has a disallowed content type) is left to
    Celery's own handling, which the hooks below turn into dead letters."""
    headers = message.headers
    if not isinstance(headers, dict) or "task" not in headers:
        return None
    problem = header_problem(headers)
    if problem is not None or headers["task"] not in known_tasks:
        return problem
    try:
        body = message.payload  # decoded once and cached; a disallowed content type is refused unread
    except Exception:
        return None
    return body_problem(body)


#: The transport options of the task-event connection, on top of the app's.
UNCONFIRMED = {"confirm_publish": False}
#: A batch of task events whose flush is this late was lost with its timer entry: another is scheduled.
EVENTS_FLUSH_LATE_S = 5.0


class DeadLetteringConsumer(Consumer):  # type: ignore[misc]
    def connection_for_write(self, url: str | None = None, heartbeat: float | None = None) -> Any:
        """The connection of the worker's task events (Flower, ``celery events``), without publisher confirms.

        Celery's consumer makes a write connection for its ``Events`` step only, with the app's transport
        options, and relaybus's carry ``confirm_publish``: the main thread, which also reads the queues and
        feeds the pool, then waited for the broker's confirm of three or four monitoring events per task
        (about 40 % of its busy time in a profile of no-op tasks). Task events are monitoring, not records
        (the event log holds what happened), so they go unconfirmed. A broker that stops reading still
        cannot hold the thread: the unconfirmed publish's socket write is bounded (relaybus.broker), after
        which Celery's dispatcher buffers the event.
        """
        return self.ensure_connected(
            self.app.connection_for_write(url=url, heartbeat=heartbeat, transport_options=UNCONFIRMED)
        )

    _events_flush_due: float | None = None  # when the buffered task events are to be published

    def on_send_event_buffered(self) -> None:
        """A task event was buffered: publish the buffer once ``events_batch_s`` has passed, not at the
        loop's next turn as Celery does.

        Celery's dispatcher publishes its buffer of task events as one message (``task.multi``, a list, which
        Flower and ``celery events`` read as the events one by one), and publishes it at once when it holds
        ``buffer_limit`` (24) events. Flushed at every turn of the loop, a no-op task's three events
        (received, started, succeeded) went out in two publishes or more: about a seventh of the worker's
        CPU per no-op task (README, Performance). Waiting a fraction of a second lets every task that ends
        meanwhile share one publish; monitors see the events that much later. The events stay monitoring,
        not records: the event log has the transitions, committed before each ack.
        """
        if not self.hub:
            return
        wait = runtime_config(self.app).events_batch_s
        if wait <= 0:
            super().on_send_event_buffered()
            return
        now = time.monotonic()
        # A flush already due does for this event too, unless its timer entry went missing (then it is late).
        if self._events_flush_due is None or now > self._events_flush_due + EVENTS_FLUSH_LATE_S:
            self._events_flush_due = now + wait
            self.hub.call_later(wait, self._flush_events_batch)

    def _flush_events_batch(self) -> None:
        self._events_flush_due = None
        self._flush_events()

    def shutdown(self) -> None:
        """The events still waiting for their batch go out before the event connection closes (Celery closes
        it with whatever its buffer holds): a monitor sees every task this worker ended."""
        try:
            self._flush_events_batch()
        except Exception:  # the broker is away: the events were monitoring only
            logger.warning("the last task events could not be published at shutdown", exc_info=True)
        super().shutdown()

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        on_task_received: Callable[[Any], Any] = super().create_task_handler(*args, **kwargs)
        connection_errors = tuple(self.connection_errors or ())

        def guarded(message: Any) -> Any:
            too_large = oversize(self.app, message.body, "the message body")
            if too_large is not None:
                # Checked before Celery reads the body: an oversize message is never decoded or run.
                self._dead_letter(message, "message-too-large", MessageTooLarge(too_large))
                return None
            problem = task_message_problem(message, self.strategies)
            if problem is not None:
                self._dead_letter(message, "invalid-task-message", MalformedTaskMessage(problem))
                return None
            redelivered = (getattr(message, "delivery_info", None) or {}).get("redelivered")
            if redelivered and self._over_redelivery_limit(message):
                return None
            try:
                return on_task_received(message)
            except connection_errors:
                raise  # the consumer reconnects; the unacked message is redelivered
            except Exception as exc:
                # Whatever else makes Celery's handler raise must not escape into the worker's loop.
                if message.acknowledged:
                    logger.exception("error after a message was acknowledged; not dead-lettering it")
                    return None
                self._dead_letter(message, "invalid-task-message", exc)
                return None

        return guarded

    def _dead_letter(self, message: Any, reason: str, error: BaseException | None) -> None:
        queue = str((message.delivery_info or {}).get("routing_key") or "unknown")
        headers = message.headers if isinstance(message.headers, dict) else {}
        try:
            self._record([*self._sent_copy(message, headers, queue, reason),
                          records.refused(headers, queue, reason, error, socket.gethostname(),
                                          body_digest=_digest(message.body))])
        except StoreUnavailable as exc:
            # No ack without the record: the message comes back once the store does.
            logger.error("not dead-lettering a message from %s (%s) while the event store is away (%s); requeued",
                         queue, reason, exc)
            message.reject(requeue=True)
            return
        except Exception:
            logger.exception("the event log refused the record of a dead letter from %s (%s)", queue, reason)
        if dead_letter_message(self.app, message, original_queue=queue, reason=reason, error=error, attempts=0,
                               correlation_id=message.properties.get("correlation_id")):
            logger.error("dead-lettered a message from %s: %s: %s", queue, reason, error)

    def _record(self, events: list[Any]) -> None:
        try:
            record_from_main_process(self.app, events)
        except StoreUnavailable:
            raise
        except Exception:
            if len(events) < 2 or events[0].type != TASK_SENT:
                raise
            # The copy must not cost the refusal its record: a copy the log refuses is left out.
            logger.exception("the event log refused the task.sent of a dead letter; recording the refusal alone")
            record_from_main_process(self.app, events[1:])

    def _sent_copy(self, message: Any, headers: dict[str, Any], queue: str, reason: str) -> list[Any]:
        """The message's ``task.sent`` if its publisher left it to the receiver (a saga's step: no start record of
        it may exist); nothing for a body that is not read (too large, undecodable) or not whole."""
        if reason in ("message-too-large", "undecodable-message") or records.published_at(headers) is None:
            return []
        try:
            copy = records.sent_from_message(headers, message.payload, queue,
                                             (message.delivery_info or {}).get("priority"), socket.gethostname())
        except Exception:
            logger.exception("could not rebuild the task.sent of a dead letter from %s", queue)
            return []
        return [copy] if copy is not None else []

    def _over_redelivery_limit(self, message: Any) -> bool:
        """Record this redelivery; past the limit, dead-letter the message and fail its task (its error
        callbacks run: the workflow takes its failure path). True when the message was dead-lettered."""
        headers = message.headers
        if not isinstance(headers, dict) or headers.get("task") not in self.strategies:
            return False
        recorder = recorder_for(self.app)
        if not recorder.enabled:
            return False
        task_id = str(headers["id"])
        queue = str((message.delivery_info or {}).get("routing_key") or "unknown")
        limit = runtime_config(self.app).max_redeliveries
        try:
            with waiting_until(time.monotonic() + MAIN_PROCESS_STORE_WAIT_S):
                count = recorder.redeliveries(task_id) + 1
                recorder.append([records.redelivered(headers, queue, count, socket.gethostname())], task_id="")
        except Exception as exc:  # cannot count now: let it run; the next redelivery counts again
            logger.warning("could not count a redelivery of %s: %s", task_id, exc)
            return False
        if count <= limit:
            return False
        error = RedeliveryLimitExceeded(f"delivered again {count} times, over the limit of {limit} "
                                        "(RELAYBUS_MAX_REDELIVERIES)")
        self._dead_letter(message, "redelivery-limit", error)
        if message.acknowledged:
            self._fail_task(message, error)
        return True

    def _fail_task(self, message: Any, error: BaseException) -> None:
        """Mark the task of a dead-lettered message failed, with its error callbacks and chord, as Celery
        would had it run and failed."""
        try:
            body = message.payload
            embed = body[2] if isinstance(body, list | tuple) and len(body) == 3 and isinstance(body[2], dict) else {}
            request = Context({**message.headers, **embed, "delivery_info": dict(message.delivery_info or {})})
            with in_workflow_of(request, str(message.headers["id"])):  # its error callbacks end its workflow
                self.app.tasks[message.headers["task"]].backend.mark_as_failure(message.headers["id"], error,
                                                                                request=request)
        except Exception:
            logger.exception("could not mark the dead-lettered task %s failed", message.headers.get("id"))

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        error = ValueError(f"cannot decode the {message.content_type or 'untyped'} body: {exc}")
        self._dead_letter(message, "undecodable-message", error)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._dead_letter(message, "unknown-message-format", None)

    def on_unknown_task(self, body: Any, message: Any, exc: BaseException) -> None:
        name = (message.headers or {}).get("task", "?")
        self._dead_letter(message, "unknown-task", NotRegistered(name))
        task_id = (message.headers or {}).get("id")
        if task_id and isinstance(task_id, str):  # a hostile header could hold anything
            self.app.backend.mark_as_failure(task_id, NotRegistered(name))

    def on_invalid_task(self, body: Any, message: Any, exc: BaseException) -> None:
        reason = "disallowed-content-type" if isinstance(exc, ContentDisallowed) else "invalid-task-message"
        self._dead_letter(message, reason, exc)


def _digest(body: Any) -> str:
    raw = body if isinstance(body, bytes | bytearray) else str(body).encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()[:32]
