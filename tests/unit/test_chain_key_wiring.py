"""Every writer links with the chain key the settings name: the worker's recorder, the prefork host writer (which
gets its config over a pipe, as JSON) and the saga repository. Only the key file's path travels; never a key."""

from __future__ import annotations

from pathlib import Path

from relaybus.celery import runtime_from
from relaybus.eventstore import NewEvent, open_store
from relaybus.settings import Settings
from relaybus.tasks.runtime.recording.eventlog import EventRecorder
from relaybus.tasks.runtime.recording.hostwriter import HostWriter, HostWriterClient

SECRET = "wiring-secret-" + "x" * 32


def test_the_recorder_and_the_host_writer_link_with_the_configured_key(tmp_path: Path) -> None:
    keys = tmp_path / "chain.keys"
    keys.write_text(f"w1={SECRET}\n")
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    config = runtime_from(Settings(eventstore_url=url, chain_key_file=str(keys)))
    open_store(url, create=True).close()

    recorder = EventRecorder(config)
    recorder.store.append([NewEvent(stream_id="direct", type="t")])
    writer = HostWriter(config)
    try:
        HostWriterClient(writer.address).append([NewEvent(stream_id="hosted", type="t")], 5.0)
    finally:
        writer.stop()
    store = open_store(url)
    try:
        assert [e.key_id for e in store.read_stream("direct") + store.read_stream("hosted")] == ["w1", "w1"]
    finally:
        store.close()
        recorder.store.close()
    assert config.chain_key_file == str(keys)
    assert SECRET not in repr(config) and SECRET not in config.model_dump_json()
