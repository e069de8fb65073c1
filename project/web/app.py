"""The Starlette app: routes, templates, and the services it reads (given, never opened at import)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from celery import Celery
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from relaybus.eventstore import EventStore
from relaybus.eventstore.redaction import mask_url_passwords
from relaybus.eventstore.usage import spending_summary
from relaybus.web import integrity, metrics, pages
from relaybus.web.auth import CSRF_FIELD, SESSION_COOKIE, SESSION_S, Guard, WebAuth, csrf_token
from relaybus.web.counting import Counters

TEMPLATES = Path(__file__).parent / "templates"
STATUSES = ("running", "succeeded", "cancelled", "completed", "failed", "timed_out", "compensating", "compensated",
            "compensation_failed")
STATS_HOURS = (0.25, 1.0, 24.0, 168.0)


class Console:
    """The services the pages read, shared by every request."""

    def __init__(self, app: Celery, store: EventStore, auth: WebAuth) -> None:
        self.app, self.store, self.auth = app, store, auth
        self.redactor = _redactor(app)
        self.counters = Counters(store)  # /metrics' running totals (relaybus.web.counting)
        # AMQP work one at a time: requeue and purge walk a queue message by message.
        self.amqp = threading.Lock()

    def queues(self) -> list[Any]:
        from relaybus.status import queue_status

        with self.amqp:
            return list(queue_status(self.app))


def _redactor(app: Celery) -> Any:
    from relaybus.tasks.runtime.redacting import redactor_of

    return redactor_of(app)


def create_web_app(app: Celery, store: EventStore, auth: WebAuth) -> Starlette:
    """The console on ``app`` (its broker, namespace and agents) and ``store`` (its event log)."""
    console = Console(app, store, auth)
    templates = Jinja2Templates(directory=str(TEMPLATES))  # autoescapes .html
    templates.env.globals.update(
        read_only=auth.read_only, csrf_field=CSRF_FIELD, namespace=app.conf.task_default_exchange or "",
        eventstore=mask_url_passwords(str(store.engine.url.render_as_string(hide_password=True))),
    )

    def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
        return templates.TemplateResponse(request, template, {"csrf": csrf_token(request), **context},
                                          status_code=status_code)

    def workflows(request: Request) -> Response:
        started = time.perf_counter()
        params = request.query_params
        status = params.get("status") or None
        if status is not None and status not in STATUSES:
            return PlainTextResponse(f"unknown status {status!r}", 400)
        try:
            filters = pages.Filters(status=status, query=(params.get("q") or "").strip() or None,
                                    name=(params.get("name") or "").strip() or None,
                                    since=pages.parse_time(params.get("since"), "since"),
                                    until=pages.parse_time(params.get("until"), "until"))
        except ValueError as error:
            return PlainTextResponse(str(error), 400)
        before_text = params.get("before")
        before = int(before_text) if before_text and before_text.isdigit() else None
        rows, more = pages.workflow_rows(store, filters, before=before, now=pages.utcnow())
        kept = {k: params.get(k) for k in ("status", "name", "since", "until") if params.get(k)}
        next_url = "/workflows?" + urlencode({**kept, "before": more}) if more is not None else None
        names = store.projection.names()
        elapsed_ms = (time.perf_counter() - started) * 1000
        response = render(request, "workflows.html", rows=rows, filters=filters, form=params,
                          names=names, statuses=STATUSES, next_url=next_url,
                          first_url="/workflows?" + urlencode(kept), elapsed_ms=elapsed_ms,
                          first_page=before is None)
        response.headers["Server-Timing"] = f"db;dur={elapsed_ms:.1f}"
        return response

    def workflow(request: Request) -> Response:
        correlation_id = request.path_params["correlation_id"]
        timeline = store.timeline(correlation_id)
        if not timeline.events:
            return render(request, "missing.html", status_code=404, what=f"workflow {correlation_id}")
        bars, span = pages.chart(timeline.steps)
        kind, name = pages._kind_and_name(next((e for e in timeline.events if e.type in pages.OPENERS), None))
        saga = pages.saga_of(app, timeline.events) if kind == "saga" else None
        events = [(e, pages.preview(console.redactor, e.payload)) for e in timeline.events]
        return render(request, "workflow.html", timeline=timeline, bars=bars, span=span, kind=kind, name=name,
                      saga=saga, events=events, failures=pages.failure_reasons(timeline.events, console.redactor),
                      llm=pages.llm_calls(timeline.events), spending=spending_summary(timeline.events),
                      task_names=pages.task_names(timeline.events),
                      message=request.query_params.get("done"),
                      redrivable=kind == "pipeline" and bool(timeline.steps))

    async def redrive_action(request: Request) -> Response:
        """Run a recorded pipeline again from one of its steps, under a new correlation id (``relaybus replay
        redrive``); the new run's page follows."""
        from relaybus.replay import RedriveError, redrive

        form = await request.form()
        original, from_step = str(form.get("correlation_id") or ""), str(form.get("from_step") or "")
        deterministic = form.get("deterministic") == "on"
        try:
            result = await run_in_threadpool(lambda: redrive(app, store, original, from_step,
                                                             deterministic=deterministic))
        except RedriveError as error:
            return PlainTextResponse(str(error), 400)
        done = f"re-driven from {result.step} (replay of {original})"
        return RedirectResponse(f"/workflows/{result.correlation_id}?" + urlencode({"done": done}), status_code=303)

    async def resume_action(request: Request) -> Response:
        """Retry the failed compensations of a ``compensation_failed`` saga (``relaybus saga resume``)."""
        from relaybus.sagas import InvalidTransition, SagaNotFound
        from relaybus.tasks.saga import resume_saga

        form = await request.form()
        saga_id = str(form.get("saga_id") or "")
        try:
            view = await run_in_threadpool(lambda: resume_saga(saga_id, app=app))
        except (SagaNotFound, InvalidTransition) as error:
            return PlainTextResponse(f"saga {saga_id!r} cannot be resumed: {error}", 409)
        done = f"resumed: compensation round {view.round}"
        return RedirectResponse(f"/workflows/{view.correlation_id}?" + urlencode({"done": done}), status_code=303)

    def dead_letters(request: Request) -> Response:
        from relaybus.dlq import peek

        with console.amqp:
            letters = peek(app, limit=500)
        return render(request, "dlq.html", letters=letters, message=request.query_params.get("done"))

    async def dlq_action(request: Request) -> Response:
        from relaybus.dlq import purge, requeue

        action = request.path_params["action"]
        form = await request.form()
        task_id = str(form.get("task_id") or "") or None

        def act() -> int:
            with console.amqp:
                if action == "requeue":
                    return len(requeue(app, task_id=task_id))
                return int(purge(app, task_id=task_id))

        if action not in ("requeue", "purge"):
            return PlainTextResponse("unknown action", 404)
        count = await run_in_threadpool(act)
        verb = "requeued" if action == "requeue" else "purged"
        return RedirectResponse("/dlq?" + urlencode({"done": f"{verb} {count}"}), status_code=303)

    def queues(request: Request) -> Response:
        rows = console.queues()
        template = "queues_table.html" if request.headers.get("x-fragment") else "queues.html"
        return render(request, template, queues=rows)

    def agents(request: Request) -> Response:
        hours = float(request.query_params.get("hours") or 1.0)
        if hours not in STATS_HOURS:
            return PlainTextResponse(f"hours must be one of {STATS_HOURS}", 400)
        stats = store.agent_stats(since=pages.stats_window(hours, pages.utcnow()))
        return render(request, "agents.html", stats=stats, hours=hours, choices=STATS_HOURS)

    def metrics_page(request: Request) -> Response:
        body = metrics.exposition(console.queues, store, console.counters)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def login(request: Request) -> Response:
        target = request.query_params.get("next") or "/workflows"
        if not target.startswith("/") or target.startswith("//"):
            target = "/workflows"
        if request.method == "GET":
            return render(request, "login.html", next=target, error=None, basic=bool(auth.basic_user))
        form = await request.form()
        ok = auth.accepts_login(str(form.get("token") or ""), str(form.get("user") or ""),
                                str(form.get("password") or ""))
        if not ok:
            return render(request, "login.html", status_code=401, next=target, error="wrong credentials",
                          basic=bool(auth.basic_user))
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(SESSION_COOKIE, auth.session_cookie(), max_age=SESSION_S, httponly=True,
                            samesite="strict", secure=request.url.scheme == "https", path="/")
        return response

    def approvals(request: Request) -> Response:
        pending = store.approvals.find(status="pending", limit=500)
        decided = [a for a in store.approvals.find(limit=100) if a.status != "pending"][:50]
        return render(request, "approvals.html", pending=pending, decided=decided, basic_user=auth.basic_user,
                      message=request.query_params.get("done"), error=request.query_params.get("error"))

    async def approval_action(request: Request) -> Response:
        """Approve or reject (``relaybus approvals approve|reject``): as the basic-auth user, or the name typed."""
        from relaybus.tasks.approvals import approve, reject
        from relaybus.tasks.errors import ApprovalError

        action, approval_id = request.path_params["action"], request.path_params["approval_id"]
        if action not in ("approve", "reject"):
            return PlainTextResponse("unknown action", 404)
        form = await request.form()
        by = auth.basic_user or str(form.get("by") or "").strip()
        reason = str(form.get("reason") or "").strip() or None
        decide = approve if action == "approve" else reject
        try:
            done = await run_in_threadpool(lambda: decide(approval_id, by=by, reason=reason, app=app))
        except ApprovalError as error:
            return RedirectResponse("/approvals?" + urlencode({"error": str(error)}), status_code=303)
        return RedirectResponse("/approvals?" + urlencode({"done": f"{done.id} {done.status} by {done.decided_by}"}),
                                status_code=303)

    def home(request: Request) -> Response:
        return RedirectResponse("/workflows", status_code=303)

    routes = [
        Route("/", home),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/workflows", workflows),
        Route("/workflows/{correlation_id:path}", workflow),
        Route("/dlq", dead_letters),
        Route("/dlq/{action}", dlq_action, methods=["POST"]),
        Route("/actions/redrive", redrive_action, methods=["POST"]),
        Route("/actions/resume", resume_action, methods=["POST"]),
        Route("/queues", queues),
        Route("/agents", agents),
        Route("/approvals", approvals),
        Route("/approvals/{approval_id}/{action}", approval_action, methods=["POST"]),
        Route("/metrics", metrics_page),
        *integrity.routes(store, render),
    ]
    def unavailable(request: Request, exc: Exception) -> Response:
        # A broker or an event log that does not answer is said in one line (password masked), not a traceback.
        message = mask_url_passwords(console.redactor.redact_text(f"{type(exc).__name__}: {exc}"))
        return render(request, "missing.html", status_code=503, what=None, error=message)

    web = Starlette(routes=routes, middleware=[Middleware(Guard, auth=auth)],
                    exception_handlers={Exception: unavailable})
    web.state.console = console
    return web
