"""W3C trace context across the hops Celery's instrumentation does not see (relaybus.tracing sets it up).

A task's own publishes are traced by OpenTelemetry's Celery instrumentation. What it cannot follow is the
event bus: an event is an AMQP message of its own, and the worker's main process turns it into the handlers'
tasks outside any task. :func:`inject` puts the publishing task's ``traceparent`` in the event's headers;
:func:`forwarding` continues that trace while the handlers' tasks are sent. Both do nothing when OpenTelemetry
is not installed or no tracer provider is set up (``RELAYBUS_OTEL`` off).
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

try:
    from opentelemetry import propagate, trace
except ImportError:  # the otel extra is not installed
    propagate = None  # type: ignore[assignment]
    trace = None  # type: ignore[assignment]


def inject(headers: MutableMapping[str, Any]) -> None:
    """Add the current span's ``traceparent`` (and ``tracestate``) to ``headers``, if a span is current."""
    if propagate is not None:
        propagate.inject(headers)


@contextmanager
def forwarding(headers: Any, name: str, attributes: dict[str, str]) -> Iterator[None]:
    """A span named ``name``, child of the trace in ``headers``, current while the block sends tasks."""
    if trace is None or propagate is None or not isinstance(headers, dict) or "traceparent" not in headers:
        yield
        return
    parent = propagate.extract({k: v for k, v in headers.items() if isinstance(v, str)})
    tracer = trace.get_tracer("relaybus")
    with tracer.start_as_current_span(name, context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes):
        yield


def add_llm_usage(provider: str, model: str, prompt_tokens: int, completion_tokens: int) -> None:
    """Count one completion's tokens on the current span (a task's run): totals over its LLM calls, with
    OpenTelemetry's GenAI attribute names, and the provider and model of the last one."""
    if trace is None:
        return
    span = trace.get_current_span()
    if not span.is_recording():
        return
    attributes = getattr(span, "attributes", None) or {}
    span.set_attributes({
        "gen_ai.system": provider,
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": int(attributes.get("gen_ai.usage.input_tokens", 0)) + prompt_tokens,
        "gen_ai.usage.output_tokens": int(attributes.get("gen_ai.usage.output_tokens", 0)) + completion_tokens,
        "relaybus.llm.calls": int(attributes.get("relaybus.llm.calls", 0)) + 1,
    })
