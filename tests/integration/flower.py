"""Flower as an operator starts it (``celery -A relaybus flower``): a real subprocess on a free local port,
behind basic auth, with a test's settings in its environment. The ``flower`` fixture is in conftest.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx

from relaybus.settings import Settings
from tests.harness import ROOT, wait_for

USER, PASSWORD = "relaybus", uuid.uuid4().hex


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Flower:
    """``celery -A relaybus flower`` as a subprocess, on a free local port, behind basic auth."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / "flower.log"
        # Flower reads every FLOWER_* variable as an option: keep the caller's out of it.
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
        env.update(settings.to_env(), PYTHONPATH=str(ROOT))
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "relaybus",
            "flower",
            f"--port={self.port}",
            "--address=127.0.0.1",
            f"--basic-auth={USER}:{PASSWORD}",
        ]
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.client = httpx.Client(base_url=self.url, auth=(USER, PASSWORD), timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, **params: Any) -> Any:
        response = self.client.get(path, params=params)
        response.raise_for_status()
        return response.json()

    def wait_ready(self, timeout: float = 60.0) -> Flower:
        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"Flower exited early:\n{self.log()[-4000:]}")
            try:
                # The one page served without authentication.
                return httpx.get(f"{self.url}/healthcheck", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, timeout, 0.2, "Flower to answer /healthcheck")
        return self

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)
            except ProcessLookupError:
                pass
        self._log.close()
