"""The embedded mode's SQLite result backend keeps results redacted, as the Redis backend does.

A real worker process on the embedded default (kombu's filesystem broker, ``db+sqlite`` results, a SQLite
event log) runs a task whose output holds a secret under ``api_key`` and one that fails with the secret in
its error message. The secret must not reach the results database file (nor its journal), while the task's
state and the rest of its result are kept.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from relaybus.settings import embedded
from tests.harness import Worker, make_app, make_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_a_secret_in_a_result_never_reaches_the_embedded_results_database(tmp_path: Path) -> None:
    settings = embedded(
        make_settings(
            tmp_path,
            "filesystem://",
            "redis://127.0.0.1:1/0",
            embedded_dir=str(tmp_path / "embedded"),
            extra_modules=("tests.agents", "tests.limited_agents", "tests.edges_definitions"),
            extra_agents=("probe", "asker", "edgesecret"),
        )
    )
    assert settings.result_backend.startswith("db+sqlite:///")
    app = make_app(settings)
    worker = Worker(settings, ("edgesecret",), tmp_path, concurrency=1, name="embedded-results")
    secret = f"sk-live-{uuid.uuid4().hex}"
    try:
        task = app.tasks["agents.edgesecret"]
        ok = task.apply_async(kwargs={"secret": secret})
        output = ok.get(timeout=120)
        failed = task.apply_async(kwargs={"secret": secret, "fail": True})
        with pytest.raises(Exception) as raised:
            failed.get(timeout=60)
    finally:
        worker.stop()
    assert output["note"] == "the key is above" and output["api_key"] != secret, output
    assert secret not in str(raised.value), raised.value
    files = sorted((tmp_path / "embedded").glob("results.sqlite*"))
    assert files, list((tmp_path / "embedded").iterdir())
    for file in files:
        assert secret.encode() not in file.read_bytes(), f"the secret is in {file.name}"
    app.close()
