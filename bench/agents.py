"""The agent measured by the throughput benchmark (its plain-Celery counterparts are in bench.plain_app).

Both do the same trivial work and the same bookkeeping (bench.marks), so the difference between them is
what relaybus adds: validation, headers, context and recording.
"""

from __future__ import annotations

import os
import time

from bench.marks import mark
from relaybus.tasks.runtime.task import AgentContext, AgentModel, agent


class NoopInput(AgentModel):
    key: str
    n: int = 0
    work_ms: float = 0.0  # stand-in for an agent's real work (an LLM call is 100 ms to seconds)


class NoopOutput(AgentModel):
    n: int


@agent("bench_noop", input=NoopInput, output=NoopOutput)
def bench_noop(inp: NoopInput, ctx: AgentContext) -> NoopOutput:
    if inp.work_ms:
        time.sleep(inp.work_ms / 1000)
    mark(inp.key)
    return NoopOutput(n=inp.n)


# -- profiling (RELAYBUS_BENCH_PROFILE=<dir>): cProfile of every pool process and of the worker's main thread,
# written when the worker shuts down, for ``python -m bench.profile``.
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
        os.makedirs(_PROFILE_DIR, exist_ok=True)
        _profiler.dump_stats(os.path.join(_PROFILE_DIR, f"{role}-{os.getpid()}.prof"))

    worker_process_init.connect(_start, weak=False)
    worker_process_shutdown.connect(lambda **_: _dump("child"), weak=False)
    worker_init.connect(_start, weak=False)
    worker_shutdown.connect(lambda **_: _dump("main"), weak=False)
