"""The base of relaybus's own tasks that are not agents (pipeline error callbacks, saga orchestration).

They are plain Celery tasks (their own retry options, no dead-letter queue), but their transitions are
recorded like an agent's: ``task.started`` and ``task.succeeded`` or ``task.failed``, so that a workflow's
timeline shows them ended rather than ``sent`` forever. Recording is as strict as for agents: while the
event store is away the message is requeued (tasks.runtime.hooks). As for agents, a message redelivered after
its task's success was stored, or only recorded, does not run the task again (tasks.runtime.redelivery). A
failure recorded before its worker died is not looked up: a system task has no dead letter, and runs again.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Task
from celery.exceptions import Ignore, Reject, Retry

from relaybus.tasks.errors import RecordFailed
from relaybus.tasks.runtime import recording
from relaybus.tasks.runtime.hooks import recording_guard
from relaybus.tasks.runtime.redelivery import NOT_STORED, recorded_end, stored_success

#: What a system task's ``task.succeeded`` holds when its result could not be recorded as it was: not its output,
#: so a redelivery runs such a task again rather than return this.
UNRECORDED_OUTPUT: dict[str, Any] = {"unrecorded": True}


class SystemTask(Task):  # type: ignore[misc]
    """Records the transitions of a relaybus system task (see the module docstring)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.called_directly:
            return super().__call__(*args, **kwargs)
        stored = stored_success(self.app, request)
        if stored is not NOT_STORED:  # redelivered after its success was stored: what follows is sent again
            return stored
        recorder = recording.recorder_for(self.app)
        if not recorder.enabled:
            return super().__call__(*args, **kwargs)
        # Redelivered after its success was recorded but before its result was stored (its worker died between):
        # the recorded output, as an agent's (tasks.runtime.redelivery); a second run would repeat its work and
        # record a start that no end follows.
        output = recorded_end(self.app, recorder, request).output
        if output is not NOT_STORED and output != UNRECORDED_OUTPUT:
            return output
        started = time.monotonic()
        recorder.task_started(self, request, args, kwargs)
        try:
            result = super().__call__(*args, **kwargs)
        except (Retry, Reject, Ignore):
            raise  # not an end: the task runs again, or Celery ends it (and the start is flushed)
        except Exception as error:
            with recording_guard:
                recorder.task_failed(self, request, error, time.monotonic() - started, dead_letter_reason=None)
            raise
        try:
            with recording_guard:
                recorder.task_succeeded(self, request, result, time.monotonic() - started)
        except RecordFailed:
            # The result cannot be recorded as it is (an output the store refuses): record that it ended.
            with recording_guard:
                recorder.task_succeeded(self, request, UNRECORDED_OUTPUT, time.monotonic() - started)
        return result
