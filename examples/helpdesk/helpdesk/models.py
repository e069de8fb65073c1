"""What crosses the broker: frozen models for every agent's input and output, and one event."""

from __future__ import annotations

from typing import ClassVar, Literal

from relaybus import AgentModel, Event

Category = Literal["outage", "billing", "account", "technical", "general"]


class Ticket(AgentModel):
    """The pipeline's input: a ticket as the helpdesk received it."""

    ticket_id: str
    customer: str
    subject: str
    body: str


class Triage(AgentModel):
    """The classifier's output: the ticket's category and the questions the customer asked."""

    ticket_id: str
    category: Category
    questions: list[str]
    summary: str


class Question(AgentModel):
    """One answerer call: a question of the ticket."""

    ticket_id: str
    category: Category
    index: int
    question: str


class Answer(AgentModel):
    index: int
    question: str
    answer: str
    article: str | None = None


class ReplyRequest(AgentModel):
    """The composer's input: the ticket, and every answer (the fan-out's results)."""

    ticket_id: str
    customer: str
    category: Category
    answers: list[Answer]


class Reply(AgentModel):
    """The pipeline's output."""

    ticket_id: str
    category: Category
    reply: str
    articles: list[str]


class TicketClassified(Event):
    """A fact anyone may react to: a ticket was classified."""

    type: ClassVar[str] = "ticket.classified"
    version: ClassVar[int] = 1

    ticket_id: str
    category: Category
    questions: int
