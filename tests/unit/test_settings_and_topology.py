from __future__ import annotations

import pytest
from pydantic import ValidationError

from relaybus.celery import AgentRouter, create_app, runtime_from, topology_from
from relaybus.settings import MAX_PRIORITY, PRIORITY_LEVELS, Settings
from relaybus.tasks.runtime.deadletter import dlq_for
from relaybus.topology import Topology


def test_priority_classes_map_to_broker_numbers_in_order():
    settings = Settings()
    numbers = [settings.priority(c) for c in ("low", "normal", "high", "urgent")]
    assert numbers == sorted(numbers) and len(set(numbers)) == 4
    assert settings.priority("urgent") == MAX_PRIORITY == PRIORITY_LEVELS["urgent"]
    assert settings.priority(None) == PRIORITY_LEVELS["normal"]


def test_an_unknown_priority_class_is_an_error_that_names_it():
    with pytest.raises(ValueError, match="'asap'"):
        Settings().priority("asap")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="between 0 and"):
        Settings().priority(99)


def test_retry_backoff_cannot_be_configured_past_rabbitmq_consumer_timeout():
    with pytest.raises(ValidationError, match="retry_backoff_max_s"):
        Settings(retry_backoff_max_s=3600)


def test_settings_round_trip_through_worker_environment(monkeypatch):
    settings = Settings(namespace="ns1", extra_agents=("a", "b"), urgent_queues=True, retry_backoff_s=0.25)
    for key, value in settings.to_env().items():
        monkeypatch.setenv(key, value)
    assert Settings() == settings


def test_namespace_must_be_a_plain_queue_prefix():
    with pytest.raises(ValidationError, match="namespace"):
        Settings(namespace="bad name.with dots")


def test_every_agent_queue_is_a_durable_priority_queue_that_dead_letters_to_its_own_dlq():
    topology = Topology("agents", ("writer",), urgent_queues=True)
    for queue in topology.queues_for(["writer"]):
        assert queue.durable
        assert queue.queue_arguments["x-max-priority"] == MAX_PRIORITY
        assert queue.queue_arguments["x-dead-letter-exchange"] == "agents.dlx"
        assert queue.queue_arguments["x-dead-letter-routing-key"] == "agents.writer.dlq"
    assert [q.name for q in topology.queues_for(["writer"])] == ["agents.writer", "agents.writer.urgent"]
    assert dlq_for("agents.writer.urgent") == dlq_for("agents.writer") == "agents.writer.dlq"
    assert topology.agent_of_queue("agents.writer.dlq") == "writer"


def test_router_sends_urgent_work_to_the_urgent_queue_only_when_urgent_queues_exist():
    for urgent_queues, expected in ((True, "agents.writer.urgent"), (False, "agents.writer")):
        router = AgentRouter(Topology("agents", ("writer",), urgent_queues), PRIORITY_LEVELS["urgent"])
        route = router("agents.writer", (), {}, {"priority": PRIORITY_LEVELS["urgent"]})
        assert route["queue"].name == expected
    router = AgentRouter(Topology("agents", ("writer",), True), PRIORITY_LEVELS["urgent"])
    assert router("agents.writer", (), {}, {"priority": PRIORITY_LEVELS["high"]})["queue"].name == "agents.writer"
    assert router("celery.chord_unlock", (), {}, {}) is None


def test_the_app_accepts_json_only_and_acks_late_with_prefetch_one():
    app = create_app(Settings())
    conf = app.conf
    assert conf.accept_content == ["json"] and conf.result_accept_content == ["json"]
    assert conf.task_serializer == conf.result_serializer == "json"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["confirm_publish"] is True
    assert conf.task_default_delivery_mode == "persistent"
    assert all(not q.name.endswith(".dlq") for q in conf.task_queues), "dead-letter queues must not be consumed"


def test_backoff_grows_exponentially_with_jitter_and_stays_under_its_cap():
    config = runtime_from(Settings(retry_backoff_s=1.0, retry_backoff_max_s=8.0))
    for retries, ceiling in ((0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (10, 8.0)):
        for _ in range(50):
            assert ceiling / 2 <= config.backoff(retries) <= ceiling


def test_topology_lists_builtin_and_extra_agents_once():
    topology = topology_from(Settings(extra_agents=("writer", "mine")))
    assert topology.agents.count("writer") == 1 and "mine" in topology.agents


def test_settings_and_runtime_config_reprs_mask_url_passwords() -> None:
    from relaybus.celery import runtime_from

    settings = Settings(eventstore_url="postgresql+psycopg://relay:pgS3cret@db/events",
                        broker_url="amqp://u:brokerS3cret@h//")
    runtime = runtime_from(settings)
    for text in (repr(settings), repr(runtime), str(runtime)):
        assert "pgS3cret" not in text and "brokerS3cret" not in text
        assert "relay:[REDACTED]@db" in text
    assert runtime.eventstore_url.endswith("pgS3cret@db/events")  # the value itself stays usable
    assert "credentials" in settings.redact_keys and runtime.redact_keys == settings.redact_keys


def test_the_router_builds_each_queue_once_and_keeps_a_bounded_number(monkeypatch: pytest.MonkeyPatch) -> None:
    import relaybus.celery as celery_module

    router = AgentRouter(Topology("agents", ("writer",), True), PRIORITY_LEVELS["urgent"])
    first = router("agents.writer", (), {}, {})["queue"]
    assert router("agents.writer.draft", (), {}, {})["queue"] is first
    urgent = router("agents.writer", (), {}, {"priority": PRIORITY_LEVELS["urgent"]})["queue"]
    assert urgent is not first and urgent.name == "agents.writer.urgent"
    monkeypatch.setattr(celery_module, "ROUTED_QUEUES_KEPT", 3)
    names = [router(f"agents.a{n}", (), {}, {})["queue"].name for n in range(5)]
    assert names == [f"agents.a{n}" for n in range(5)] and len(router._queues) == 3
