"""A failure's frames, copied for the pool's parent without every instruction's source position.

Celery's tracer wraps every failure and retry of a task in billiard's ``ExceptionInfo``: the traceback formatted
as text (kept whole: the event log, the result backend and Flower show it) and a picklable copy of its frames for
the pool's parent process. On Python 3.11 and later that copy holds the source position of every instruction of
every frame's code (billiard's ``_Code`` runs ``list(code.co_positions())``): 2,341 tuples for Celery's own
``trace_task`` alone. A failing no-op task took 1.0 ms of CPU in Celery's tracer, 0.34 ms without the copy, on the
path from a saga step's failure to its compensation.

Nothing in the parent formats that copy again. Formatted anyway (``traceback.format_tb(einfo.tb)``), each frame
shows its file, line and source line as before, without the ``^^^`` marks under it, as under
``python -X no_debug_ranges``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from types import CodeType
from typing import Any

from billiard import einfo

#: A position whose lines and columns are unknown.
_UNKNOWN = (None, None, None, None)


class UnknownPositions:
    """``co_positions()`` of a copied code object: one unknown position per instruction (picklable; the parent
    process imports relaybus too)."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __iter__(self) -> Iterator[tuple[None, None, None, None]]:
        return itertools.repeat(_UNKNOWN, self.count)


class LeanCode(einfo._Code):  # type: ignore[misc]  # billiard is untyped
    """billiard's copy of a frame's code object, but for the instructions' positions (:class:`UnknownPositions`).
    Pickled as billiard's own ``_Code``."""

    def __init__(self, code: CodeType) -> None:  # billiard's _Code.__init__, but for the last line
        self.co_filename = code.co_filename
        self.co_name = code.co_name
        self.co_argcount = code.co_argcount
        self.co_cellvars = ()
        self.co_firstlineno = code.co_firstlineno
        self.co_flags = code.co_flags
        self.co_freevars = ()
        self.co_code = b""
        self.co_lnotab = b""
        self.co_names = code.co_names
        self.co_nlocals = code.co_nlocals
        self.co_stacksize = code.co_stacksize
        self.co_varnames = ()
        self.co_qualname = code.co_qualname
        self._co_positions = UnknownPositions(len(code.co_code) // 2)


def install(**_: Any) -> None:
    """Every billiard traceback copied from now on in this process (and the pool processes it forks) uses
    :class:`LeanCode` (a ``worker_init`` handler: billiard's ``_Frame.Code`` is its hook for this)."""
    einfo._Frame.Code = LeanCode
