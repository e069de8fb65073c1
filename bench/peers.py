"""The peers the benchmarks measure relaybus against, installed on demand (pyproject's ``bench`` group)."""

from __future__ import annotations

#: The peers measured side by side (pyproject's ``bench`` group), by import name.
PEERS = {"celery_saga": "celery-saga==0.1.1", "eventsourcing": "eventsourcing[postgres]==9.5.6"}


def ensure_peers() -> None:
    """Install the ``bench`` dependency group's peers into this interpreter if one is missing."""
    import importlib.util
    import subprocess
    import sys

    missing = [spec for module, spec in PEERS.items() if importlib.util.find_spec(module) is None]
    if missing:
        print(f"installing the benchmark's peers: {', '.join(missing)}")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)
