"""``relaybus web`` in a real browser: Playwright's Python package drives Debian's Chromium
(``/usr/bin/chromium``; never a browser download) against the console served by the real command,
over real workers, RabbitMQ, Redis and an event log. It finds a finished pipeline and a compensated
saga, reads the workflow chart, requeues a dead letter and sees it leave, scrapes ``/metrics``, and
checks that a request without credentials or a POST without the CSRF token is refused.

Screenshots go to ``tmp_path``, and to ``$RELAYBUS_WEB_SCREENSHOTS`` when set (``docs/console``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from relaybus.settings import Settings
from relaybus.tasks.pipelines.client import PipelineHandle
from tests.harness import ROOT, Worker, celery_headers, queue_depth, raw_publish, wait_for
from tests.integration.system import completed_pipeline_and_compensated_saga, running_system, system_settings
from tests.services import require_chromium

pytestmark = pytest.mark.integration

AGENTS = ("system", "intake", "planner", "researcher", "writer", "reviewer", "publisher", "auditor")
TOKEN = "console-test-" + uuid.uuid4().hex
#: Flags for a root, headless Chromium on a machine without outside network (no background lookups).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def console(settings: Settings, tmp: Path, *args: str, token: str | None = TOKEN) -> Iterator[str]:
    """``relaybus web`` as a process of its own, as an operator starts it; yields its base URL."""
    port = free_port()
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT)}
    env.pop("RELAYBUS_WEB_TOKEN", None)
    if token is not None:
        env["RELAYBUS_WEB_TOKEN"] = token
    log = open(tmp / f"web-{port}.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "relaybus.cli", "web", "--port", str(port), *args], cwd=tmp,
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def serving() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"relaybus web exited: {(tmp / f'web-{port}.log').read_text()}")
        try:
            return httpx.get(f"{base}/login", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(serving, 30, 0.1, "relaybus web to serve")
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        log.close()


def store_events(settings: Settings, correlation_id: str) -> list[Any]:
    from relaybus.eventstore import open_store

    store = open_store(settings.eventstore_url)
    try:
        return store.by_correlation(correlation_id)
    finally:
        store.close()


def append_deferred_step(settings: Settings, correlation_id: str) -> None:
    """A workflow of one task, sent and then deferred by the rate limiter, as the log records it."""
    from relaybus.eventstore import NewEvent, open_store

    task_id = str(uuid.uuid4())
    store = open_store(settings.eventstore_url)
    try:
        store.append([
            NewEvent(stream_id=correlation_id, type="task.sent", task_id=task_id, agent="asker",
                     payload={"task": "agents.asker"}),
            NewEvent(stream_id=correlation_id, type="task.deferred", task_id=task_id, agent="asker",
                     payload={"wait_s": 5.0}),
        ])
    finally:
        store.close()


def dead_letter_of_bad_input(system_app: Celery, settings: Settings, tmp: Path) -> str:
    """A probe task whose input cannot validate: its worker dead-letters it (InvalidInput, never retried). The worker
    is stopped afterwards, so that a requeued letter waits in the probe queue instead of coming straight back."""
    from relaybus.dlq import peek

    headers = celery_headers("agents.probe")
    body = json.dumps([[], {"key": 12345}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    probe = Worker(settings, ("probe",), tmp)
    try:
        probe.wait_ready(system_app)
        raw_publish(system_app, f"{settings.namespace}.probe", body, content_type="application/json",
                    headers=headers)
        wait_for(lambda: [d for d in peek(system_app, limit=100) if d.task_id == headers["id"]], 30,
                 what=f"the bad probe task to be dead-lettered\n{probe.log()[-3000:]}")
    finally:
        probe.stop()
    return str(headers["id"])


def test_the_console_shows_workflows_dead_letters_queues_and_metrics_in_a_real_browser(
    tmp_path: Path, broker_url: str, redis_url: str
) -> None:
    from playwright.sync_api import expect, sync_playwright

    chromium = require_chromium()
    shots_dirs = [tmp_path]
    if os.environ.get("RELAYBUS_WEB_SCREENSHOTS"):
        shots_dirs.append(Path(os.environ["RELAYBUS_WEB_SCREENSHOTS"]))
    settings = system_settings(tmp_path, broker_url, redis_url, extra_agents=("probe", "flaky", "auditor", "archivist"))
    with running_system(settings, tmp_path, [(AGENTS, 3)]) as system:
        pipeline_id, saga_id = completed_pipeline_and_compensated_saga(system, "consoles")
        handle = PipelineHandle(pipeline_id, system.app)
        letter_id = dead_letter_of_bad_input(system.app, settings, tmp_path)

        from relaybus.eventstore import open_store

        store = open_store(settings.eventstore_url)
        try:
            steps = store.timeline(handle.id).steps
        finally:
            store.close()
        # relaybus verify records what it found (log.verified), which the integrity page shows.
        verify = subprocess.run([sys.executable, "-m", "relaybus.cli", "verify", "--json"], cwd=tmp_path,
                                env={**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT)},
                                capture_output=True, text=True, timeout=120)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        verified = json.loads(verify.stdout)
        started = min(e.occurred_at for e in store_events(settings, handle.id))  # when the pipeline started
        bearer = {"authorization": f"Bearer {TOKEN}"}
        with console(settings, tmp_path) as base:
            # Refused without credentials: 401 for a client, the login form for a browser.
            assert httpx.get(f"{base}/workflows").status_code == 401
            assert httpx.get(f"{base}/metrics").status_code == 401
            browser_get = httpx.get(f"{base}/workflows", headers={"accept": "text/html"})
            assert browser_get.status_code == 303 and browser_get.headers["location"].startswith("/login")
            assert httpx.get(f"{base}/workflows", headers={"authorization": "Bearer wrong"}).status_code == 401

            metrics = httpx.get(f"{base}/metrics", headers={"authorization": f"Bearer {TOKEN}"})
            assert metrics.status_code == 200
            families = list(text_string_to_metric_families(metrics.text))
            types = {family.name: family.type for family in families}
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for family in families for s in family.samples}
            assert samples[("relaybus_workflows", (("status", "completed"),))] >= 1
            assert samples[("relaybus_workflows", (("status", "compensated"),))] >= 1
            assert samples[("relaybus_dead_letter_depth", (("agent", "probe"), ("kind", "agent")))] == 1
            assert samples[("relaybus_queue_consumers", (("agent", "writer"), ("kind", "agent")))] >= 1
            # Counters and histograms as Prometheus reads them: _total, _bucket (cumulative, +Inf = _count), _sum.
            assert types["relaybus_tasks"] == "counter" and types["relaybus_llm_tokens"] == "counter"
            assert types["relaybus_task_run_seconds"] == types["relaybus_task_queue_wait_seconds"] == "histogram"
            assert samples[("relaybus_tasks_total", (("agent", "writer"), ("outcome", "succeeded")))] >= 1
            assert samples[("relaybus_tasks_total", (("agent", "probe"), ("outcome", "dead_lettered")))] == 1
            for histogram in ("relaybus_task_run_seconds", "relaybus_task_queue_wait_seconds"):
                count = samples[(f"{histogram}_count", (("agent", "writer"),))]
                buckets = sorted((float(dict(labels)["le"]), v) for (name, labels), v in samples.items()
                                 if name == f"{histogram}_bucket" and ("agent", "writer") in labels)
                assert count >= 1 and buckets[-1] == (float("inf"), count), (histogram, buckets)
                assert [v for _, v in buckets] == sorted(v for _, v in buckets), "cumulative buckets"
                assert samples[(f"{histogram}_sum", (("agent", "writer"),))] >= 0
            writer_tokens = [v for (name, labels), v in samples.items() if name == "relaybus_llm_tokens_total"
                             and ("agent", "writer") in labels and ("kind", "completion") in labels]
            assert writer_tokens and sum(writer_tokens) > 0, "the writer's LLM tokens, by model"
            print("\n/metrics (excerpt):\n" + "\n".join(
                line for line in metrics.text.splitlines()
                if any(k in line for k in ('agent="writer"', 'agent="probe"', "relaybus_workflows{"))
                and ("_bucket" not in line or 'le="1.0"' in line))
            )

            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page(viewport={"width": 1280, "height": 900})
                    page.set_default_timeout(15_000)

                    def shot(name: str, full_page: bool = True) -> None:
                        for d in shots_dirs:
                            d.mkdir(parents=True, exist_ok=True)
                            page.screenshot(path=str(d / f"{name}.png"), full_page=full_page)

                    # The login form sets the signed cookie, and leads back to the page asked for.
                    page.goto(f"{base}/workflows")
                    expect(page).to_have_url(f"{base}/login?next=/workflows")
                    page.fill("input[name=token]", "wrong")
                    page.click("button[type=submit]")
                    expect(page.locator("text=wrong credentials")).to_be_visible()
                    page.fill("input[name=token]", TOKEN)
                    page.click("button[type=submit]")
                    expect(page).to_have_url(f"{base}/workflows")

                    pipeline_row = page.locator(f"tr[data-correlation-id='{handle.id}']")
                    expect(pipeline_row).to_have_attribute("data-status", "completed")
                    expect(pipeline_row).to_have_attribute("data-kind", "pipeline")
                    saga_row = page.locator(f"tr[data-correlation-id='{saga_id}']")
                    expect(saga_row).to_have_attribute("data-status", "compensated")
                    expect(saga_row).to_have_attribute("data-kind", "saga")
                    rendered = page.locator("text=Rendered from the log in").inner_text()
                    print(f"workflow list: {rendered}")
                    shot("workflows")
                    page.select_option("select[name=status]", "compensated")
                    page.click("form[action='/workflows'] button")
                    expect(page.locator(f"tr[data-correlation-id='{saga_id}']")).to_be_visible()
                    expect(page.locator(f"tr[data-correlation-id='{handle.id}']")).to_have_count(0)
                    # Found by a task id of its own, as by its correlation id below.
                    page.fill("input[name=q]", next(st.task_id for st in steps if st.agent == "writer"))
                    page.select_option("select[name=status]", "")
                    page.click("form[action='/workflows'] button")
                    expect(page.locator(f"tr[data-correlation-id='{handle.id}']")).to_be_visible()
                    expect(page.locator("#workflows tbody tr")).to_have_count(1)
                    page.fill("input[name=q]", saga_id)  # a saga by its id
                    page.click("form[action='/workflows'] button")
                    expect(page.locator(f"tr[data-correlation-id='{saga_id}']")).to_be_visible()
                    page.goto(f"{base}/workflows?q={handle.id}")
                    expect(page.locator("#workflows tbody tr")).to_have_count(1)
                    # By name: the pipeline's, not the saga's; by when they started (UTC, to the minute).
                    page.goto(f"{base}/workflows")
                    page.fill("input[name=name]", "research")
                    page.click("form[action='/workflows'] button")
                    expect(page.locator(f"tr[data-correlation-id='{handle.id}']")).to_be_visible()
                    expect(page.locator(f"tr[data-correlation-id='{saga_id}']")).to_have_count(0)
                    expect(page.locator("#workflows tbody tr[data-kind='saga']")).to_have_count(0)
                    page.fill("input[name=name]", "")
                    page.fill("input[name=since]", (started - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M"))
                    page.fill("input[name=until]", (started + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M"))
                    page.click("form[action='/workflows'] button")
                    expect(page.locator(f"tr[data-correlation-id='{handle.id}']")).to_be_visible()
                    expect(page.locator(f"tr[data-correlation-id='{saga_id}']")).to_be_visible()
                    shot("workflows-filtered")
                    page.fill("input[name=since]", (started + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M"))
                    page.fill("input[name=until]", "")
                    page.click("form[action='/workflows'] button")
                    expect(page.locator("#workflows tbody")).to_contain_text("No workflows match")
                    assert httpx.get(f"{base}/workflows?since=yesterday", headers=bearer).status_code == 400
                    page.goto(f"{base}/workflows?q={handle.id}")

                    # One pipeline: a bar per step of its timeline, on one axis.
                    page.click(f"a[href='/workflows/{handle.id}']")
                    bars = page.locator("#chart .step")
                    expect(bars).to_have_count(len(steps))
                    agents = {bars.nth(i).get_attribute("data-agent") for i in range(len(steps))}
                    assert {"intake", "planner", "researcher", "writer", "reviewer", "publisher"} <= agents, agents
                    widths = page.eval_on_selector_all("#chart .run", "els => els.map(e => e.style.width)")
                    assert all(w.endswith("%") for w in widths) and any(float(w[:-1]) > 1 for w in widths), widths
                    expect(page.locator("#workflow-status")).to_have_text("completed")
                    shot("workflow-pipeline", full_page=False)  # its events run on for pages
                    # Its LLM calls, with their tokens (the offline provider counts words).
                    expect(page.locator("#llm tbody tr").first).to_be_visible()
                    total = page.locator("#llm tr.total td").nth(2).inner_text()
                    assert int(total) > 0, total
                    # Re-drive it from the writer, confirmed: a new run, a replay of this one, which completes.
                    writer = page.locator("#redrive select option", has_text="writer").first.get_attribute("value")
                    page.select_option("#redrive select[name=from_step]", writer)
                    page.once("dialog", lambda dialog: dialog.accept())
                    page.click("#redrive button")
                    expect(page.locator("#message")).to_contain_text(f"replay of {handle.id}")
                    rerun = page.url.split("/workflows/", 1)[1].split("?", 1)[0]
                    assert rerun != handle.id
                    assert PipelineHandle(rerun, system.app).wait(60).status == "completed"
                    page.reload()
                    expect(page.locator("#workflow-status")).to_have_text("completed")

                    # The compensated saga: its steps, the compensations, and why.
                    page.goto(f"{base}/workflows/{saga_id}")
                    expect(page.locator("#workflow-status")).to_have_text("compensated")
                    expect(page.locator("#saga-steps tr[data-step='publishing']")).to_contain_text("failed")
                    expect(page.locator("#saga-steps .compensation", has_text="succeeded").first).to_be_visible()
                    expect(page.locator("#saga-history")).to_contain_text("saga.compensated")
                    # What failed, by name: the saga's step and the task that ran it, and why; not the task's id.
                    failures = page.locator("#failures")
                    expect(failures).to_contain_text("step publishing (agents.publisher.saga_publish)")
                    expect(failures).to_contain_text("InjectedFailure: injected permanent failure")
                    expect(failures).not_to_contain_text("task_id")
                    expect(failures).to_contain_text("task.failed agents.publisher.saga_publish: permanent-error")
                    expect(page.locator("#saga-steps tr[data-step='publishing'] .task")).to_have_text(
                        "agents.publisher.saga_publish")
                    shot("workflow-saga", full_page=False)

                    # A step waiting out a rate limit (task.deferred) has a status style of its own.
                    deferred_id = f"deferred-{uuid.uuid4().hex[:8]}"
                    append_deferred_step(settings, deferred_id)
                    page.goto(f"{base}/workflows/{deferred_id}")
                    step = page.locator("#chart .step[data-status='deferred']")
                    expect(step).to_have_attribute("data-task", "agents.asker")
                    styled, default = step.locator(".status").evaluate(
                        "e => { const d = document.createElement('span'); d.className = 'status';"
                        " document.body.appendChild(d);"
                        " return [getComputedStyle(e).backgroundColor, getComputedStyle(d).backgroundColor]; }")
                    assert styled != default, (styled, default)

                    # Dead letters: a POST without the CSRF token is refused (with a valid session cookie) ...
                    page.goto(f"{base}/dlq")
                    letter = page.locator(f"tr[data-task-id='{letter_id}']")
                    expect(letter).to_contain_text("InvalidInput")
                    forged = page.request.post(f"{base}/dlq/purge", form={"task_id": letter_id})
                    assert forged.status == 403 and "CSRF" in forged.text()
                    wrong = page.request.post(f"{base}/dlq/purge", form={"task_id": letter_id, "csrf": "guess"})
                    assert wrong.status == 403
                    page.reload()
                    expect(letter).to_be_visible()
                    shot("dlq")
                    # Resuming a saga that is not compensation_failed is refused, naming why (a real POST: token,
                    # cookie and CSRF field as the page's forms send them).
                    csrf = page.locator("input[name='csrf']").first.get_attribute("value")
                    refused = page.request.post(f"{base}/actions/resume", form={"saga_id": saga_id, "csrf": csrf})
                    assert refused.status == 409 and "cannot be resumed" in refused.text(), refused.text()
                    # ... and a requeue, confirmed, sends it back to its queue and out of the list.
                    page.once("dialog", lambda dialog: dialog.accept())
                    letter.locator("button.requeue").click()
                    expect(page.locator("#message")).to_have_text("requeued 1")
                    expect(page.locator(f"tr[data-task-id='{letter_id}']")).to_have_count(0)
                    assert queue_depth(system.app, f"{settings.namespace}.probe") == 1

                    # Queues: depth and consumers per agent, and the refresh that keeps them live.
                    page.goto(f"{base}/queues")
                    expect(page.locator("#queues tr[data-agent='probe'] td").nth(3)).to_have_text("1")
                    expect(page.locator("#refreshed")).to_contain_text("UTC", timeout=12_000)
                    shot("queues")

                    page.goto(f"{base}/agents")
                    expect(page.locator("#agents tr[data-agent='writer']")).to_be_visible()
                    shot("agents")

                    # Integrity: the verify the CLI ran before, then one from here, confirmed, each recorded.
                    page.goto(f"{base}/integrity")
                    expect(page.locator("#last-verify")).to_have_attribute("data-ok", "true")
                    expect(page.locator("#verify-result")).to_contain_text("all chains hold")
                    expect(page.locator("#last-verify")).to_contain_text("by cli")
                    expect(page.locator("#verify-covered")).to_contain_text(f"{verified['events_checked']} events")
                    page.once("dialog", lambda dialog: dialog.accept())
                    page.click("#verify-now button")
                    expect(page.locator("#message")).to_contain_text("all chains hold")
                    expect(page.locator("#last-verify")).to_contain_text("by console")
                    shot("integrity")
                finally:
                    browser.close()

        # Read-only: no action buttons, and a POST refused even with the right token and CSRF cookie.
        with console(settings, tmp_path, "--read-only") as base:
            client = httpx.Client(base_url=base, headers={"authorization": f"Bearer {TOKEN}"})
            page_text = client.get("/dlq").text
            assert "Requeue" not in page_text and "read-only" in page_text
            assert "Verify now" not in client.get("/integrity").text
            csrf = client.cookies["relaybus_csrf"]
            assert client.post("/dlq/purge", data={"csrf": csrf}).status_code == 403
            client.close()


def test_the_console_refuses_to_start_without_credentials_unless_on_localhost_with_the_flag(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYBUS_WEB_")}

    def web(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "relaybus.cli", "web", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)

    bare = web("--host", "0.0.0.0")
    assert bare.returncode == 2 and "RELAYBUS_WEB_TOKEN" in bare.stderr, bare.stderr
    wide = web("--host", "0.0.0.0", "--insecure-localhost")
    assert wide.returncode == 2 and "--insecure-localhost" in wide.stderr, wide.stderr
    local = web("--host", "127.0.0.1")
    assert local.returncode == 2 and "--insecure-localhost" in local.stderr, local.stderr


def test_a_broker_that_does_not_answer_is_one_masked_line_not_a_traceback(
    tmp_path: Path, redis_url: str
) -> None:
    from relaybus.eventstore import open_store

    settings = system_settings(tmp_path, "amqp://guest:s3cret-pw@127.0.0.1:1//", redis_url)
    open_store(settings.eventstore_url).close()  # an empty log: `relaybus web` refuses to create one
    with console(settings, tmp_path) as base:
        page = httpx.get(f"{base}/queues", headers={"authorization": f"Bearer {TOKEN}"}, timeout=60)
        assert page.status_code == 503, page.text
        assert "did not answer" in page.text and "s3cret-pw" not in page.text and "Traceback" not in page.text
        # The event log still answers: the workflow list does not need the broker.
        assert httpx.get(f"{base}/workflows", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
