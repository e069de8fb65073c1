"""Chords that would hang: a claimer that died, and a result backend that lost the chord's state.

**A claimer that died.**

Celery 5.7's Redis backend lets the member that completes a chord *claim* it (a key
``<group>.c`` set NX with a lease of a few seconds), join the results, publish the callback, then
mark the chord done. If the worker dies after the claim and before the callback is published, the
member's message is redelivered (late acks), and the redelivered copy finds the chord complete
but claimed: it returns without dispatching. When the lease runs out there is no member left to
return, so the callback is never sent and the workflow hangs. The chaos suite's kill loop found
this (tests/chaos): a pipeline whose writer never started.

:func:`finish_claimed_chord` runs after a header member's result is stored (from
``AgentTask.after_return``): if the chord is complete and someone else holds the claim, it waits
for the claim to end (a live claimer publishes and marks the chord done within milliseconds; a dead
one's lease expires), and if the chord's data is still there, nobody published the callback: it
returns the member's part again. Celery counts a part once per task id, so this adds nothing and
only claims and dispatches. The callback's task id was fixed when the chord was built, so even the
rare second publish (a claimer that died after publishing, before cleaning up) runs under the same
id and is de-duplicated downstream like any redelivery.

**State that was lost.** Redis is a cache, not the record: a restart without persistence loses the
chord's size and collected results. A member that returns afterwards is counted against nothing,
and Celery returns without a word; the chord never fires. To tell "lost" from "not sized yet"
(Celery sets a chord's size only as it publishes the last header member, so early members can
return before it exists), every header member is *registered* as it is published
(:func:`register_chord_member`, a ``before_task_publish`` handler): a key ``<group>.r`` is set before
the message leaves, and the message carries a header saying so. :func:`fail_lost_chord` (also from
``after_return``) acts only on a registered member whose chord has neither its registration nor its
size nor a dispatch marker any more, and fails the chord into its error path (``ChordError``, the
callback's error callbacks) so the workflow ends failed, with the reason, instead of hanging. The
results of the members that had finished are in the event log; Redis no longer has them, so the
chord is not re-assembled.

Both run from ``AgentTask.after_return`` (tasks.runtime.hooks) once a header member's result is stored.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery, states
from celery.backends.redis import RedisBackend as CeleryRedisBackend
from celery.canvas import maybe_signature
from celery.exceptions import ChordError
from celery.utils.log import get_logger

logger = get_logger(__name__)

DONE = b"done"
#: Longest wait for another claimer: its lease (join timeout x2, at least 5 s) plus its publish retries.
CLAIM_WAIT_S = 60.0
POLL_S = 0.1


def _complete(backend: CeleryRedisBackend, gid: str) -> bool:
    client = backend.client
    size = client.get(backend.get_key_for_group(gid, ".s"))
    if size is None:
        return False
    diff = client.get(backend.get_key_for_group(gid, ".t"))
    jkey = backend.get_key_for_group(gid, ".j")
    ready = client.zcount(jkey, "-inf", "+inf") if backend._chord_zset else client.llen(jkey)
    return int(ready) >= int(size) + int(diff or 0)


def _finished_member(app: Celery, request: Any, state: str) -> tuple[CeleryRedisBackend, str] | None:
    """The Redis backend and group id of a chord header member that has just finished, else None."""
    backend = app.backend
    gid = getattr(request, "group", None)
    if not isinstance(backend, CeleryRedisBackend) or not gid or not getattr(request, "chord", None):
        return None
    return (backend, gid) if state in (states.SUCCESS, states.FAILURE) else None


def finish_claimed_chord(app: Celery, request: Any, state: str, result: Any) -> bool:
    """Dispatch the callback of a complete chord whose claimer died; True if this call dispatched it."""
    found = _finished_member(app, request, state)
    if found is None:
        return False
    backend, gid = found
    client = backend.client
    ckey = backend.get_key_for_group(gid, ".c")
    claim = client.get(ckey)
    if claim is None or claim == DONE or not _complete(backend, gid):
        return False  # dispatched already, or not complete yet (the last member will do it)
    logger.warning("chord %s is complete but claimed by another worker; waiting for the claim to end", gid)
    deadline = time.monotonic() + CLAIM_WAIT_S
    while claim is not None and claim != DONE:
        if time.monotonic() >= deadline:
            logger.error("chord %s: the claim did not end within %ss; leaving it", gid, CLAIM_WAIT_S)
            return False
        time.sleep(POLL_S)  # a lease held in Redis: polled, it cannot be waited on
        claim = client.get(ckey)
    if claim == DONE or not _complete(backend, gid):
        return False  # the claimer was alive and finished
    logger.warning("chord %s: its claimer died before dispatching the callback; dispatching it here", gid)
    backend.on_chord_part_return(request, state, result)
    return True


#: Marks a chord failed here as lost, so the members still to come do not fail it again.
LOST = b"lost"
#: The message header of a chord header member whose chord was registered when it was published.
REGISTERED_HEADER = "x_relaybus_chord_registered"
#: How long a member waits for a chord without any state to show some before failing it as lost.
LOST_GRACE_S = 10.0


def register_chord_member(app: Celery, body: Any, headers: dict[str, Any] | None) -> None:
    """``before_task_publish``: mark a chord header member's chord as existing, before it can run."""
    backend = app.backend
    if headers is None or not isinstance(backend, CeleryRedisBackend):
        return
    gid = headers.get("group")
    embed = body[2] if isinstance(body, (tuple, list)) and len(body) == 3 and isinstance(body[2], dict) else {}
    if not gid or not embed.get("chord"):
        return
    try:
        backend.client.set(backend.get_key_for_group(gid, ".r"), b"1", ex=int(backend.expires or 86400))
    except Exception:  # Redis is away: the chord is sized when it is back, and that is checked first
        logger.warning("chord %s: could not register it in the result backend", gid, exc_info=True)
        return
    headers[REGISTERED_HEADER] = True


def fail_lost_chord(app: Celery, request: Any, state: str) -> bool:
    """Fail a chord whose state the result backend lost (a restart); True if this call failed it."""
    found = _finished_member(app, request, state)
    if found is None or not _registered(request):
        return False
    backend, gid = found
    client = backend.client
    ckey = backend.get_key_for_group(gid, ".c")
    keys = (backend.get_key_for_group(gid, ".s"), backend.get_key_for_group(gid, ".r"), ckey)
    # The restart may have come while the chord was still being published: its last member then
    # registers it again and sizes it a moment later. Give that moment before calling it lost.
    deadline = time.monotonic() + LOST_GRACE_S
    while True:
        if client.exists(*keys):
            return False  # counting, not sized yet, dispatched or failed already
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)  # keys in Redis: polled, they cannot be waited on
    # "done" (dispatched), a claim (dispatching, or failed by Celery, which drops the size), or
    # "lost" (failed here already): none of these is a lost chord. Only a missing key is.
    if not client.set(ckey, LOST, nx=True, ex=24 * 3600):
        return False
    callback = maybe_signature(request.chord, app=app)
    logger.error("chord %s lost its state in the result backend (a restart?); failing it", gid)
    error = ChordError(f"chord {gid} lost its state in the result backend (restarted?); its callback cannot run")
    if callback.id:
        # Stored before the error callbacks are sent, so that they read why (Celery stores it after).
        backend.store_result(callback.id, error, states.FAILURE)
    backend.chord_error_from_stack(callback, error)
    return True


def _registered(request: Any) -> bool:
    if getattr(request, REGISTERED_HEADER, None):
        return True
    return bool((getattr(request, "headers", None) or {}).get(REGISTERED_HEADER))
