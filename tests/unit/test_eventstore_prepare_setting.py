"""RELAYBUS_EVENTSTORE_PREPARE reaches every store a process opens: the recorder's and the one the CLI opens."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaybus.celery import runtime_from
from relaybus.settings import Settings
from relaybus.tasks.runtime.claimcheck import store_config
from relaybus.tasks.runtime.recording.eventlog import EventRecorder


@pytest.mark.parametrize(("env", "expected"), [(None, True), ("false", False), ("true", True)])
def test_the_prepare_setting_reaches_the_recorders_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str | None, expected: bool
) -> None:
    if env is not None:
        monkeypatch.setenv("RELAYBUS_EVENTSTORE_PREPARE", env)
    config = runtime_from(Settings(eventstore_url=f"sqlite:///{tmp_path / 'events.sqlite'}"))
    assert store_config(config).postgres_prepare is expected
    recorder = EventRecorder(config)
    try:
        assert recorder.store.config.postgres_prepare is expected
    finally:
        recorder.store.close()


def test_a_prepare_setting_that_is_not_a_boolean_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAYBUS_EVENTSTORE_PREPARE", "sometimes")
    with pytest.raises(ValueError, match="eventstore_prepare"):
        Settings()
