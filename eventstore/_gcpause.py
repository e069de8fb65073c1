"""Pausing the cyclic garbage collector while a batch of acyclic objects is built.

A replay page, a verification pass or an append batch allocates thousands of containers (rows, records,
payload dicts) that hold no reference cycles and mostly outlive the call. Each 700 allocations start a
young collection, every tenth of those an older one, and now and then a full one over the whole heap:
in a process holding a large heap that costs as much as the work itself. Paused, the collector runs once
afterwards (the allocation count carries over). Reference counting still frees everything as usual;
only cycles made meanwhile (by this or another thread) wait until the pause ends.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """The collector off for the block, back on after it unless it was off already (nesting and
    concurrent pauses from other threads leave it as the outermost caller found it)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
