"""Large payloads by reference in everything the broker and Redis carry (a claim check).

A value over ``payload_inline_max_bytes`` (``RELAYBUS_PAYLOAD_INLINE_MAX_BYTES``) is stored once in the event
store's ``payloads`` table (:mod:`relaybus.eventstore.payloads`: content-addressed, redacted, verified) and
travels as ``{"$ref": "sha256:…", "bytes": N}``. Where it is stored and where it is read back:

================================  ============================================  =============================
what                              stored (offloaded)                            read back (resolved)
================================  ============================================  =============================
a task message's args and kwargs  as the message is built, for every task       the task base, before
(and its chain, callbacks,        message the app publishes (apply_async,       validation (an agent sees
chord): :func:`offload_message`   send_task, chain steps, chord callbacks,      its input as usual)
                                  retries; project.celery's AMQP)
an agent's output (the next       the task base, after the output is validated  the next step's task base
step's input, a chord member's
part, the task's Redis result)
an event's data                   ``bus.publish``                               the handler's task base
a result stored in Redis (a       the result backend (tasks.runtime.chords)     ``PipelineHandle.result``
pipeline's outcome)
an event-log record               the event store, instead of truncating it     ``store.get_payload``
================================  ============================================  =============================

A value that cannot be stored (the event store refuses the write for good: its disk is full) is not sent by
reference: :class:`~tasks.errors.PayloadUnstorable` (reason ``payload-unstored``, permanent) fails the task
before anything names the payload, and its message is dead-lettered whole, to be requeued once there is
room. An event store that is away (``StoreUnavailable``) stays transient: the task is retried.

A reference that cannot be read back (its payload missing, or changed in the database) is a permanent
error naming the reference, the agent and the task (:class:`~tasks.errors.PayloadUnreadable`): the task is
dead-lettered with reason ``payload-missing`` or ``payload-altered``, not retried.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from relaybus.eventstore import (
    EventStore,
    EventStoreError,
    PayloadError,
    PayloadRef,
    StoreConfig,
    StoreUnavailable,
    open_store,
)
from relaybus.eventstore.payloads import is_ref, json_size, offload, resolve
from relaybus.tasks.errors import PayloadUnreadable, PayloadUnstorable
from relaybus.tasks.runtime.config import RuntimeConfig, resources, runtime_config


def store_config(config: RuntimeConfig) -> StoreConfig:
    """The event store's settings of a runtime configuration (the recorder's, the host writer's, this module's)."""
    return StoreConfig(
        redact_keys=frozenset(config.redact_keys),
        redact_patterns=config.redact_patterns,
        max_payload_bytes=config.max_event_payload_bytes,
        chain_key_file=config.chain_key_file,
        payload_inline_max_bytes=config.payload_inline_max_bytes or None,
        postgres_prepare=config.eventstore_prepare,
    )


def payload_store(app: Celery) -> EventStore:
    """The event store payloads go to: the recorder's when it has one, else one opened for this process."""
    from relaybus.tasks.runtime import recording

    store = getattr(recording.recorder_for(app), "store", None)
    if isinstance(store, EventStore):
        return store
    config = runtime_config(app)
    opened: EventStore = resources().get(
        f"payloads:{config.eventstore_url}", lambda: open_store(config.eventstore_url, config=store_config(config))
    )
    return opened


def offload_value(app: Celery, value: Any) -> Any:
    """``value`` with what is over the inline size stored by reference; ``value`` itself when it fits (or the
    claim check is off)."""
    limit = runtime_config(app).payload_inline_max_bytes
    if not limit:
        return value
    store: EventStore | None = None

    def put(part: Any) -> PayloadRef:
        nonlocal store
        store = store or payload_store(app)
        try:
            return store.put_payload(part)
        except StoreUnavailable:
            raise  # away for now: transient, the task is retried
        except EventStoreError as exc:
            raise PayloadUnstorable(json_size(part), f"{type(exc).__name__}: {exc}") from exc

    return offload(value, limit, put)


