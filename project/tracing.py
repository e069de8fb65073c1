"""OpenTelemetry (``RELAYBUS_OTEL=true``): one trace per workflow, across chains, chords, event hops, retries,
saga steps and compensations.

:func:`setup` installs a tracer provider and OpenTelemetry's Celery instrumentation (the ``traceparent`` of a
task's publishes travels in its messages; each run is a span), and relaybus's attributes on every task span:
``relaybus.correlation_id``, ``relaybus.causation_id``, ``relaybus.agent``, ``relaybus.priority``,
``relaybus.attempt`` and ``relaybus.outcome``. The event bus carries the trace itself
(:mod:`relaybus.tasks.runtime.tracecontext`). Spans go to the OTLP endpoint of the standard
``OTEL_EXPORTER_OTLP_ENDPOINT`` (HTTP, ``http://localhost:4318`` by default), or, with
``RELAYBUS_OTEL_FILE``, to a file as JSON lines (for tests and a quick look). Workers set it up when they
start; an application that publishes calls :func:`setup` itself (the CLI does).

Needs the ``otel`` extra: ``pip install 'relaybus[otel]'``.
"""

from __future__ import annotations

import os
from typing import Any

from celery import signals

from relaybus.settings import Settings, get_settings
from relaybus.topology import agent_of

_installed = False


def setup(settings: Settings | None = None) -> bool:
    """Install tracing once per process if ``RELAYBUS_OTEL`` is on; whether it is installed."""
    global _installed
    settings = settings or get_settings()
    if _installed or not settings.otel:
        return _installed
    from opentelemetry import trace
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME",
                                                                                       "relaybus")}))
    if settings.otel_file:
        out = open(settings.otel_file, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - the process's life
        exporter = ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n")
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    # Around the instrumentation's own handlers, so that its task span is the current one: the outcome before
    # its postrun ends the span, the run's attributes after its prerun starts it.
    signals.task_postrun.connect(_annotate_outcome, weak=False, dispatch_uid="relaybus.otel.postrun")
    CeleryInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    signals.task_prerun.connect(_annotate_run, weak=False, dispatch_uid="relaybus.otel.prerun")
    _installed = True
    return True


def _annotate_run(task: Any = None, **_: Any) -> None:
    from opentelemetry import trace

    from relaybus.tasks.runtime.context import current_causation_id, current_correlation_id

    span = trace.get_current_span()
    if task is None or not span.is_recording():
        return
    request = task.request
    attributes = {
        "relaybus.correlation_id": current_correlation_id(),
        "relaybus.causation_id": current_causation_id(),
        "relaybus.agent": agent_of(task.name or ""),
        "relaybus.priority": (request.delivery_info or {}).get("priority"),
        "relaybus.attempt": (request.retries or 0) + 1,
    }
    span.set_attributes({k: v for k, v in attributes.items() if v is not None})


def _annotate_outcome(task: Any = None, state: str | None = None, **_: Any) -> None:
    from opentelemetry import trace

    span = trace.get_current_span()
    if state and span.is_recording():
        span.set_attribute("relaybus.outcome", state)


def _setup_in_worker(**_: Any) -> None:
    setup()


def connect() -> None:
    """Workers set tracing up as they start (the main process, which forwards events) and in each pool process."""
    signals.worker_init.connect(_setup_in_worker, weak=False, dispatch_uid="relaybus.otel.worker")
    signals.worker_process_init.connect(_setup_in_worker, weak=False, dispatch_uid="relaybus.otel.child")
