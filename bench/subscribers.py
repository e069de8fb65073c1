"""The benchmark's own subscriber: it measures one event hop, from ``publish`` to the handler's start."""

from __future__ import annotations

import json
import time
from typing import ClassVar

from celery import current_app

from relaybus.tasks.bus.bus import subscribe
from relaybus.tasks.bus.events import Event
from relaybus.tasks.runtime.task import AgentContext

BENCH_AGENT = "bench"


class BenchPing(Event):
    type: ClassVar[str] = "bench.ping"
    version: ClassVar[int] = 1

    key: str
    seq: int
    sent_at: float


@subscribe(BENCH_AGENT, BenchPing)
def on_ping(event: BenchPing, ctx: AgentContext) -> None:
    latency_ms = (time.time() - event.sent_at) * 1000
    current_app.backend.client.rpush(event.key, json.dumps({"seq": event.seq, "latency_ms": latency_ms}))
