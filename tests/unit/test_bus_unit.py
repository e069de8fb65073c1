"""The bus's pure parts: names, subscriptions, which subscribers a worker serves, client validation."""

from __future__ import annotations

import pytest

from relaybus.celery import create_app
from relaybus.settings import Settings
from relaybus.tasks.bus.bus import (
    Subscription,
    event_queue_name,
    handler_task_name,
    subscribe,
    subscriber_of,
    subscriptions,
)
from relaybus.tasks.bus.consumer import served_subscribers
from relaybus.tasks.bus.events import derived_id
from relaybus.tasks.errors import InvalidInput, UnknownPipeline
from relaybus.tasks.pipelines.client import start


def test_handler_tasks_are_named_after_their_subscriber_and_route_to_its_queue():
    assert handler_task_name("auditor", "on_research") == "events.auditor.on_research"
    assert subscriber_of("events.auditor.on_research") == "auditor"
    assert subscriber_of("agents.auditor") is None and subscriber_of("events.auditor") is None
    assert event_queue_name("agents", "auditor") == "agents.auditor.events"
    app = create_app(Settings(broker_url="memory://", extra_agents=("auditor",)))
    route = app.conf.task_routes[0]("events.auditor.on_research", (), {}, {})
    assert route["queue"].name == "agents.auditor"


def test_a_subscription_matches_its_patterns():
    sub = Subscription("auditor", "h", ("research.*", "pipeline.completed"), lambda e, c: None)
    assert sub.matches("research.completed") and sub.matches("pipeline.completed")
    assert not sub.matches("pipeline.failed")


def test_subscribing_needs_valid_patterns():
    with pytest.raises(ValueError, match="at least one"):
        subscribe("auditor")
    with pytest.raises(ValueError, match="invalid event pattern"):
        subscribe("auditor", "research..completed")


def test_the_builtin_subscriptions_are_the_pipelines_event_driven_steps():
    app = create_app(Settings(broker_url="memory://"))
    app.loader.import_default_modules()
    names = {s.task_name for s in subscriptions()}
    assert {"events.reviewer.review", "events.writer.revise", "events.publisher.publish",
            "events.system.record_outcome"} <= names
    assert {"events.reviewer.review", "events.system.record_outcome"} <= set(app.tasks)


def test_a_worker_serves_the_subscribers_whose_agent_queue_it_consumes():
    app = create_app(Settings(broker_url="memory://"))
    app.loader.import_default_modules()
    app.amqp.queues.select(["agents.reviewer", "agents.intake"])
    assert served_subscribers(app) == ["reviewer"]


def test_derived_ids_are_stable():
    assert derived_id("e", "events.a.b") == derived_id("e", "events.a.b") != derived_id("e", "events.a.c")


def test_the_client_refuses_an_unknown_pipeline_and_invalid_input_before_sending():
    app = create_app(Settings(broker_url="memory://"))
    with pytest.raises(UnknownPipeline, match=r"known pipelines: .*research"):
        start("nope", {}, app=app)
    with pytest.raises(InvalidInput, match="request"):
        start("research", {"max_topics": 2}, app=app)
