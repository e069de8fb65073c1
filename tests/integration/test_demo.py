"""The README's first command, on the embedded default: no RabbitMQ, no Redis reachable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_relaybus_demo_without_any_server_runs_a_pipeline_and_a_compensating_saga(tmp_path):
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RELAYBUS_")},
        # Nothing listens on port 1: the demo must fall back to the embedded default.
        "RELAYBUS_BROKER_URL": "amqp://guest:guest@127.0.0.1:1//",
        "RELAYBUS_RESULT_BACKEND": "redis://127.0.0.1:1/0",
        "COLUMNS": "200",
    }
    result = subprocess.run([sys.executable, "-m", "relaybus.cli", "demo"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    log = tmp_path / ".relaybus" / "demo-worker.log"
    assert result.returncode == 0, output + (f"\n--- demo worker log (last 8000 chars) ---\n{log.read_text()[-8000:]}"
                                             if log.exists() else "")
    assert "mode: embedded" in output
    assert "pipeline completed" in output
    assert "compensated in" in output and "0 side effects left" in output
    assert "saga.compensation.succeeded" in output
    assert (tmp_path / ".relaybus" / "events.sqlite").exists(), "the embedded event log lives in the cwd"
