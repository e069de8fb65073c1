"""The Django example (examples/django) against the real broker and a real worker process.

Django is configured in this process from the example's settings module, with its database in a
temporary SQLite file; relaybus's settings reach the site through ``override_settings(RELAYBUS=...)``,
as a deployment would set them, so no environment variable is written. The view starts the reference
pipeline (``relaybus.start("research", ...)``), whose entry task waits on the system queue until a worker runs it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from relaybus.settings import Settings
from relaybus.tasks.bus.bus import declare_subscriptions
from tests.harness import ROOT, make_settings, queue_depth, wait_for

pytestmark = pytest.mark.integration

EXAMPLE = ROOT / "examples" / "django"
#: Every agent of the reference pipeline, and the system agent that starts, advances and ends it.
PIPELINE_AGENTS = ("system", "intake", "planner", "researcher", "writer", "reviewer", "publisher")


class Rollback(Exception):
    """Raised inside a transaction to roll it back."""


@pytest.fixture
def settings(tmp_path: Path, broker_url: str, redis_url: str) -> Settings:
    # The site reads the workflow's status from the event log, so this test records events.
    return make_settings(tmp_path, broker_url, redis_url, record_events=True)


@pytest.fixture(scope="module")
def django_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    import django
    from django.conf import settings as django_settings
    from django.core.management import call_command
    from django.test.utils import setup_test_environment, teardown_test_environment

    sys.path.insert(0, str(EXAMPLE))
    try:
        import relaybus_site.settings as site_settings

        if not django_settings.configured:
            values = {name: getattr(site_settings, name) for name in dir(site_settings) if name.isupper()}
            database = tmp_path_factory.mktemp("django") / "db.sqlite"
            values["DATABASES"] = {"default": {**values["DATABASES"]["default"], "NAME": str(database)}}
            django_settings.configure(**values)
        django.setup()
        setup_test_environment()
        call_command("migrate", verbosity=0, interactive=False)
        yield
    finally:
        from django.db import connections

        connections.close_all()
        teardown_test_environment()
        sys.path.remove(str(EXAMPLE))


@pytest.fixture
def client(django_site: None, settings: Settings) -> Iterator[Any]:
    from django.test import Client, override_settings

    with override_settings(RELAYBUS=settings.model_dump()):
        yield Client()


@pytest.fixture
def subscriptions(app: Celery) -> Iterator[None]:
    """The pipeline's event queues, bound before anything runs: its review loop travels on events (the app
    fixture deletes them with the namespace)."""
    declare_subscriptions(app)
    yield


def first_queue(settings: Settings) -> str:
    """Where ``relaybus.start`` sends the pipeline's entry task (``pipelines.research``)."""
    return f"{settings.namespace}.system"


def test_the_view_starts_the_pipeline_only_after_commit_and_the_status_view_shows_it_complete(
    app, settings, client, subscriptions, start_worker
):
    from django.db import transaction
    from workflows.models import WorkflowRequest

    queue = first_queue(settings)
    assert queue_depth(app, queue) == 0

    with transaction.atomic():
        response = client.post("/workflows/", {"request": "How do durable queues survive a broker restart?"})
        assert response.status_code == 202, response.content
        started = response.json()
        assert WorkflowRequest.objects.filter(pk=started["id"]).exists()
        assert queue_depth(app, queue) == 0, "published before the transaction committed"
    wait_for(lambda: queue_depth(app, queue) == 1, 10, what="the pipeline's entry task to be sent after the commit")
    assert client.get(started["status_url"]).json()["status"] in {"pending", "running"}

    start_worker(*PIPELINE_AGENTS, concurrency=2)

    def finished() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(started["status_url"]).json()
        return body if body["status"] not in {"pending", "running"} else None

    status = wait_for(finished, 60, 0.2, "the status view to show the pipeline finished")
    assert status["id"] == started["id"]
    assert status["status"] == "completed", status
    assert status["reason"] is None
    article = status["output"]
    assert article["title"] and article["body"] and article["sources"], article
    types = [e["type"] for e in status["events"]]
    assert types.index("pipeline.started") < types.index("pipeline.completed"), types
    ran = {e["agent"] for e in status["events"] if e["type"] == "task.succeeded"}
    assert set(PIPELINE_AGENTS) <= ran, ran
    assert queue_depth(app, queue) == 0


def test_a_rolled_back_request_never_starts_a_workflow(app, settings, client):
    from django.db import transaction
    from workflows.models import WorkflowRequest

    queue = first_queue(settings)
    with pytest.raises(Rollback), transaction.atomic():
        response = client.post("/workflows/", {"request": "This request is rolled back."})
        assert response.status_code == 202, response.content
        started = response.json()
        raise Rollback
    # on_commit callbacks of a rolled-back transaction are dropped then and there: nothing to wait for.
    assert queue_depth(app, queue) == 0
    assert not WorkflowRequest.objects.filter(pk=started["id"]).exists()
    assert client.get(started["status_url"]).status_code == 404


def test_an_invalid_request_is_refused_and_publishes_nothing(app, settings, client):
    response = client.post("/workflows/", {"request": "", "priority": "whenever"})
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"request", "priority"}
    assert queue_depth(app, first_queue(settings)) == 0


def test_the_index_page_offers_the_form_and_links_each_recent_request_to_its_status(app, settings, client):
    started = client.post("/workflows/", {"request": "Compare classic and quorum queues", "priority": "high"}).json()
    wait_for(lambda: queue_depth(app, first_queue(settings)) == 1, 10, what="the committed request's first task")

    page = client.get("/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'name="csrfmiddlewaretoken"' in html
    assert 'name="request"' in html
    assert f'href="{started["status_url"]}"' in html
