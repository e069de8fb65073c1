"""cProfile in a benchmark worker's processes (``RELAYBUS_BENCH_PROFILE=<dir>``), for ``python -m bench.profile``.

Every pool process and the worker's main thread profile their CPU time (not waits) and write it under the
folder when the worker shuts down. A module of a benchmark's worker imports this one; without the variable,
importing it does nothing.
"""

from __future__ import annotations

import os
import time

_PROFILE_DIR = os.environ.get("RELAYBUS_BENCH_PROFILE")
if _PROFILE_DIR:
    import cProfile

    from celery.signals import worker_init, worker_process_init, worker_process_shutdown, worker_shutdown

    _profiler = cProfile.Profile()

    def _start(**_: object) -> None:
        global _profiler
        _profiler = cProfile.Profile(time.process_time)  # CPU, not waits; a pool process starts afresh
        _profiler.enable()

    def _dump(role: str) -> None:
        _profiler.disable()
        assert _PROFILE_DIR is not None
        os.makedirs(_PROFILE_DIR, exist_ok=True)
        _profiler.dump_stats(os.path.join(_PROFILE_DIR, f"{role}-{os.getpid()}.prof"))

    worker_process_init.connect(_start, weak=False)
    worker_process_shutdown.connect(lambda **_: _dump("child"), weak=False)
    worker_init.connect(_start, weak=False)
    worker_shutdown.connect(lambda **_: _dump("main"), weak=False)
