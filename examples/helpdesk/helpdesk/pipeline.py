"""The helpdesk pipeline: classify, answer every question in parallel, compose one reply.

::

    pipelines.helpdesk -> classifier -> answerer x N ==fan-in==> composer -> pipeline.completed (the Reply)
                              |
                              +-- ticket.classified --> notifier (tag the ticket)

A ticket about an outage fails at the classifier (PermanentError): the pipeline ends ``failed`` with
a reason naming the step, and the ticket's message waits in the classifier's dead-letter queue.
"""

from __future__ import annotations

from typing import Any

from relaybus import Pipeline, StepInput

from helpdesk.agents import answer, classify, compose, tag_ticket
from helpdesk.models import Ticket, TicketClassified

helpdesk = Pipeline("helpdesk", input=Ticket, description="Triage a support ticket and draft the reply")

helpdesk.step(classify)


def one_per_question(s: StepInput[Ticket]) -> list[dict[str, Any]]:
    triage = s.prev or {}  # the classifier's output, as a dict
    return [
        {"ticket_id": s.run.ticket_id, "category": triage["category"], "index": i, "question": q}
        for i, q in enumerate(triage["questions"])
    ]


helpdesk.fan_out(
    answer,
    each=one_per_question,
    into=compose,
    into_input=lambda s: {
        "ticket_id": s.run.ticket_id,
        "customer": s.run.customer,
        "category": (s.prev or {})["category"],
    },
    results="answers",
)

helpdesk.on(TicketClassified, agent="notifier")(tag_ticket)