def offload_message(app: Celery, args: Any, kwargs: Any, embed: Any) -> tuple[Any, Any, Any]:
    """A protocol-2 task body ``(args, kwargs, embed)`` with its large values by reference, those of the
    signatures it embeds (chain, callbacks, error callbacks, chord) too. ``args`` stays a list (each
    argument offloaded on its own); ``kwargs`` may become one reference as a whole."""
    limit = runtime_config(app).payload_inline_max_bytes
    if not limit or json_size([args, kwargs, embed]) <= limit:  # nearly every message: one encoding, no copy
        return args, kwargs, embed
    new_args = _offload_args(app, args)
    new_kwargs = offload_value(app, kwargs) if isinstance(kwargs, dict) and kwargs else kwargs
    new_embed = embed
    if isinstance(embed, dict):
        new_embed = dict(embed)
        for key in ("callbacks", "errbacks", "chain"):
            if isinstance(embed.get(key), list):
                new_embed[key] = [_offload_signature(app, sig) for sig in embed[key]]
        if isinstance(embed.get("chord"), dict):
            new_embed["chord"] = _offload_signature(app, embed["chord"])
    return new_args, new_kwargs, new_embed


def _offload_args(app: Celery, args: Any) -> Any:
    if not isinstance(args, list | tuple) or not args:
        return args
    out = [offload_value(app, arg) for arg in args]
    return out if any(a is not b for a, b in zip(out, args, strict=True)) else args


def _offload_signature(app: Celery, sig: Any) -> Any:
    """A signature as a dict, with its large arguments by reference (a canvas's members' too)."""
    if not isinstance(sig, dict):
        return sig
    kind = sig.get("subtask_type")
    out = dict(sig)
    if kind in ("chain", "group", "chord"):
        kwargs = dict(sig.get("kwargs") or {})
        if isinstance(kwargs.get("tasks"), list):
            kwargs["tasks"] = [_offload_signature(app, member) for member in kwargs["tasks"]]
        for key in ("header", "body"):
            if isinstance(kwargs.get(key), dict):
                kwargs[key] = _offload_signature(app, kwargs[key])
        out["kwargs"] = kwargs
    else:
        out["args"] = _offload_args(app, sig.get("args"))
        if isinstance(sig.get("kwargs"), dict) and sig["kwargs"]:
            out["kwargs"] = offload_value(app, sig["kwargs"])
    options = sig.get("options")
    if isinstance(options, dict) and isinstance(options.get("link"), list):  # a step's own callbacks
        out["options"] = {**options, "link": [_offload_signature(app, s) for s in options["link"]]}
    return out


def resolve_value(app: Celery, value: Any) -> Any:
    """``value`` with every reference read back; raises :class:`~relaybus.eventstore.PayloadError`."""
    if not _may_hold_refs(value):
        return value
    return resolve(value, payload_store(app).get_payload)


def resolve_call(app: Celery, agent: str, task_id: str | None, args: Any, kwargs: Any) -> tuple[Any, Any]:
    """A task call's ``(args, kwargs)`` with every reference read back (a whole-kwargs reference too).

    Raises :class:`~tasks.errors.PayloadUnreadable` naming the reference, the agent and the task when a
    payload is missing or altered."""
    if not (_may_hold_refs(args) or _may_hold_refs(kwargs)):
        return args, kwargs
    try:
        args = resolve_value(app, list(args or ()))
        kwargs = resolve_value(app, dict(kwargs or {}) if not is_ref(kwargs) else kwargs)
    except PayloadError as exc:
        raise PayloadUnreadable(exc.ref, exc.reason, exc.detail, agent=agent, task_id=task_id) from exc
    if not isinstance(kwargs, dict):
        raise PayloadUnreadable(
            "(kwargs)", "payload-altered", "the kwargs' payload is not a mapping", agent=agent, task_id=task_id
        )
    return tuple(args), kwargs


def _may_hold_refs(value: Any) -> bool:
    """A cheap walk: whether any dict in ``value`` has the reference's key."""
    if isinstance(value, dict):
        return "$ref" in value or any(isinstance(v, dict | list | tuple) and _may_hold_refs(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(isinstance(v, dict | list | tuple) and _may_hold_refs(v) for v in value)
    return False
