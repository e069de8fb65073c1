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
no result: for an agent task, :func:`recorded_success` then reads the output from the ``task.succeeded``
record (one read of the log by event id, on redelivered messages only), so that window does not run the task
again either.

Only a value kept as it was returned qualifies: a result or a record with values masked (a key the redaction
names) or escaped (a value the database could not hold as it was) is not the output, so such a task runs
again as before.
"""

from __future__ import annotations

import json
from typing import Any, Final

from celery import Celery, states
from celery.utils.log import get_logger

from relaybus.eventstore.storable import FLOAT_MARK, TEXT_MARK
from relaybus.eventstore.types import TASK_SUCCEEDED
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


def recorded_success(app: Celery, recorder: Any, request: Any) -> Any:
    """The output the ``task.succeeded`` record of ``request``'s delivery holds, if this delivery is a redelivery
    and that record is there and kept the output whole; else :data:`NOT_STORED`. For a redelivery whose
    :func:`stored_success` found nothing: the worker died between the record and the result."""
    if not (request.delivery_info or {}).get("redelivered"):
        return NOT_STORED
    store = getattr(recorder, "store", None)
    if store is None:  # recording is off: there is no record to read
        return NOT_STORED
    try:
        event = store.get(terminal_event_id(request))
    except Exception:  # the store is away: run the task, as without this check
        logger.warning("could not read the recorded end of redelivered task %s; it runs again", request.id,
                       exc_info=True)
        return NOT_STORED
    if event is None or event.type != TASK_SUCCEEDED or "output" not in event.payload:
        return NOT_STORED
    output = event.payload["output"]
    if not _kept_whole(app, output):
        return NOT_STORED
    logger.info("redelivered task %s: its success was recorded before its worker died; its output is used, "
                "the task does not run again", request.id)
    return output
