"""The agent measured by the throughput benchmark (its plain-Celery counterparts are in bench.plain_app).

Both do the same trivial work and the same bookkeeping (bench.marks), so the difference between them is
what relaybus adds: validation, headers, context and recording.
"""

from __future__ import annotations

import time

import bench.profiling  # noqa: F401  (cProfile in the worker when RELAYBUS_BENCH_PROFILE is set)
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
