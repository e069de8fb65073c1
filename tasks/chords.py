"""Finishing a chord whose last member's worker died while it was dispatching the callback.

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

Relies on the Redis backend's key layout (pinned: celery 5.7); a no-op on any other backend.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery, states
from celery.backends.redis import RedisBackend
from celery.utils.log import get_logger

logger = get_logger(__name__)

DONE = b"done"
#: Longest wait for another claimer: its lease (join timeout x2, at least 5 s) plus its publish retries.
CLAIM_WAIT_S = 60.0
POLL_S = 0.1


def _complete(backend: RedisBackend, gid: str) -> bool:
    client = backend.client
    size = client.get(backend.get_key_for_group(gid, ".s"))
    if size is None:
        return False
    diff = client.get(backend.get_key_for_group(gid, ".t"))
    jkey = backend.get_key_for_group(gid, ".j")
    ready = client.zcount(jkey, "-inf", "+inf") if backend._chord_zset else client.llen(jkey)
    return int(ready) >= int(size) + int(diff or 0)


def finish_claimed_chord(app: Celery, request: Any, state: str, result: Any) -> bool:
    """Dispatch the callback of a complete chord whose claimer died; True if this call dispatched it."""
    backend = app.backend
    gid = getattr(request, "group", None)
    if not isinstance(backend, RedisBackend) or not gid or not getattr(request, "chord", None):
        return False
    if state not in (states.SUCCESS, states.FAILURE):
        return False
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
