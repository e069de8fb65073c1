"""The broker topology: one durable priority queue per agent, its dead-letter queue, the event exchange.

Names, for namespace ``agents`` and agent ``researcher``::

    exchange agents            direct   agents.researcher        -> queue agents.researcher
                                        agents.researcher.urgent -> queue agents.researcher.urgent (optional)
    exchange agents.dlx        direct   agents.researcher.dlq    -> queue agents.researcher.dlq
    exchange agents.events     topic    (the event bus; subscribers bind their own queues)
                                        research.* -> queue agents.auditor.events (tasks.bus)
    exchange agents.dlx        direct   agents.auditor.events.dlq -> queue agents.auditor.events.dlq

Celery's own exchanges are per namespace too, so deployments sharing a broker (and vhost) do not see each
other in Flower, ``celery inspect``/``control``, mingle or gossip::

    exchange agents.celeryev       topic    task and worker events (Flower, ``celery events``, gossip)
    exchange agents.pidbox         fanout   remote control (inspect, ping, revoke; mingle at start-up)
    exchange reply.agents.pidbox   direct   the replies to remote control

Workers declare only the queues they consume, and RabbitMQ silently drops a dead-lettered message
whose dead-letter exchange or queue does not exist, so :meth:`Topology.declare` creates everything up
front (and the bus declares its subscribers' queues). :meth:`Topology.delete` removes all of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kombu import Connection, Exchange, Queue

from relaybus.settings import MAX_PRIORITY

AGENT_TASK_PREFIX = "agents."


def agent_of(task_name: str) -> str | None:
    """The agent a task name belongs to: ``agents.writer`` and ``agents.writer.discard_draft`` ->
    ``writer`` (an agent may own several tasks; they all run on its queue)."""
    if task_name.startswith(AGENT_TASK_PREFIX):
        return task_name[len(AGENT_TASK_PREFIX) :].split(".", 1)[0] or None
    return None


@dataclass(frozen=True)
class Topology:
    namespace: str
    agents: tuple[str, ...]
    urgent_queues: bool = False

    @property
    def exchange(self) -> Exchange:
        return Exchange(self.namespace, type="direct", durable=True)

    @property
    def dead_letter_exchange(self) -> Exchange:
        return Exchange(f"{self.namespace}.dlx", type="direct", durable=True)

    @property
    def event_exchange(self) -> Exchange:
        return Exchange(f"{self.namespace}.events", type="topic", durable=True)

    @property
    def celery_event_exchange(self) -> str:
        """Celery's ``event_exchange`` (and ``event_queue_prefix``): task and worker events."""
        return f"{self.namespace}.celeryev"

    @property
    def control_exchange(self) -> str:
        """Celery's ``control_exchange``: kombu names its exchanges ``<it>.pidbox`` and ``reply.<it>.pidbox``."""
        return self.namespace

    @property
    def celery_exchanges(self) -> tuple[str, ...]:
        """The exchanges Celery declares for this namespace (events, remote control and its replies)."""
        return (self.celery_event_exchange, f"{self.control_exchange}.pidbox", f"reply.{self.control_exchange}.pidbox")

    def queue_name(self, agent: str, *, urgent: bool = False) -> str:
        return f"{self.namespace}.{agent}.urgent" if urgent else f"{self.namespace}.{agent}"

    def dlq_name(self, agent: str) -> str:
        return f"{self.namespace}.{agent}.dlq"

    def agent_queue(self, agent: str, *, urgent: bool = False) -> Queue:
        name = self.queue_name(agent, urgent=urgent)
        return Queue(
            name,
            exchange=self.exchange,
            routing_key=name,
            durable=True,
            queue_arguments={
                # Classic queue: RabbitMQ 3.10 gives message priorities to classic queues only.
                "x-max-priority": MAX_PRIORITY,
                # A message rejected without requeue (unknown task, undecodable body) is kept, not lost.
                "x-dead-letter-exchange": self.dead_letter_exchange.name,
                "x-dead-letter-routing-key": self.dlq_name(agent),
            },
        )

    def dead_letter_queue(self, agent: str) -> Queue:
        name = self.dlq_name(agent)
        return Queue(name, exchange=self.dead_letter_exchange, routing_key=name, durable=True)

    def queues_for(self, agents: Iterable[str]) -> list[Queue]:
        queues: list[Queue] = []
        for agent in agents:
            queues.append(self.agent_queue(agent))
            if self.urgent_queues:
                queues.append(self.agent_queue(agent, urgent=True))
        return queues

    def all_queues(self) -> list[Queue]:
        return self.queues_for(self.agents) + [self.dead_letter_queue(a) for a in self.agents]

    def agent_of_queue(self, queue: str) -> str | None:
        prefix = f"{self.namespace}."
        if not queue.startswith(prefix):
            return None
        rest = queue[len(prefix) :]
        for suffix in (".urgent", ".dlq"):
            if rest.endswith(suffix):
                rest = rest[: -len(suffix)]
        return rest if rest in self.agents else None

    def declare(self, connection: Connection, agents: Iterable[str] | None = None) -> None:
        """Declare exchanges, agent queues and dead-letter queues (idempotent)."""
        wanted = tuple(agents) if agents is not None else self.agents
        channel = connection.default_channel
        for exchange in (self.exchange, self.dead_letter_exchange, self.event_exchange):
            exchange(channel).declare()
        for queue in self.queues_for(wanted) + [self.dead_letter_queue(a) for a in wanted]:
            queue(channel).declare()

    def delete(self, connection: Connection) -> None:
        """Delete every queue and exchange of the namespace, with the messages they hold.

        That is each agent's queue, urgent queue and dead-letter queue, the event queue and its
        dead-letter queue the bus declares for an agent or a subscriber registered in this process, the
        three exchanges, and Celery's event and remote-control exchanges of the namespace (call it once the
        namespace's workers have stopped). Ones that do not exist are skipped: urgent queues need not be
        switched on, nor every agent subscribe.
        """
        # The bus names them; a late import keeps this module light.
        from relaybus.tasks.bus.bus import event_queue_name, subscribers

        queues = []
        for agent in self.agents:
            queues += [self.queue_name(agent), self.queue_name(agent, urgent=True), self.dlq_name(agent)]
        # Subscribers registered in this process too: the bus declares their queues whether or not they are
        # among the topology's agents (``declare_subscriptions`` takes the registry).
        for subscriber in dict.fromkeys((*self.agents, *subscribers())):
            events = event_queue_name(self.namespace, subscriber)
            queues += [events, f"{events}.dlq"]
        exchanges = [self.exchange.name, self.dead_letter_exchange.name, self.event_exchange.name,
                     *self.celery_exchanges]
        channel = connection.channel()
        try:
            for delete, names in (("queue_delete", queues), ("exchange_delete", exchanges)):
                for name in names:
                    try:
                        getattr(channel, delete)(name)
                    except connection.channel_errors:
                        # A refused delete (a queue another connection holds exclusively; a missing one on
                        # an older RabbitMQ) closes the channel.
                        channel = connection.channel()
        finally:
            channel.close()
