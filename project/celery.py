"""The Celery app: ``celery -A relaybus worker -Q agents.<name>`` starts a worker for one agent."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from amqp.exceptions import ConnectionError as AMQPConnectionError
from celery import Celery, signals
from celery.app.amqp import AMQP
from celery.exceptions import Reject
from kombu import Queue
from kombu.exceptions import OperationalError as BrokerOperationalError

from relaybus.broker import publish_deadline, transport_for
from relaybus.logs import connect as connect_json_logs
from relaybus.settings import MAX_PRIORITY, PRIORITY_LEVELS, Settings, get_settings
from relaybus.tasks.bus.bus import subscriber_of
from relaybus.tasks.bus.consumer import EventDelivery
from relaybus.tasks.errors import BrokerUnreachable, PublishFailed
from relaybus.tasks.llm import BudgetPolicy, PriceTable, RateLimits
from relaybus.tasks.runtime.claimcheck import offload_message
from relaybus.tasks.runtime.config import RuntimeConfig, runtime_config
from relaybus.tasks.runtime.context import continuing
from relaybus.tasks.runtime.tracebacks import install as lean_tracebacks
from relaybus.topology import Topology, agent_of
from relaybus.tracing import connect as connect_tracing

#: The result backend class for redis:// and rediss:// URLs.
REDIS_BACKEND = "relaybus.tasks.runtime.chords:RedisBackend"
#: The result backend class for db+... URLs (the embedded mode's SQLite): Celery's, redacting what it stores.
DATABASE_BACKEND = "relaybus.tasks.runtime.results:DatabaseBackend"

#: Agent modules loaded by name when the app finalizes; never imported at import time.
BUILTIN_MODULES = (
    "relaybus.tasks.pipelines.outcomes",
    "relaybus.tasks.pipelines.deadline",
    "relaybus.tasks.agents.pipeline",
    "relaybus.tasks.saga.orchestration",
    "relaybus.tasks.saga.approval",
    "relaybus.tasks.agents.content_saga",
)
#: Agents that ship with relaybus: the reference pipeline and the reference saga's steps.
BUILTIN_AGENTS = (
    "system",  # relaybus's own tasks (saga orchestration, maintenance) and anything unrouted
    "intake",
    "planner",
    "researcher",
    "writer",
    "reviewer",
    "publisher",
)


def runtime_from(settings: Settings) -> RuntimeConfig:
    return RuntimeConfig(
        namespace=settings.namespace,
        urgent_queues=settings.urgent_queues,
        priority_levels=dict(PRIORITY_LEVELS),
        default_priority=settings.default_priority,
        max_retries=settings.max_retries,
        retry_backoff_s=settings.retry_backoff_s,
        retry_backoff_max_s=settings.retry_backoff_max_s,
        retry_jitter=settings.retry_jitter,
        soft_time_limit_s=settings.soft_time_limit_s,
        time_limit_s=settings.time_limit_s,
        max_payload_bytes=settings.max_payload_bytes,
        max_message_bytes=settings.max_message_bytes,
        eventstore_url=settings.eventstore_url,
        record_events=settings.record_events,
        group_commit=settings.group_commit,
        events_batch_s=settings.events_batch_s,
        redact_keys=settings.redact_keys,
        redact_patterns=settings.redact_patterns,
        max_event_payload_bytes=settings.max_event_payload_bytes,
        payload_inline_max_bytes=min(settings.payload_inline_max_bytes, settings.max_payload_bytes),
        chain_key_file=settings.chain_key_file,
        eventstore_prepare=settings.eventstore_prepare,
        pipeline_deadline_s=settings.pipeline_deadline_s,
        consumer_timeout_s=settings.consumer_timeout_s,
        publish_timeout_s=settings.publish_timeout_s,
        max_redeliveries=settings.max_redeliveries,
        llm=settings.llm_config(),
        approver_roles=dict(settings.approver_roles),
        rate_limits=RateLimits(
            limits=dict(settings.llm_rate_limits),
            redis_url=settings.rate_limit_redis_url,
            namespace=settings.namespace,
            urgent_priority=PRIORITY_LEVELS[settings.llm_rate_limit_urgent_priority],
            urgent_reserve=settings.llm_rate_limit_urgent_reserve,
            completion_tokens=settings.llm_rate_limit_completion_tokens,
            fail_open=settings.llm_rate_limit_fail_open,
        ),
        budgets=BudgetPolicy(
            prices=PriceTable(prices=dict(settings.llm_prices), currency=settings.llm_price_currency),
            completion_tokens=settings.llm_rate_limit_completion_tokens,
            redis_url=settings.budget_redis_url,
            namespace=settings.namespace,
        ),
    )


def topology_from(settings: Settings) -> Topology:
    agents = tuple(dict.fromkeys(BUILTIN_AGENTS + settings.extra_agents))
    return Topology(settings.namespace, agents, settings.urgent_queues)


class AgentRouter:
    """Routes ``agents.<name>`` and the event handlers ``events.<name>.*`` to ``<namespace>.<name>``
    (or its urgent queue for urgent work)."""

    def __init__(self, topology: Topology, urgent_level: int) -> None:
        self.topology = topology
        self.urgent_level = urgent_level
        #: Each agent's queue, built once (a kombu Queue and its exchanges took 13 us a publish); bounded, as task
        #: names sent by name can be anything. Read only: kombu binds and declares copies.
        self._queues: dict[tuple[str, bool], Queue] = {}

    def __call__(self, name: str, args: Any, kwargs: Any, options: dict[str, Any], task: Any = None, **kw: Any) -> Any:
        agent = agent_of(name) or subscriber_of(name)
        if agent is None:
            return None
        priority = options.get("priority")
        urgent = bool(
            self.topology.urgent_queues and isinstance(priority, int) and priority >= self.urgent_level
        )
        queue = self._queues.get((agent, urgent))
        if queue is None:
            queue = self.topology.agent_queue(agent, urgent=urgent)
            if len(self._queues) < ROUTED_QUEUES_KEPT:
                self._queues[(agent, urgent)] = queue
        return {"queue": queue}


#: How many agents' queues a router keeps built.
ROUTED_QUEUES_KEPT = 1024


#: The app whose producer is publishing right now (set around every task message it sends).
_PUBLISHING_APP: ContextVar[Celery | None] = ContextVar("relaybus_publishing_app", default=None)


class PublishingAMQP(AMQP):  # type: ignore[misc]
    """Celery's AMQP with the publishing app made known to the ``before_task_publish`` handlers, and a
    bounded wait for the broker.

    Every task message's large values are stored by reference as it is built (:meth:`as_task_v2`).

    Celery's ``current_app`` is per thread: in a thread that did not create the app (a Django
    request thread, a thread pool) it is Celery's unconfigured fallback app, and the handlers
    would record ``task.sent`` for the wrong app, or not at all.

    Each task message, its reconnections included, waits ``publish_timeout_s`` at most for the broker
    (``relaybus.broker``), then raises :class:`~tasks.errors.PublishTimeout` (blocked or silent broker)
    or :class:`~tasks.errors.BrokerUnreachable` (no connection), to ``apply_async`` and ``start`` alike.
    """

    def as_task_v2(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's task message, with its large values stored by reference before anything sees the body
        (the ``before_task_publish`` handlers record and show what is published; tasks.runtime.claimcheck).

        Celery's own ``argsrepr``/``kwargsrepr`` (a saferepr of the arguments) are not built: the redaction handler
        rebuilds both from the body as the message is published (tasks.runtime.redacting), and saferepr cost about
        1 ms of profiled CPU per send, on every step of every workflow."""
        for shown in ("argsrepr", "kwargsrepr"):
            if kwargs.get(shown) is None:
                kwargs[shown] = ""
        message = super().as_task_v2(*args, **kwargs)
        body = message.body
        offloaded = offload_message(self.app, *body)
        if any(a is not b for a, b in zip(offloaded, body, strict=True)):
            message = message._replace(body=offloaded)
        return message

    def _create_task_sender(self) -> Callable[..., Any]:
        send: Callable[..., Any] = super()._create_task_sender()
        app = self.app

        def send_task_message(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get("declare") is None and _declared(args[0] if args else kwargs.get("producer"),
                                                           kwargs.get("queue")):
                # Celery declares the message's queue at every publish; kombu finds it in the connection's
                # cache, but only after binding a copy of it and its exchanges under a retry wrapper (24 us).
                kwargs["declare"] = []
            token = _PUBLISHING_APP.set(app)
            try:
                try:
                    with publish_deadline(runtime_config(app).publish_timeout_s):
                        return send(*args, **kwargs)
                except BrokerOperationalError as exc:
                    if isinstance(exc, PublishFailed):
                        raise
                    producer = args[0] if args else kwargs.get("producer")
                    address = getattr(getattr(producer, "connection", None), "host", None) or "the broker"
                    cause = str(exc)
                    if isinstance(exc.__cause__, TimeoutError):  # connected, but no answer to the handshake
                        cause = f"no answer within the connect timeout ({cause}): is it stopped or overloaded?"
                    raise BrokerUnreachable(str(address), cause) from exc
            except (BrokerOperationalError, OSError, AMQPConnectionError) as failed:  # PublishFailed among them
                if continuing():
                    # What follows a task that returned (its chain's next step, its callbacks) could not be
                    # sent: give the task's message back rather than fail a task that did its work.
                    raise Reject(f"the task's continuation could not be published, message requeued: {failed}",
                                 requeue=True) from failed
                raise
            finally:
                _PUBLISHING_APP.reset(token)

        return send_task_message


def _declared(producer: Any, queue: Any) -> bool:
    """Whether ``queue`` is declared on ``producer``'s connection already, by kombu's own record of it (which a
    reconnection clears): the test kombu's ``maybe_declare`` makes before it skips the declaration."""
    if not isinstance(queue, Queue) or not queue.can_cache_declaration:
        return False
    declared = getattr(getattr(producer, "connection", None), "declared_entities", None)
    return declared is not None and hash(queue) in declared


def publishing_app() -> Celery:
    """The app publishing the current task message; Celery's current app outside a publish."""
    from celery import current_app

    app = _PUBLISHING_APP.get()
    return app if app is not None else current_app._get_current_object()


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    topology = topology_from(settings)
    # Task events (Flower, `celery events`) are redacted and bounded by the app's event dispatcher.
    app = Celery("relaybus", include=list(BUILTIN_MODULES + settings.extra_modules), amqp=PublishingAMQP,
                 events="relaybus.tasks.runtime.redacting:RedactingEvents")
    # redis:// results use Celery's backend with one fix: its chord scripts are retried while Redis
    # restarts, so a chord is not failed for a dropped connection (tasks.chords.RedisBackend).
    app.loader.override_backends = {"redis": REDIS_BACKEND, "rediss": REDIS_BACKEND, "db": DATABASE_BACKEND}
    app.conf.update(
        broker_url=settings.broker_url,
        result_backend=settings.result_backend,
        # JSON only: pickle executes code from whoever can publish to the broker.
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # Ack after the work, so a crashed worker's message is redelivered, not lost.
        task_acks_late=True,
        # A killed pool child's message goes back to the queue instead of being acked.
        task_reject_on_worker_lost=True,
        # Failures are dead-lettered by the task base with their reason, then acked (tasks.runtime.deadletter).
        task_acks_on_failure=True,
        # A hard time limit is final; requeueing would loop forever on the same message.
        task_acks_on_timeout=True,
        # One reserved message per process: priorities can only reorder what is still in the queue.
        worker_prefetch_multiplier=1,
        # Persistent messages on durable queues survive a broker restart.
        task_default_delivery_mode="persistent",
        # Publisher confirms: a publish returns only once the broker has the message, and waits for it
        # publish_timeout_s at most (a blocked or stopped broker never confirms; relaybus.broker).
        broker_transport=transport_for(settings.broker_url),
        broker_transport_options={"confirm_publish": True, "publish_timeout": settings.publish_timeout_s},
        broker_connection_retry_on_startup=True,
        # Dead-letter queues are declared (project.topology.declare) but never consumed by default.
        task_queues=topology.queues_for(topology.agents),
        task_create_missing_queues=False,  # a typo in -Q is an error, not a new plain queue
        task_default_queue=topology.queue_name("system"),
        task_default_exchange=settings.namespace,
        task_default_routing_key=topology.queue_name("system"),
        task_routes=(AgentRouter(topology, PRIORITY_LEVELS["urgent"]),),
        task_queue_max_priority=MAX_PRIORITY,
        task_default_priority=PRIORITY_LEVELS[settings.default_priority],
        # Chain steps and callbacks keep the priority the workflow started with.
        task_inherit_parent_priority=True,
        task_soft_time_limit=settings.soft_time_limit_s,
        task_time_limit=settings.time_limit_s,
        task_track_started=True,
        # Not result_extended: it would copy every task's arguments (and any secret in them) into Redis.
        result_extended=False,
        # Chords count their header in Redis; keep results longer than any workflow runs.
        result_expires=settings.result_expires_s,
        # A result backend that is restarting is waited for (backoff up to 10 s, about two minutes
        # in all), not given up on: Celery stores a task's STARTED state before running it, and an
        # error there would drop the task with its message already acknowledged (tests/chaos).
        result_backend_always_retry=True,
        result_backend_max_retries=30,
        # A chord's error callback must also see its header tasks' failures.
        task_allow_error_cb_on_chord_header=True,
        # Celery's event and remote-control exchanges are the namespace's own (project.topology): on a shared
        # broker Flower, inspect, mingle and gossip see only this namespace's workers and tasks.
        event_exchange=topology.celery_event_exchange,
        event_queue_prefix=topology.celery_event_exchange,
        control_exchange=topology.control_exchange,
        # Flower and `celery events` need these.
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_consumer="relaybus.tasks.runtime.consumer:DeadLetteringConsumer",
        worker_hijack_root_logger=False,
        relaybus_runtime=runtime_from(settings),
        relaybus_topology=topology,
        # `celery -A relaybus beat`: the saga sweep times out steps whose worker went silent.
        # `celery -A relaybus beat`: the workflow sweep ends pipelines past their deadline as timed_out.
        # Workers consuming the system queue send both at the same intervals without beat (project.sweeper).
        beat_schedule={
            "relaybus.saga.sweep": {"task": "relaybus.saga.sweep", "schedule": settings.saga_sweep_interval_s},
            "relaybus.workflows.sweep": {"task": "relaybus.workflows.sweep",
                                         "schedule": settings.workflow_sweep_interval_s},
        },
        relaybus_worker_sweeps=settings.worker_sweeps,
    )
    if settings.broker_url.startswith("filesystem://"):
        app.conf.update(_embedded_broker_options(settings))
    # Event bus: each worker delivers the events of the subscribers whose queues it consumes.
    app.steps["consumer"].add(EventDelivery)
    # Clients (an app, the CLI, Django) load the same modules as workers, once the app is finalized
    # (its first ``app.tasks``, send or start): ``app.tasks["agents.mine"]`` and ``start("mine", ...)``
    # find what RELAYBUS_EXTRA_MODULES declares, not only what a worker would.
    app.on_after_finalize.connect(_load_modules, weak=False)
    return app


def _load_modules(sender: Celery, **_: Any) -> None:
    sender.loader.import_default_modules()


def _embedded_broker_options(settings: Settings) -> dict[str, Any]:
    """kombu's filesystem transport: one file per message; no priorities, no publisher confirms."""
    from pathlib import Path

    folder = Path(settings.embedded_dir).resolve() / "broker"
    for sub in ("queue", "control", "processed"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return {
        "broker_transport_options": {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            # The transport polls its folder; 1 s (the default) per hop makes a pipeline crawl.
            "polling_interval": 0.05,
        },
        # The database result backend has no atomic counter: chords fall back to chord_unlock polling.
        "result_chord_retry_interval": 0.2,
    }


def topology_of(app: Celery) -> Topology:
    topology = app.conf.get("relaybus_topology")
    if not isinstance(topology, Topology):
        raise RuntimeError("this Celery app was not built by project.celery.create_app")
    return topology


def _declare_topology(sender: Any = None, **_: Any) -> None:
    app = sender.app if sender is not None and hasattr(sender, "app") else None
    if app is None:
        return
    with app.connection_for_write() as conn:
        topology_of(app).declare(conn)


def _check_llm_choices(sender: Any = None, **_: Any) -> None:
    from relaybus.tasks.runtime.config import llm_choice_problems

    app = sender.app if sender is not None and hasattr(sender, "app") else None
    for problem in llm_choice_problems(app) if app is not None else ():
        logging.getLogger("relaybus.worker").error("LLM provider misconfigured: %s", problem)


def _connect_signals() -> None:
    from relaybus.sweeper import start_sweeper, stop_sweeper
    from relaybus.tasks.runtime.chordrepair import register_chord_member
    from relaybus.tasks.runtime.context import propagate_ids
    from relaybus.tasks.runtime.recording import on_after_task_publish, on_before_task_publish
    from relaybus.tasks.runtime.recording.wiring import start_host_writer, stop_host_writer
    from relaybus.tasks.runtime.redacting import quiet_success_log, redact_task_headers, redact_worker_logs
    from relaybus.tasks.runtime.revokes import load_into_worker as load_kept_revokes
    from relaybus.tasks.runtime.sentevents import flush_sent_events

    def build_sent(**kwargs: Any) -> None:
        on_before_task_publish(publishing_app(), **kwargs)

    # Order matters: ids are stamped before the "sent" record reads them. The record is written once the
    # broker confirmed the publish (after_task_publish), never for a message that was not sent.
    signals.before_task_publish.connect(propagate_ids, weak=False, dispatch_uid="relaybus.propagate_ids")
    signals.before_task_publish.connect(build_sent, weak=False, dispatch_uid="relaybus.record_sent")
    signals.after_task_publish.connect(on_after_task_publish, weak=False, dispatch_uid="relaybus.record_sent")

    def register_chords(body: Any = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
        register_chord_member(publishing_app(), body, headers)

    signals.before_task_publish.connect(register_chords, weak=False, dispatch_uid="relaybus.register_chords")

    # One redaction at every sink Celery writes to (tasks.runtime.redacting): the argsrepr/kwargsrepr headers of
    # every task message (send_task by name included), the worker's log handlers, its success line.
    def redact_headers(body: Any = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
        redact_task_headers(publishing_app(), body, headers)

    def redact_logs(logger: Any = None, **_: Any) -> None:
        redact_worker_logs(publishing_app(), logger)

    signals.before_task_publish.connect(redact_headers, weak=False, dispatch_uid="relaybus.redact_headers")
    signals.after_setup_logger.connect(redact_logs, weak=False, dispatch_uid="relaybus.redact_logs")
    signals.after_setup_task_logger.connect(redact_logs, weak=False, dispatch_uid="relaybus.redact_task_logs")
    quiet_success_log()
    signals.worker_init.connect(_declare_topology, weak=False, dispatch_uid="relaybus.declare_topology")
    signals.worker_init.connect(lean_tracebacks, weak=False, dispatch_uid="relaybus.lean_tracebacks")
    signals.worker_init.connect(_check_llm_choices, weak=False, dispatch_uid="relaybus.check_llm_choices")
    signals.worker_init.connect(start_host_writer, weak=False, dispatch_uid="relaybus.host_writer")
    signals.worker_init.connect(load_kept_revokes, weak=False, dispatch_uid="relaybus.kept_revokes")
    signals.worker_shutdown.connect(stop_host_writer, weak=False, dispatch_uid="relaybus.host_writer")
    # A pool process leaves by os._exit: its buffered task-sent events go out first (atexit would not run).
    signals.worker_process_shutdown.connect(flush_sent_events, weak=False, dispatch_uid="relaybus.sent_events")
    signals.worker_ready.connect(start_sweeper, weak=False, dispatch_uid="relaybus.sweeper")
    signals.worker_shutdown.connect(stop_sweeper, weak=False, dispatch_uid="relaybus.sweeper")


_connect_signals()
connect_json_logs()
connect_tracing()
app = create_app()
