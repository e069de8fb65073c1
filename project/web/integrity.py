"""The integrity page: the last ``verify`` (what it covered, when, by whom) and the last checkpoint, read from
the log's own records (:mod:`eventstore.verifications`); "verify now" checks the whole log and records it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from relaybus.eventstore import EventStore, VerifyReport, verifications

Render = Callable[..., Response]


def routes(store: EventStore, render: Render) -> list[Route]:
    def page(request: Request) -> Response:
        last = verifications.last_verification(store)
        checkpoint = verifications.last_checkpoint_check(store)
        head = store.last_position()
        behind = head - last.position if last is not None and last.position is not None else None
        return render(request, "integrity.html", last=last, checkpoint=checkpoint, head=head,
                      since_verified=behind, message=request.query_params.get("done"))

    async def verify_now(request: Request) -> Response:
        """Check every link, chain and position now (a whole pass over the log), and record the outcome."""

        def run() -> Any:
            started = time.monotonic()
            report = store.verify()
            store.append([verifications.verified_event(report, duration_s=time.monotonic() - started,
                                                       by="console")])
            return report

        report = await run_in_threadpool(run)
        ok = f"verified {report.events_checked} events: all chains hold"
        done = ok if report.ok else f"BROKEN: {_problem(report)}"
        return RedirectResponse("/integrity?" + urlencode({"done": done}), status_code=303)

    return [Route("/integrity", page), Route("/integrity/verify", verify_now, methods=["POST"])]


def _problem(report: VerifyReport) -> str:
    if report.first_broken is not None:
        return report.first_broken.describe()
    if report.payload_problems:
        return report.payload_problems[0].describe()
    return "the log does not verify"
