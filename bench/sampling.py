"""Sampled profiles of a benchmark's processes: py-spy's raw output, summed by process role, function and package.

cProfile charges its own overhead to every call, so a function called a million times (``isinstance``,
``dataclasses.replace``) looks like a top cost when it is not. A sampler does not: ``python -m bench.profile
--sampler py-spy`` records every process under the benchmark (``py-spy record --subprocesses --format raw``) and
this module reads what it wrote. Samples whose innermost frame is a known wait (a socket read, a condition, a
poll, SQLite waiting for its lock) are set apart as idle, and samples inside an import as start-up, so the shares
below are of the samples that ran the benchmark's work.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

#: Innermost frames that wait rather than run (py-spy's own idle detection needs to stop the process).
IDLE_FRAMES = (
    "Condition.wait", "Event.wait", "Connection._recv ", "_epoll.poll", "TCPTransport._read", "_flush_loop",
    "_on_begin", "select (", "sleep (", "_AbstractTransport.write", "send_offset", "recv_into (", "_poll (",
)  # fmt: skip
#: Frames of a process starting up, not of the work measured: an import, a worker forking its pool.
STARTUP_FRAMES = ("importlib._bootstrap", "AsynPool._create_worker_process")
_FRAME_FILE = re.compile(r"\(([^():]+):\d+\)$")
_PROCESS = "process "


@dataclass
class Role:
    """The samples of one kind of process (the driver, a worker's main process, its pool processes...)."""

    samples: int = 0
    idle: int = 0
    startup: int = 0
    functions: Counter[str] = field(default_factory=Counter)
    packages: Counter[str] = field(default_factory=Counter)

    @property
    def running(self) -> int:
        return self.samples - self.idle - self.startup


def role_of(processes: list[str]) -> str:
    """``driver`` (the benchmark itself), ``worker`` (a process it started: a worker's main process, a peer's
    worker) or ``pool`` (a process one of those started: a pool process), from the chain of process frames."""
    return ("driver", "worker", "pool")[min(len(processes), 3) - 1] if processes else "driver"


def package_of(frame: str) -> str:
    """The package (or module file) of a frame ``function (path/file.py:line)``."""
    match = _FRAME_FILE.search(frame)
    path = match.group(1) if match else frame
    parts = path.split("/")
    return parts[0] if len(parts) > 1 else path


def read(lines: Iterable[str]) -> dict[str, Role]:
    """py-spy's raw lines (``frame;frame;... count``, outermost first) summed by role."""
    roles: dict[str, Role] = {}
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        processes = [f for f in frames if f.startswith(_PROCESS)]
        code = [f for f in frames if not f.startswith((_PROCESS, "thread "))]
        role = roles.setdefault(role_of(processes), Role())
        role.samples += n
        if any(mark in f for f in code for mark in STARTUP_FRAMES):
            role.startup += n
            continue
        if not code or any(wait in code[-1] for wait in IDLE_FRAMES):
            role.idle += n
            continue
        role.functions[code[-1]] += n
        role.packages[package_of(code[-1])] += n
    return roles


def report(roles: dict[str, Role], top: int) -> str:
    """Each role's most sampled functions and packages, as shares of its running samples."""
    out = []
    for name in ("pool", "worker", "driver"):
        role = roles.get(name)
        if role is None or not role.running:
            continue
        out.append(f"-- {name}: {role.samples} samples, {role.running} running "
                   f"({role.idle} waiting, {role.startup} starting up)")
        out.extend(f"{100 * c / role.running:6.1f} %  {f}" for f, c in role.functions.most_common(top))
        out.append("   by package: " + ", ".join(
            f"{p} {100 * c / role.running:.1f} %" for p, c in role.packages.most_common(12)))
    return "\n".join(out)
