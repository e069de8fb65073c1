"""What a fan-in callback receives, as plain data (no Celery), so agents can read it without the canvas.

A chord's callback gets a list of its members' results. Two things make that list less simple than
it looks, and both are handled here, once:

* a fan-out of one is run as a chain (Celery unrolls a group of one, so the callback would get a
  bare value): :func:`results_of` turns whatever arrived into a list;
* a *settled* member (see :func:`tasks.canvas.settled`) that failed returns a marked failure instead
  of failing the chord: :func:`split_results` separates successes from :class:`MemberFailure`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from relaybus.tasks.errors import error_message_of, error_type_of

#: Message header that makes the task base return a marked failure instead of raising (chord members).
SETTLE_HEADER = "x_settle"
#: Key that marks a result dict as a failure.
FAILURE_MARK = "__relaybus_failure__"


class MemberFailure(BaseModel):
    """A fan-out member that failed for good (after its retries); it is also dead-lettered and logged."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str
    task_id: str
    error_type: str
    error_message: str


def member_failure(task: str, task_id: str, error: BaseException) -> dict[str, Any]:
    """The JSON a settled member returns in place of its output."""
    failure = MemberFailure(
        task=task, task_id=task_id, error_type=error_type_of(error), error_message=error_message_of(error)[:2000]
    )
    return {FAILURE_MARK: failure.model_dump(mode="json")}


def is_failure(value: Any) -> bool:
    return isinstance(value, dict) and FAILURE_MARK in value


def results_of(upstream: Any) -> list[Any]:
    """A callback's upstream as a list: a chord gives a list, a chain of one a single value, none ``[]``."""
    if upstream is None:
        return []
    if isinstance(upstream, (list, tuple)):
        return list(upstream)
    return [upstream]


def split_results(upstream: Any) -> tuple[list[Any], list[MemberFailure]]:
    """``(successes, failures)`` of a fan-in's results, each in member order."""
    ok: list[Any] = []
    failed: list[MemberFailure] = []
    for value in results_of(upstream):
        if is_failure(value):
            failed.append(MemberFailure.model_validate(value[FAILURE_MARK]))
        else:
            ok.append(value)
    return ok, failed
