"""Flower against the real broker: it sees our worker and our agent tasks, and only with credentials.

Flower runs as a real subprocess, started the way an operator starts it (``celery -A relaybus flower``),
with the test's settings in its environment. The machine's RabbitMQ has no management plugin, so the
queue-length API (``/api/queues/length``) is not tested here.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import celery_headers, raw_publish, wait_for
from tests.integration.flower import PASSWORD, USER, Flower

pytestmark = pytest.mark.integration

def test_flower_lists_our_worker_and_agent_tasks_through_its_api_and_refuses_requests_without_credentials(
    app, start_worker, flower
):
    worker = start_worker("probe")
    hostname = f"{worker.name}@{socket.gethostname()}"

    # Flower hears about workers from their events (heartbeats) and asks them over remote control;
    # task events only reach it once its event receiver listens, which the heartbeat proves.
    wait_for(lambda: flower.get("/api/workers", status=1).get(hostname), 60, 0.5, f"Flower to see {hostname} alive")

    def listed() -> dict[str, Any] | None:
        workers: dict[str, Any] = flower.get("/api/workers", refresh=1)  # asks the workers (inspect)
        return workers if hostname in workers else None

    workers = wait_for(listed, 60, 0.5, f"{hostname} in /api/workers")
    consumed = {q["name"] for q in workers[hostname].get("active_queues", [])}
    namespace = app.conf.relaybus_runtime.namespace
    assert f"{namespace}.probe" in consumed

    key = f"test:{uuid.uuid4().hex}"
    results = [app.tasks["agents.probe"].apply_async(kwargs={"key": key, "label": f"flower-{i}"}) for i in range(3)]
    for result in results:
        assert result.get(timeout=60)["label"].startswith("flower-")
    ids = {r.id for r in results}

    def our_tasks() -> dict[str, Any]:
        tasks: dict[str, Any] = flower.get("/api/tasks", taskname="agents.probe", limit=1000)
        seen = {tid: t for tid, t in tasks.items() if tid in ids}
        done = len(seen) == len(ids) and all(t["state"] == "SUCCESS" for t in seen.values())
        return seen if done else {}

    tasks = wait_for(our_tasks, 60, 0.5, "Flower to show our three probe tasks as SUCCESS")
    assert {t["name"] for t in tasks.values()} == {"agents.probe"}
    assert {t["worker"] for t in tasks.values()} == {hostname}
    assert "agents.probe" in flower.get("/api/task/types")["task-types"]

    # A task dead-lettered says so in Flower: its exception names the dead-letter queue and the reason, then the
    # error (input that cannot validate: dead-lettered at once, never retried).
    bad = celery_headers("agents.probe")
    body = json.dumps([[], {"key": 12345}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    raw_publish(app, f"{namespace}.probe", body, content_type="application/json", headers=bad)

    def failed() -> dict[str, Any] | None:
        task = flower.get("/api/tasks", taskname="agents.probe", limit=1000).get(bad["id"])
        return task if task and task.get("state") == "FAILURE" else None

    shown = wait_for(failed, 60, 0.5, "Flower to show the bad probe task as FAILURE")
    assert shown["exception"].startswith(f"dead-lettered to {namespace}.probe.dlq: "), shown["exception"]
    assert "InvalidInput" in shown["exception"], shown["exception"]
    print(f"\nFlower's exception of a dead-lettered task: {shown['exception'][:160]}")

    for path in ("/api/workers", "/api/tasks", "/api/task/types"):
        assert httpx.get(f"{flower.url}{path}", timeout=10).status_code == 401, path
        assert httpx.get(f"{flower.url}{path}", auth=(USER, "wrong"), timeout=10).status_code == 401, path


def test_flower_shows_a_pipeline_and_a_compensated_saga_each_as_one_task_tree(tmp_path, broker_url, redis_url):
    """Event hops (the bus re-sends an event as a new task) and a saga's steps and compensations, whoever sends
    them, join their workflow's tree: in Flower every task of the workflow has the same root, one of them."""
    from tests.integration.system import (
        REFERENCE_AGENTS,
        completed_pipeline_and_compensated_saga,
        running_system,
        system_settings,
        task_ids_of,
    )

    settings = system_settings(tmp_path, broker_url, redis_url)
    flower = Flower(settings, tmp_path).wait_ready()
    try:
        with running_system(settings, tmp_path, [(REFERENCE_AGENTS, 3)]) as system:
            node = f"{system.workers[0].name}@{socket.gethostname()}"
            wait_for(lambda: flower.get("/api/workers", status=1).get(node), 60, 0.5, "Flower to hear the worker")
            pipeline_id, saga_id = completed_pipeline_and_compensated_saga(system, "trees")
            workflows = {"pipeline": pipeline_id, "saga": saga_id}
            by_id = task_ids_of(system, [pipeline_id, saga_id], record="task.received")  # the failed step too
            task_ids = {kind: by_id[correlation] for kind, correlation in workflows.items()}
            assert len(task_ids["pipeline"]) >= 8 and len(task_ids["saga"]) >= 6, task_ids

            def all_seen() -> dict[str, Any] | None:
                tasks: dict[str, Any] = flower.get("/api/tasks", limit=10_000)
                wanted = set().union(*task_ids.values())
                return tasks if wanted <= set(tasks) else None

            tasks = wait_for(all_seen, 60, 0.5, "Flower to know every task of both workflows")
            for kind, ids in task_ids.items():
                roots = {tasks[t].get("root_id") for t in ids}
                assert len(roots) == 1, f"the {kind}'s tasks fall into {len(roots)} trees: {roots}"
                (root,) = roots
                assert root in ids, f"the {kind}'s root {root} is not one of its tasks"
                # The workflow's id is on every task's page (its kwargs), and Flower's search finds them all.
                correlation = workflows[kind]
                missing = {t: (tasks[t].get("name"), tasks[t].get("kwargs")) for t in ids
                           if correlation not in (tasks[t].get("kwargs") or "")}
                assert missing == {}, f"{kind}: {missing}"
                found: dict[str, Any] = flower.get("/api/tasks", search=correlation, limit=10_000)
                assert ids <= set(found), f"searching Flower for the {kind}'s id misses {ids - set(found)}"
            show_in_browser(flower, pipeline_id, task_ids["pipeline"], tmp_path)
    finally:
        flower.stop()


