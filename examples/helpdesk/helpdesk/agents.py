"""The helpdesk's agents. Decisions are plain Python (stable, testable); the LLM writes text only."""

from __future__ import annotations

import logging
import re

from relaybus import AgentContext, PermanentError, agent, complete, publish

from helpdesk.models import Answer, Category, Question, Reply, ReplyRequest, Ticket, TicketClassified, Triage

logger = logging.getLogger(__name__)

#: First match wins: an outage outranks everything else in the same ticket.
CATEGORY_WORDS: dict[Category, tuple[str, ...]] = {
    "outage": ("outage", "is down", "unreachable", "503", "not loading"),
    "billing": ("invoice", "charged", "refund", "payment", "billing"),
    "account": ("password", "log in", "login", "2fa", "account"),
    "technical": ("error", "api", "crash", "bug", "timeout"),
}

#: The knowledge base: article id -> (words that select it, what it says).
ARTICLES: dict[str, tuple[tuple[str, ...], str]] = {
    "kb-billing-double-charge": (
        ("charged twice", "double", "duplicate charge"),
        "A second charge in the same month is a card authorisation. It is released within five days.",
    ),
    "kb-billing-refund": (
        ("refund",),
        "Refunds go back to the card that paid. They take five to ten business days.",
    ),
    "kb-account-password": (
        ("password", "reset"),
        "Open Settings, then Security, and choose Reset password. The link is valid for one hour.",
    ),
    "kb-technical-api-limits": (
        ("api", "rate limit", "429"),
        "The API allows 100 requests per minute per key. A 429 answer says when to try again.",
    ),
}


def categorise(text: str) -> Category:
    lowered = text.lower()
    for category, words in CATEGORY_WORDS.items():
        if any(word in lowered for word in words):
            return category
    return "general"


def questions_in(text: str) -> list[str]:
    """The sentences that end with a question mark, in order."""
    return [s.strip() for s in re.findall(r"[^.!?]*\?", text) if s.strip()]


def article_for(question: str) -> str | None:
    lowered = question.lower()
    return next((key for key, (words, _) in ARTICLES.items() if any(w in lowered for w in words)), None)


@agent("classifier", input=Ticket, output=Triage)
def classify(ticket: Ticket, ctx: AgentContext) -> Triage:
    category = categorise(f"{ticket.subject}. {ticket.body}")
    questions = questions_in(ticket.body)
    publish(TicketClassified(ticket_id=ticket.ticket_id, category=category, questions=len(questions)))
    if category == "outage":
        # Permanent: retrying will not make an outage a question the bot should answer.
        raise PermanentError(f"ticket {ticket.ticket_id} reports an outage: escalated to the on-call engineer")
    summary = complete(ctx.llm, system="You are the classifier agent. Summarise the ticket.", user=ticket.body)
    return Triage(ticket_id=ticket.ticket_id, category=category, questions=questions, summary=summary.text)


@agent("answerer", input=Question, output=Answer)
def answer(question: Question, ctx: AgentContext) -> Answer:
    article = article_for(question.question)
    if article is None:
        return Answer(index=question.index, question=question.question,
                      answer="A support engineer will follow up on this question.")
    _, text = ARTICLES[article]
    reply = complete(ctx.llm, system="You are the answerer agent. Answer from the article.", user=text)
    return Answer(index=question.index, question=question.question, answer=reply.text, article=article)


@agent("composer", input=ReplyRequest, output=Reply)
def compose(request: ReplyRequest, ctx: AgentContext) -> Reply:
    answers = sorted(request.answers, key=lambda a: a.index)
    parts = [f"Hello {request.customer},", "Thank you for writing to us."]
    parts += [f"> {a.question}\n{a.answer}" for a in answers]
    if not answers:
        parts.append("A support engineer will read your message and reply today.")
    parts.append(f"Kind regards,\nSupport (ticket {request.ticket_id})")
    return Reply(
        ticket_id=request.ticket_id,
        category=request.category,
        reply="\n\n".join(parts),
        articles=[a.article for a in answers if a.article],
    )


def tag_ticket(event: TicketClassified, ctx: AgentContext) -> None:
    """Subscribed in helpdesk.pipeline: where a real helpdesk would tag the ticket through its API."""
    logger.info("ticket %s tagged %s (%d questions)", event.ticket_id, event.category, event.questions)
