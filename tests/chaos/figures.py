"""What each chaos test did and found, collected for the session's summary (and the long run's report)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

#: Where ``python -m tests.chaos`` asks the session to write the figures (JSON).
REPORT_ENV = "RELAYBUS_CHAOS_REPORT"


@dataclass
class Figures:
    test: str
    pipelines: int = 0
    sagas: int = 0
    workers_killed: int = 0
    pool_children_killed: int = 0
    host_writers_killed: int = 0
    service_restarts: int = 0
    events_checked: int = 0
    tasks_checked: int = 0
    duplicates: int = 0
    missing_transitions: int = 0
    redeliveries_after_terminal: int = 0
    #: Which tasks ran again after their end was recorded (tests.chaos.audit.Findings.reruns).
    reruns: list[str] = field(default_factory=list)
    ended: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def workflows(self) -> int:
        return self.pipelines + self.sagas

    def line(self) -> str:
        ended = ", ".join(f"{n} {status}" for status, n in sorted(self.ended.items()))
        return (
            f"{self.test}: {self.workflows} workflows ({self.pipelines} pipelines, {self.sagas} sagas; {ended}), "
            f"{self.workers_killed} workers + {self.pool_children_killed} pool children "
            f"+ {self.host_writers_killed} host writers killed, "
            f"{self.service_restarts} service restarts, {self.events_checked} events / {self.tasks_checked} tasks "
            f"checked, {self.duplicates} duplicates, {self.missing_transitions} missing transitions, "
            f"{self.redeliveries_after_terminal} redeliveries after a terminal event, {self.seconds:.0f} s"
            + (f" (ran again: {'; '.join(self.reruns[:3])})" if self.reruns else "")
        )


RECORDED: list[Figures] = []


def record(figures: Figures) -> None:
    RECORDED.append(figures)


def totals() -> str:
    if not RECORDED:
        return "no chaos test ran to its end"
    n = sum(f.workflows for f in RECORDED)
    return (
        f"TOTAL: {n} workflows run ({sum(f.pipelines for f in RECORDED)} pipelines, "
        f"{sum(f.sagas for f in RECORDED)} sagas), "
        f"{sum(f.workers_killed for f in RECORDED)} workers killed "
        f"(+ {sum(f.pool_children_killed for f in RECORDED)} pool children, "
        f"{sum(f.host_writers_killed for f in RECORDED)} host writers), "
        f"{sum(f.service_restarts for f in RECORDED)} service restarts, "
        f"{sum(f.events_checked for f in RECORDED)} events checked, "
        f"{sum(f.duplicates for f in RECORDED)} duplicates found, "
        f"{sum(f.missing_transitions for f in RECORDED)} missing transitions"
    )


def write_report() -> None:
    path = os.environ.get(REPORT_ENV)
    if path:
        Path(path).write_text(json.dumps([{**asdict(f), "workflows": f.workflows} for f in RECORDED], indent=2))
