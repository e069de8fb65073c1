"""Starting worker processes: the command line for one set of agents, and a managed subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from relaybus.settings import Settings
from relaybus.topology import Topology


class UnknownAgent(ValueError):
    """Raised when a worker is asked to serve an agent the topology does not know."""


def worker_argv(
    topology: Topology,
    agents: list[str] | None,
    *,
    concurrency: int | None = None,
    pool: str = "prefork",
    urgent_only: bool = False,
    hostname: str | None = None,
    loglevel: str = "INFO",
) -> list[str]:
    """``celery -A relaybus worker`` consuming the queues of ``agents`` (all agents if None)."""
    chosen = agents or list(topology.agents)
    unknown = [a for a in chosen if a not in topology.agents]
    if unknown:
        raise UnknownAgent(
            f"unknown agent(s) {', '.join(unknown)}; known agents: {', '.join(topology.agents)}"
        )
    if urgent_only and not topology.urgent_queues:
        raise UnknownAgent("--urgent needs RELAYBUS_URGENT_QUEUES=true (there are no urgent queues)")
    queues = []
    for agent in chosen:
        if not urgent_only:
            queues.append(topology.queue_name(agent))
        if topology.urgent_queues:
            queues.append(topology.queue_name(agent, urgent=True))
    argv = [sys.executable, "-m", "celery", "-A", "relaybus", "worker", "-Q", ",".join(queues), "-P", pool,
            "-l", loglevel]
    if concurrency:
        argv += ["-c", str(concurrency)]
    if hostname:
        argv += ["-n", hostname]
    return argv


class WorkerProcess:
    """A worker started as a child process, stopped with a warm shutdown."""

    def __init__(self, argv: list[str], settings: Settings, log_path: Path, cwd: Path | None = None) -> None:
        env = {**os.environ, **settings.to_env()}
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        self._log.close()

    def wait_log(self, text: str, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_path.read_text(errors="replace"):
                return True
            if not self.alive():
                return False
            time.sleep(0.1)
        return False
