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

Only a result stored as it was returned qualifies: a result the backend stored with values masked (a key the
redaction names) is not the output, so such a task runs again as before.
"""

from __future__ import annotations

import json
from typing import Any, Final

from celery import Celery, states
from celery.utils.log import get_logger

from relaybus.tasks.runtime.redacting import redactor_of

logger = get_logger(__name__)

#: What :func:`stored_success` returns when the task must run.
NOT_STORED: Final[Any] = object()


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
    if redactor_of(app).mask in json.dumps(result, default=str):
        return NOT_STORED
    return result
