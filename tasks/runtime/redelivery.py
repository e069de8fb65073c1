"""A message redelivered after its task succeeded does not run the task again.

A worker that dies after a task's success was recorded and its result stored, but before the broker had the
ack, gets the message back (late ack). Run again, the task would repeat its side effects (an LLM call paid
twice, a write made twice) and record a second start whose end, sharing the first end's id, is never stored:
the log would claim a run that never ended. Instead, :func:`stored_success` finds the result the first run
stored (a ``SUCCESS`` in the result backend implies the task's terminal record was committed: the record is
written before the result) and the task base uses it in place of the body: no start is recorded, and what
follows the task (its chain, callbacks, a saga's next step) is sent again under the same ids, so it is
de-duplicated downstream if it had already gone. The consumer's ``task.redelivered`` says the message came
back.

A worker that dies a moment earlier, after the success was recorded but before the result was stored, leaves
no result: for an agent task, :func:`recorded_end` then reads the output from the ``task.succeeded``
record (one read of the log by event id, on redelivered messages only), so that window does not run the task
again either.

A task that failed for good the same way (its ``task.failed`` with a dead-letter reason recorded, its worker
dead before the ack) is not run again either: :func:`recorded_end` gives a :class:`FailedBefore` that the task
base raises in place of the body, so its failure path (error callbacks, a chord's settlement) is taken with the
recorded error. Its dead letter was published before the record on the body's path and is not published
again; after a hard time limit the record comes first, so that letter is published now (at worst twice).

Only a value kept as it was returned qualifies: a result or a record with values masked (a key the redaction
names) or escaped (a value the database could not hold as it was) is not the output, so such a task runs
again as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from celery import Celery, states
from celery.utils.log import get_logger

from relaybus.eventstore.storable import FLOAT_MARK, TEXT_MARK, restore
from relaybus.eventstore.types import TASK_FAILED, TASK_SUCCEEDED
from relaybus.tasks.errors import FailedBefore
from relaybus.tasks.runtime.deadletter import TIME_LIMIT_REASON
from relaybus.tasks.runtime.recording.records import terminal_event_id
from relaybus.tasks.runtime.redacting import redactor_of

logger = get_logger(__name__)

#: What :func:`stored_success` returns when the task must run.
NOT_STORED: Final[Any] = object()


def _kept_whole(app: Celery, value: Any) -> bool:
    """Whether ``value`` is a task's output as it was returned: nothing masked by the redaction, nothing escaped
    because the database could not hold it as it was."""
    text = json.dumps(value, default=str)
    return redactor_of(app).mask not in text and f'"{FLOAT_MARK}"' not in text and f'"{TEXT_MARK}' not in text


def stored_success(app: Celery, request: Any) -> Any:
    """The result a previous delivery of ``request``'s task stored with ``SUCCESS``, if this delivery is a
    redelivery; else :data:`NOT_STORED`. Costs one result-backend read, on redelivered messages only."""
    if not (request.delivery_info or {}).get("redelivered"):
        return NOT_STORED
    try:
        meta = app.backend.get_task_meta(request.id)
    except Exception:  # the backend is away: run the task, as without this check
        logger.warning("could not read the stored result of redelivered task %s; it runs again", request.id,
                       exc_info=True)
        return NOT_STORED
    if meta.get("status") != states.SUCCESS:
        return NOT_STORED
    result = meta.get("result")
    return result if _kept_whole(app, result) else NOT_STORED


@dataclass(frozen=True)
class RecordedEnd:
    """What the log holds of a redelivered task's end: its ``output`` (or :data:`NOT_STORED`), or ``failure``."""

    output: Any = NOT_STORED
    failure: FailedBefore | None = None


NO_END: Final = RecordedEnd()


def recorded_end(app: Celery, recorder: Any, request: Any) -> RecordedEnd:
    """The end recorded for ``request``'s delivery, if this delivery is a redelivery: the output its
    ``task.succeeded`` holds (when kept whole), or the failure for good its ``task.failed`` names; else
    :data:`NO_END`. For a redelivery whose :func:`stored_success` found nothing: the worker died between the
    record and the result."""
    if not (request.delivery_info or {}).get("redelivered"):
        return NO_END
    store = getattr(recorder, "store", None)
    if store is None:  # recording is off: there is no record to read
        return NO_END
    try:
        event = store.get(terminal_event_id(request))
    except Exception:  # the store is away: run the task, as without this check
        logger.warning("could not read the recorded end of redelivered task %s; it runs again", request.id,
                       exc_info=True)
        return NO_END
    if event is None:
        return NO_END
    if event.type == TASK_FAILED and event.payload.get("reason"):
        reason = str(event.payload["reason"])
        payload = restore(event.payload)  # an error message stored escaped reads as it was raised
        logger.info("redelivered task %s: its failure for good (%s) was recorded before its worker died; it "
                    "does not run again", request.id, reason)
        return RecordedEnd(failure=FailedBefore(
            str(payload.get("error_type") or "Error"), str(payload.get("error_message") or ""),
            reason, lettered=reason != TIME_LIMIT_REASON,
        ))
    if event.type != TASK_SUCCEEDED or "output" not in event.payload:
        return NO_END
    output = event.payload["output"]
    if not _kept_whole(app, output):
        return NO_END
    logger.info("redelivered task %s: its success was recorded before its worker died; its output is used, "
                "the task does not run again", request.id)
    return RecordedEnd(output=output)