def show_in_browser(flower: Flower, correlation_id: str, task_ids: set[str], tmp_path: Path) -> None:
    """Flower's own tasks page in Chromium, searched for the workflow's id: every task of the workflow, and only
    those (screenshot to ``$RELAYBUS_WEB_SCREENSHOTS`` when set)."""
    from playwright.sync_api import sync_playwright

    from tests.services import require_chromium

    chromium = require_chromium()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        try:
            page = browser.new_context(http_credentials={"username": USER, "password": PASSWORD},
                                       viewport={"width": 1400, "height": 1000}).new_page()
            page.goto(f"{flower.url}/tasks")
            page.wait_for_selector("#tasks-table tbody tr", timeout=30_000)
            search = page.locator("input[type=search]").first
            search.fill(correlation_id)
            search.press("Enter")

            def listed() -> set[str]:
                texts = page.locator("#tasks-table tbody tr").all_inner_texts()
                return {t for t in task_ids if any(t in row for row in texts)}

            wait_for(lambda: listed() == task_ids, 30, 0.5, "Flower's tasks page to list the workflow's tasks")
            rows = page.locator("#tasks-table tbody tr").count()
            assert rows == len(task_ids), f"{rows} rows for {len(task_ids)} tasks"
            for folder in [tmp_path, *([Path(os.environ["RELAYBUS_WEB_SCREENSHOTS"])]
                                       if os.environ.get("RELAYBUS_WEB_SCREENSHOTS") else [])]:
                page.screenshot(path=str(Path(folder) / "flower-pipeline.png"), full_page=True)
        finally:
            browser.close()
