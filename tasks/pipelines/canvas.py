"""Composing agent tasks: sequences, parallel fan-outs and fan-ins, with error callbacks that always fire.

Celery's canvas has sharp edges this module files off, so pipelines do not each meet them:

* **A group of one is unrolled** when it follows a task in a chain, and the callback gets a value
  instead of a list. :func:`fan_in` runs one member as a plain chain, and callbacks read their input
  with :func:`~tasks.canvas_results.results_of`, which always gives a list.
* **An empty chord header never fires its body.** :func:`fan_in` with no members calls the callback
  at once with ``[]``.
* **A failed chord member fails the chord** (the body does not run). :func:`fan_in` links the error
  callback to every member and to the callback itself, so a failure always reaches it; Celery's own
  ``chord.link_error`` gives header members an *immutable* copy, which loses the failed task's id.
  Or, with ``settle=True``, failed members return a marked failure and the callback runs with the
  partial results (:func:`~tasks.canvas_results.split_results`); the failure is still recorded
  and dead-lettered by the task base.

Error callbacks should take one argument, the failed task's id (``tasks.outcomes.fail_pipeline``);
they may run more than once for one workflow (each failed member, then the chord body), so they must
be idempotent.

**Task ids are derived, not drawn**, when a flow is built inside a running task: from the task's id
and how many flows this execution has built so far (or from ``ids_from``). A step that launches a
flow and is killed before its done-marker is written (``tasks.runtime.idempotency``) runs again and launches
the same flow *under the same ids*: the copies are de-duplicated downstream (the chord counts a
member once per id, the event log stores an event id once) instead of running a second pipeline
beside the first. The kill loop in ``tests/chaos`` found the random ids doing exactly that.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import count

from celery import chain, chord, group
from celery._state import get_current_task
from celery.canvas import Signature, _chain, _chord

from relaybus.tasks.bus.events import derived_id
from relaybus.tasks.runtime.settle import SETTLE_HEADER, MemberFailure, is_failure, results_of, split_results

__all__ = [
    "MemberFailure",
    "derive_ids",
    "fan_in",
    "is_failure",
    "link_error_everywhere",
    "parallel",
    "results_of",
    "sequence",
    "settled",
    "split_results",
]


def settled(sig: Signature) -> Signature:
    """A copy of ``sig`` whose final failure returns a :class:`MemberFailure` mark instead of raising."""
    copy = sig.clone()
    headers = dict(copy.options.get("headers") or {})
    headers[SETTLE_HEADER] = 1
    copy.set(headers=headers)
    return copy


def link_error_everywhere(sig: Signature, errback: Signature) -> Signature:
    """Link ``errback`` to every task inside ``sig`` (chain steps, chord members and body, group members)."""
    if isinstance(sig, _chord):
        for member in sig.tasks:
            link_error_everywhere(member, errback)
        link_error_everywhere(sig.body, errback)
    elif isinstance(sig, (_chain, group)):
        for step in sig.tasks:
            link_error_everywhere(step, errback)
    else:
        sig.link_error(errback.clone())
    return sig


_LAUNCHES = "_relaybus_flows_built"


def _launch_key() -> str | None:
    """``<task id>:<n>`` for the n-th flow built by the running execution; None outside a task.

    The count lives on the request, so it starts again at 1 in every execution (a redelivery, a retry).
    """
    task = get_current_task()
    request = getattr(task, "request", None)
    if request is None or request.id is None or request.called_directly:
        return None
    n = getattr(request, _LAUNCHES, 0) + 1
    setattr(request, _LAUNCHES, n)
    return f"{request.id}:{n}"


def derive_ids(flow: Signature, key: str) -> Signature:
    """Give every task (and group) in ``flow`` an id derived from ``key`` and its place in the flow.

    Ids already set are kept. A chord's id is its header group's id (Celery uses it for both the
    group and, unless the body has its own, the body).
    """
    ids = (derived_id("flow", key, i) for i in count())
    _stamp(flow, ids)
    return flow


def _stamp(sig: Signature, ids: Iterator[str]) -> None:
    if isinstance(sig, _chord):
        sig.options.setdefault("task_id", next(ids))
        for member in sig.tasks:
            _stamp(member, ids)
        _stamp(sig.body, ids)
    elif isinstance(sig, (_chain, group)):
        if isinstance(sig, group):
            sig.options.setdefault("task_id", next(ids))
        for step in sig.tasks:
            _stamp(step, ids)
    else:
        sig.options.setdefault("task_id", next(ids))


def _with_ids(flow: Signature, ids_from: str | None) -> Signature:
    key = ids_from or _launch_key()
    return derive_ids(flow, key) if key is not None else flow


def sequence(*steps: Signature, on_error: Signature | None = None, ids_from: str | None = None) -> Signature:
    """``steps`` one after another, each getting the previous result; ``on_error`` on every step.

    Task ids are derived from ``ids_from``, or inside a task from the running task (module docstring).
    """
    if not steps:
        raise ValueError("a sequence needs at least one step")
    flow = steps[0].clone() if len(steps) == 1 else chain(*(s.clone() for s in steps))
    flow = link_error_everywhere(flow, on_error) if on_error is not None else flow
    return _with_ids(flow, ids_from)


def parallel(
    members: Sequence[Signature], *, on_error: Signature | None = None, ids_from: str | None = None
) -> Signature:
    """``members`` at once, with nothing waiting for them (use :func:`fan_in` to collect results)."""
    if not members:
        raise ValueError("a parallel step needs at least one member; skip the step instead")
    flow = group([m.clone() for m in members])
    flow = link_error_everywhere(flow, on_error) if on_error is not None else flow
    return _with_ids(flow, ids_from)


def fan_in(
    members: Sequence[Signature],
    callback: Signature,
    *,
    on_error: Signature | None = None,
    settle: bool = False,
    ids_from: str | None = None,
) -> Signature:
    """``members`` in parallel, then ``callback`` with their results (read them with ``results_of``).

    * no members: ``callback([])`` at once (an empty chord would never fire);
    * one member: ``member | callback`` (a chord of one can be unrolled to a bare value anyway);
    * more: a chord.

    ``on_error`` is linked to every member and to the callback. ``settle=True`` makes members that
    fail for good return a :class:`MemberFailure` instead, so the callback gets partial results.
    Task ids are derived as for :func:`sequence`.
    """
    steps = [settled(m) if settle else m.clone() for m in members]
    body = callback.clone()
    flow: Signature
    if not steps:
        flow = body.clone(args=([],))
    elif len(steps) == 1:
        flow = chain(steps[0], body)
    else:
        flow = chord(group(steps), body)
    flow = link_error_everywhere(flow, on_error) if on_error is not None else flow
    return _with_ids(flow, ids_from)
