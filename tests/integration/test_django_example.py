"""The Django example (examples/django) against the real broker and a real worker process.

Django is configured in this process from the example's settings module, with its database in a
temporary SQLite file; relaybus's settings reach the site through ``override_settings(RELAYBUS=...)``,
as a deployment would set them, so no environment variable is written. The view writes the request and
its outbox message in one transaction and publishes the reference pipeline's start after the commit
(``relaybus.start("research", ...)``), whose entry task waits on the system queue until a worker runs it.
With the broker down (a closed port), the request is queued and ``manage.py relaybus_outbox`` starts it
once the site points at the real broker again.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from relaybus.settings import Settings
from relaybus.tasks.bus.bus import declare_subscriptions
from tests.chaos.services import free_port
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


def finished(client: Any, status_json_url: str) -> dict[str, Any] | None:
    body: dict[str, Any] = client.get(status_json_url).json()
    return body if body["status"] not in {"queued", "pending", "running"} else None


def every_step_succeeded_and_timed(client: Any, status_json_url: str) -> dict[str, Any] | None:
    body: dict[str, Any] = client.get(status_json_url).json()
    done = all(s["status"] == "succeeded" and s["queue_wait_s"] is not None and s["run_time_s"] is not None
               for s in body["steps"])
    return body if done else None


def assert_status_page_shows_the_completed_pipeline(client: Any, status_url: str, steps: list[dict[str, Any]]) -> str:
    """The HTML page: the final status, one row per step of the timeline with its agent, status, queue wait
    and run time, and the article."""
    page = client.get(status_url)
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="status" data-status="completed"' in html, html
    assert 'http-equiv="refresh"' not in html, "a finished workflow's page keeps refreshing"
    rows = re.findall(r'<tr data-agent="([^"]+)" data-status="([^"]+)">(.*?)</tr>', html, re.DOTALL)
    assert [(agent, status) for agent, status, _ in rows] == [(s["agent"], s["status"]) for s in steps]
    assert {agent for agent, _, _ in rows} >= set(PIPELINE_AGENTS)
    for _, _, cells in rows:
        assert len(re.findall(r"\d+ ms", cells)) == 2, cells  # queue wait and run time
    assert '<article id="output">' in html
    return html


def run_outbox() -> tuple[int, str]:
    """``python manage.py relaybus_outbox``, once: its exit code and what it printed."""
    from django.core.management import CommandError, call_command

    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("relaybus_outbox", stdout=out, stderr=err)
    except CommandError as exc:
        return exc.returncode, out.getvalue() + err.getvalue() + str(exc)
    return 0, out.getvalue() + err.getvalue()


def run_outbox_until(printed: str) -> tuple[int, str] | None:
    """One pass of the outbox command if it printed ``printed`` (the message was due), else ``None``."""
    result = run_outbox()
    return result if printed in result[1] else None


def test_the_view_starts_the_pipeline_only_after_commit_and_the_status_page_shows_it_complete(
    app, settings, client, subscriptions, start_worker
):
    from django.db import transaction
    from workflows.models import OutboxMessage, WorkflowRequest

    queue = first_queue(settings)
    assert queue_depth(app, queue) == 0

    with transaction.atomic():
        response = client.post("/workflows/", {"request": "How do durable queues survive a broker restart?"})
        assert response.status_code == 202, response.content
        started = response.json()
        assert started["status"] == "queued"  # published when the transaction commits
        assert WorkflowRequest.objects.filter(pk=started["id"]).exists()
        assert OutboxMessage.objects.filter(pk=started["id"], published_at=None).exists()
        assert queue_depth(app, queue) == 0, "published before the transaction committed"
    wait_for(lambda: queue_depth(app, queue) == 1, 10, what="the pipeline's entry task to be sent after the commit")
    assert OutboxMessage.objects.get(pk=started["id"]).published_at is not None
    assert client.get(started["status_json_url"]).json()["status"] in {"pending", "running"}
    waiting = client.get(started["status_url"]).content.decode()
    assert 'http-equiv="refresh"' in waiting  # the page follows the workflow until it ends

    start_worker(*PIPELINE_AGENTS, concurrency=2)

    status = wait_for(lambda: finished(client, started["status_json_url"]), 60, 0.2,
                      "the status view to show the pipeline finished")
    assert status["id"] == started["id"]
    assert status["status"] == "completed", status
    assert status["reason"] is None
    article = status["output"]
    assert article["title"] and article["body"] and article["sources"], article
    types = [e["type"] for e in status["events"]]
    assert types.index("pipeline.started") < types.index("pipeline.completed"), types
    ran = {e["agent"] for e in status["events"] if e["type"] == "task.succeeded"}
    assert set(PIPELINE_AGENTS) <= ran, ran
    # The steps are the timeline's (relaybus timeline <id>): every one succeeded, with its queue wait and run time.
    assert {s["agent"] for s in status["steps"]} >= set(PIPELINE_AGENTS)
    # A step's records come from two processes (the sender writes task.sent once the broker confirmed, the
    # worker the rest), so the last steps' sends may land just after the outcome; and the task that records
    # pipeline.completed records its own task.succeeded after it: the view may read the pipeline completed
    # while that step still runs. Wait for every step to have succeeded, with its queue wait and run time.
    status = wait_for(lambda: every_step_succeeded_and_timed(client, started["status_json_url"]), 10, 0.1,
                      "every step of the timeline to have succeeded, with its queue wait and run time")
    assert_status_page_shows_the_completed_pipeline(client, started["status_url"], status["steps"])
    assert queue_depth(app, queue) == 0


def test_with_the_broker_down_the_request_is_queued_and_the_outbox_command_starts_it_once_the_broker_is_back(
    app, settings, client, subscriptions, start_worker
):
    from django.test import override_settings
    from django.utils import timezone
    from workflows.models import OutboxMessage

    queue = first_queue(settings)
    fast_backoff = {"backoff_s": 0.2, "backoff_max_s": 0.5}
    # Nothing listens on this port: every publish is refused at once (BrokerUnreachable).
    broker_down = {**settings.model_dump(), "broker_url": f"amqp://guest:guest@127.0.0.1:{free_port()}//",
                   "publish_timeout_s": 2.0}
    with override_settings(RELAYBUS=broker_down, RELAYBUS_OUTBOX=fast_backoff):
        response = client.post("/workflows/", {"request": "What does a transactional outbox guarantee?"})
        assert response.status_code == 202, response.content
        queued = response.json()
        assert queued["status"] == "queued", queued
        assert "broker" in queued["message"] and "BrokerUnreachable" in queued["error"], queued
        message = OutboxMessage.objects.get(pk=queued["id"])
        assert (message.published_at, message.attempts) == (None, 1)
        assert message.next_attempt_at > message.created_at  # backoff before the next attempt

        status = client.get(queued["status_json_url"]).json()
        assert status["status"] == "queued" and "BrokerUnreachable" in status["outbox"]["last_error"], status
        assert 'data-status="queued"' in client.get(queued["status_url"]).content.decode()

        # Still down: the command tries once the backoff is over, fails with the CLI's exit code 3, keeps the row.
        code, output = wait_for(lambda: run_outbox_until("not published"), 10, 0.1,
                                "the outbox command to retry the due message")
        assert code == 3, output
        assert OutboxMessage.objects.get(pk=queued["id"]).attempts == 2
    assert queue_depth(app, queue) == 0, "nothing reached the real broker"

    # The broker is back (the site's settings point at the real one again): the next pass publishes it.
    with override_settings(RELAYBUS_OUTBOX=fast_backoff):
        code, output = wait_for(lambda: run_outbox_until(f"published {queued['id']}"), 10, 0.1,
                                "the outbox command to publish the message once the broker is back")
        assert code == 0, output
        assert "0 still unpublished" in output, output
        message = OutboxMessage.objects.get(pk=queued["id"])
        assert message.published_at is not None and message.attempts == 3 and message.last_error == ""
        assert run_outbox() == (0, "outbox: 0 published, 0 failed, 0 refused, 0 still unpublished\n")

        # An ambiguous publish: the broker took it, but the site never saved that it did (a crash, a lost
        # confirm). The outbox publishes it again under the same pipeline id, and relaybus runs it once.
        OutboxMessage.objects.filter(pk=queued["id"]).update(published_at=None, next_attempt_at=timezone.now())
        code, output = run_outbox()
        assert code == 0 and f"published {queued['id']}" in output, output
    assert queue_depth(app, queue) == 2, "the same start twice on the system queue"

    # One process: the second copy of the entry task arrives after the first ran, as a late duplicate does.
    worker = start_worker(*PIPELINE_AGENTS, concurrency=1)
    status = wait_for(lambda: finished(client, queued["status_json_url"]), 60, 0.2,
                      "the status view to show the pipeline finished")
    assert status["status"] == "completed", status
    status = wait_for(lambda: every_step_succeeded_and_timed(client, queued["status_json_url"]), 10, 0.1,
                      "every step of the timeline to have succeeded, with its queue wait and run time")
    assert_status_page_shows_the_completed_pipeline(client, queued["status_url"], status["steps"])
    types = [e["type"] for e in status["events"]]
    assert types.count("pipeline.started") == 1 and types.count("pipeline.completed") == 1, types
    wait_for(lambda: queue_depth(app, queue) == 0, 10, what="the duplicate entry task to be consumed")
    # The event log keeps one record per task id whatever runs twice, so the worker's log tells: both copies of
    # the entry task were delivered, and only one of them started the pipeline's first agent.
    def both_copies_received() -> list[str] | None:
        names = re.findall(r"Task (\S+)\[[^\]]+\] received", worker.log())
        return names if names.count("pipelines.research") == 2 else None

    received = wait_for(both_copies_received, 10, what="the worker to log both copies of the entry task")
    assert received.count("agents.intake") == 1, received


def test_a_pipeline_that_makes_no_progress_shows_timed_out_with_the_sweeps_reason(
    app, settings, client, subscriptions, start_worker
):
    from django.test import override_settings

    from relaybus.tasks.pipelines.deadline import sweep_pipelines

    # Only the system agent runs: the pipeline starts and its intake step waits on a queue nobody consumes.
    short = Settings(**{**settings.model_dump(), "pipeline_deadline_s": 1.0})
    start_worker("system", settings=short)
    with override_settings(RELAYBUS=short.model_dump()):
        started = client.post("/workflows/", {"request": "Who consumes the intake queue?"}).json()
        assert started["status"] == "started", started

        def intake_waiting() -> bool:
            steps = client.get(started["status_json_url"]).json()["steps"]
            return any(s["agent"] == "intake" and s["status"] == "sent" for s in steps)

        wait_for(intake_waiting, 10, 0.1, "the pipeline to send its intake step")
        swept = wait_for(lambda: sweep_pipelines(app).timed_out, 15, 0.2, "the sweep to end the idle pipeline")
        assert list(swept) == [started["id"]], swept
        status = wait_for(lambda: finished(client, started["status_json_url"]), 10, 0.1,
                          "the status view to show the pipeline ended")
    assert status["status"] == "timed_out", status
    assert status["reason"] == swept[started["id"]] and status["output"] is None, status
    html = client.get(started["status_url"]).content.decode()
    assert 'id="status" data-status="timed_out">timed out</strong>' in html, html
    assert '<tr data-agent="intake" data-status="sent">' in html and 'id="reason"' in html, html


def test_a_start_relaybus_refuses_is_failed_at_once_and_never_retried(app, settings, client):
    import uuid

    from django.db import transaction
    from workflows.models import OutboxMessage, WorkflowRequest

    with transaction.atomic():  # as the view writes them, for a pipeline no module declares
        row = WorkflowRequest.objects.create(correlation_id=uuid.uuid4(), request="Route this nowhere")
        OutboxMessage.objects.create(workflow=row, pipeline="no-such-pipeline", input={"request": row.request})

    code, output = run_outbox()
    assert code == 0 and f"refused {row.pk}" in output and "1 refused, 0 still unpublished" in output, output
    status = client.get(f"/workflows/{row.pk}/status.json").json()
    assert status["status"] == "failed", status
    assert status["reason"].startswith("not started: UnknownPipeline"), status
    assert run_outbox() == (0, "outbox: 0 published, 0 failed, 0 refused, 0 still unpublished\n")
    assert OutboxMessage.objects.get(pk=row.pk).attempts == 1
    assert queue_depth(app, first_queue(settings)) == 0


def test_a_rolled_back_request_never_starts_a_workflow(app, settings, client):
    from django.db import transaction
    from workflows.models import OutboxMessage, WorkflowRequest

    queue = first_queue(settings)
    with pytest.raises(Rollback), transaction.atomic():
        response = client.post("/workflows/", {"request": "This request is rolled back."})
        assert response.status_code == 202, response.content
        started = response.json()
        raise Rollback
    # on_commit callbacks of a rolled-back transaction are dropped then and there: nothing to wait for.
    assert queue_depth(app, queue) == 0
    assert not WorkflowRequest.objects.filter(pk=started["id"]).exists()
    assert not OutboxMessage.objects.filter(pk=started["id"]).exists()
    assert client.get(started["status_url"]).status_code == 404
    assert client.get(started["status_json_url"]).status_code == 404


def test_an_invalid_request_is_refused_and_publishes_nothing(app, settings, client):
    response = client.post("/workflows/", {"request": "", "priority": "whenever"})
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"request", "priority"}
    assert queue_depth(app, first_queue(settings)) == 0


def test_the_index_page_offers_the_form_and_links_each_recent_request_to_its_status(app, settings, client):
    response = client.post("/workflows/", {"request": "Compare classic and quorum queues", "priority": "high"})
    started = response.json()
    assert (response.status_code, started["status"]) == (202, "started"), started  # committed and published
    wait_for(lambda: queue_depth(app, first_queue(settings)) == 1, 10, what="the committed request's first task")

    page = client.get("/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'name="csrfmiddlewaretoken"' in html
    assert 'name="request"' in html
    assert f'href="{started["status_url"]}"' in html


def test_a_browser_form_post_is_redirected_to_the_status_page(app, settings, client):
    response = client.post("/workflows/", {"request": "Where do dead letters go?"}, HTTP_ACCEPT="text/html")
    assert response.status_code == 303
    page = client.get(response["Location"])
    assert page.status_code == 200
    assert "Where do dead letters go?" in page.content.decode()
