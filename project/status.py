"""Queue depths and consumers per agent and per event subscriber, read over AMQP with passive declares."""

from __future__ import annotations

import contextlib

from celery import Celery
from pydantic import BaseModel, ConfigDict

from relaybus.celery import topology_of


class QueueStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    #: "agent": an agent's task queue; "events": an event subscriber's queue on the bus.
    kind: str = "agent"
    agent: str
    queue: str
    depth: int | None
    consumers: int | None
    urgent_depth: int | None
    dead_letter_depth: int | None


def _declare_passive(app: Celery, queue: str) -> tuple[int, int] | None:
    with app.connection_for_read() as conn:
        channel = conn.channel()
        try:
            _, messages, consumers = channel.queue_declare(queue=queue, passive=True)
            return int(messages), int(consumers)
        except Exception:
            return None  # the queue does not exist (yet)
        finally:
            with contextlib.suppress(Exception):
                channel.close()


def queue_status(app: Celery) -> list[QueueStatus]:
    topology = topology_of(app)
    rows = []
    for agent in topology.agents:
        main = _declare_passive(app, topology.queue_name(agent))
        urgent = _declare_passive(app, topology.queue_name(agent, urgent=True)) if topology.urgent_queues else None
        dead = _declare_passive(app, topology.dlq_name(agent))
        rows.append(
            QueueStatus(
                agent=agent,
                queue=topology.queue_name(agent),
                depth=main[0] if main else None,
                consumers=main[1] if main else None,
                urgent_depth=urgent[0] if urgent else None,
                dead_letter_depth=dead[0] if dead else None,
            )
        )
    from relaybus.tasks.bus.bus import event_queue_name, subscribers

    app.finalize(auto=True)  # imports the modules that register subscribers (RELAYBUS_EXTRA_MODULES)
    for subscriber in subscribers():
        name = event_queue_name(topology.namespace, subscriber)
        events = _declare_passive(app, name)
        dead = _declare_passive(app, f"{name}.dlq")
        rows.append(
            QueueStatus(
                kind="events",
                agent=subscriber,
                queue=name,
                depth=events[0] if events else None,
                consumers=events[1] if events else None,
                urgent_depth=None,
                dead_letter_depth=dead[0] if dead else None,
            )
        )
    return rows
