"""The agent task base: validation, retries, correlation, priority, and the hooks around every call.

An agent is a plain function over typed models::

    class ResearchInput(AgentModel):
        topic: str

    class ResearchOutput(AgentModel):
        findings: list[str]

    @agent("researcher", input=ResearchInput, output=ResearchOutput)
    def research(inp: ResearchInput, ctx: AgentContext) -> ResearchOutput:
        ...

It becomes the Celery task ``agents.researcher``, routed to the queue ``<namespace>.researcher``.
Everything that is not the agent's business lives here, once: what the task base decides itself
(validation, the retry decision, priorities) in :class:`AgentTask`, and the concerns around each call
(recording, dead-lettering, settling and repairing chords) as its ordered ``hooks`` (tasks.runtime.hooks).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, NoReturn, TypeVar

from celery import Task, shared_task
from celery._state import get_current_task
from celery.exceptions import Ignore, Reject, Retry
from celery.states import STARTED
from pydantic import BaseModel, ConfigDict, ValidationError

from relaybus.eventstore import StoreUnavailable
from relaybus.eventstore.types import DEFERRED_REQUEUED
from relaybus.tasks.errors import (
    AgentError,
    FailedBefore,
    InvalidInput,
    NotRun,
    PayloadUnreadable,
    PayloadUnstorable,
    PermanentError,
    RecordFailed,
    Rejected,
    is_transient,
)
from relaybus.tasks.llm import (
    BUDGET_EXCEEDED,
    BudgetExceeded,
    Completion,
    CompletionRequest,
    LLMProvider,
    RecordingProvider,
    ReplayProvider,
)
from relaybus.tasks.runtime import budgets, deferral, recording, tracecontext
from relaybus.tasks.runtime.claimcheck import offload_value, resolve_call
from relaybus.tasks.runtime.config import llm_provider, runtime_config
from relaybus.tasks.runtime.context import (
    CAUSATION_HEADER,
    CORRELATION_HEADER,
    LLM_REPLAY_HEADER,
    TRACK_STARTED_HEADER,
    id_problems,
    mark_continuing,
    request_headers,
)
from relaybus.tasks.runtime.hooks import DEFAULT_HOOKS, NO_RESULT, Call, Hook, Points, points
from relaybus.tasks.runtime.recording import records
from relaybus.tasks.runtime.redelivery import NO_END, NOT_STORED, recorded_end, stored_success

logger = logging.getLogger(__name__)

InputT = TypeVar("InputT", bound=BaseModel)
OutputT = TypeVar("OutputT", bound=BaseModel)

AGENT_TASK_PREFIX = "agents."
#: The longest a task waits before giving its message back when its retry could not be published.
RETRY_REQUEUE_PAUSE_S = 2.0


class AgentModel(BaseModel):
    """Base for agent inputs and outputs: frozen, and unknown fields are an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True)
class AgentContext:
    """What a running agent may know about its call and use besides its input."""

    agent: str
    task_id: str
    correlation_id: str
    causation_id: str | None
    attempt: int
    priority: int | None
    llm: LLMProvider
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentSpec(Generic[InputT, OutputT]):
    name: str
    input_model: type[InputT]
    output_model: type[OutputT]
    fn: Callable[[InputT, AgentContext], OutputT | dict[str, Any]]
    max_retries: int | None = None
    soft_time_limit_s: float | None = None
    time_limit_s: float | None = None
    #: Extra event-log records written in the same append as ``task.started`` (an event handler's
    #: ``event.delivered``), given the request and the raw call.
    start_records: Callable[[Any, tuple[Any, ...], dict[str, Any]], list[Any]] | None = None
    #: The LLM provider this agent asks for by name (``RELAYBUS_LLM_PROVIDERS``); None: the default.
    #: The operator's ``RELAYBUS_LLM_AGENT_PROVIDERS`` wins over it.
    llm: str | None = None

    @property
    def task_name(self) -> str:
        return AGENT_TASK_PREFIX + self.name

    def build_input(self, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> InputT:
        """Validate a call. A positional argument is the previous step's result (chain or chord)."""
        try:
            if not args:
                return self.input_model.model_validate(kwargs)
            if len(args) > 1:
                raise InvalidInput(
                    self.name,
                    [{"loc": ("args",), "msg": f"expected at most one positional argument, got {len(args)}"}],
                )
            upstream = args[0]
            from_upstream = getattr(self.input_model, "from_upstream", None)
            if callable(from_upstream):
                built: InputT = from_upstream(upstream, dict(kwargs))
                return built
            if isinstance(upstream, dict):
                return self.input_model.model_validate({**upstream, **kwargs})
            raise InvalidInput(
                self.name,
                [{"loc": ("args", 0), "msg": f"cannot build input from a {type(upstream).__name__}"}],
            )
        except ValidationError as exc:
            raise InvalidInput(self.name, _plain_errors(exc)) from None


def _plain_errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": tuple(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]


def _unencodable(value: Any, path: str = "") -> str | None:
    """The path of the first string in ``value`` that UTF-8 cannot encode (a lone surrogate), if any."""
    if isinstance(value, str):
        if value.isascii():
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "."
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _unencodable(item, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _unencodable(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def _jsonable_size(value: Any) -> int:
    return len(json.dumps(value, default=str).encode())


class AgentTask(Task):  # type: ignore[misc]
    """Celery task class of every agent. See the module docstring."""

    spec: AgentSpec[Any, Any]
    typing = False  # validation is ours, with field names in the error
    acks_late = True  # ack after the work, so a crashed worker's message is redelivered
    # A failure is acked only after the task has put the message, with its reason, in the
    # dead-letter queue (tasks.runtime.deadletter); rejecting as well would dead-letter it twice.
    acks_on_failure = True
    # A hard time limit is terminal: requeueing would loop forever on the same input.
    acks_on_timeout = True
    reject_on_worker_lost = True  # a SIGKILLed child's message goes back to the queue
    # No STARTED state in the result backend (the app's task_track_started is for relaybus's system tasks): the
    # event log's task.started is the record, and nothing reads an agent task's STARTED back but a pipeline's
    # handle, whose entry message asks for it (TRACK_STARTED_HEADER). It cost a Redis round trip a task: 2.18 ->
    # 1.94 ms of worker CPU per no-op task, 572 -> 609 tasks/s (README, Performance). Celery's default too.
    track_started = False
    #: A task that refused to run (a stale saga step) is logged by Celery at INFO, without a traceback: it is
    #: no error (recorded ``task.rejected``).
    throws: tuple[type[BaseException], ...] = (NotRun,)
    #: The worker's main process records what ends outside the pool child: a hard time limit, a revoke,
    #: a rejection (tasks.runtime.request).
    Request = "relaybus.tasks.runtime.request:AgentRequest"

    #: The concerns around every call, in order (tasks.runtime.hooks). A subclass may give its own tuple.
    hooks: ClassVar[tuple[Hook, ...]] = DEFAULT_HOOKS
    _points: ClassVar[Points] = points(DEFAULT_HOOKS)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._points = points(cls.hooks)  # once per task class, so a call pays only for the hooks it runs

    # -- client side -------------------------------------------------------------------------

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        config = runtime_config(self.app)
        shape = [
            {"loc": (where,), "msg": f"{where} must be {what}, got {type(value).__name__}"}
            for where, value, want, what in (
                ("args", args, (list, tuple), "a list"),
                ("kwargs", kwargs, Mapping, "a mapping of field names to values"),
            )
            if value is not None and not isinstance(value, want)
        ]
        headers = options.get("headers") or {}
        shape += id_problems(
            task_id=options.get("task_id"),
            correlation_id=headers.get(CORRELATION_HEADER) if isinstance(headers, Mapping) else None,
            causation_id=headers.get(CAUSATION_HEADER) if isinstance(headers, Mapping) else None,
        )
        # A delivery held past RabbitMQ's consumer timeout closes the worker's channel: refused here.
        delay = config.check_delay(options.get("countdown"), options.get("eta"), time_limit_s=self.time_limit)
        if delay is not None:
            shape.append({"loc": ("countdown" if options.get("countdown") is not None else "eta",), "msg": delay,
                          "type": "delay_too_long"})
        if shape:
            raise InvalidInput(self.spec.name, shape)
        if "priority" in options and isinstance(options["priority"], str):
            options["priority"] = config.priority(options["priority"])
        running = get_current_task()
        if running is None or running.request.id is None:
            # Outside a worker: refuse bad input before anything reaches the broker.
            self.validate_call(args or (), kwargs or {})
        elif options.get("priority") is None:
            # Work started from inside a task keeps that task's priority. Celery's
            # task_inherit_parent_priority cannot do it here: the task's default priority is
            # already in the options when it looks, so only chain continuations inherit.
            inherited = (running.request.delivery_info or {}).get("priority")
            if inherited is not None:
                options["priority"] = inherited
        return super().apply_async(args, kwargs, **options)

    def validate_call(self, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> None:
        config = runtime_config(self.app)
        size = _jsonable_size([list(args), kwargs])
        if size > config.max_payload_bytes:  # what is over payload_inline_max_bytes travels by reference
            raise InvalidInput(
                self.spec.name,
                [{"loc": ("payload",), "msg": f"{size} bytes is over the limit of {config.max_payload_bytes}"}],
            )
        # From a caller, positional arguments are complete too: a chain step that waits for its
        # upstream result is published by the worker that ran the step before it, not from here.
        self.spec.build_input(tuple(args), kwargs)

    # -- worker side -------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.called_directly:
            inp = self.spec.build_input(args, kwargs)
            return self._output(self.spec.fn(inp, self._context(request, None)))

        config = runtime_config(self.app)
        hooks = self._points
        try:
            recorder = recording.recorder_for(self.app)
        except StoreUnavailable as exc:  # the store is away as the process opens it: come back later
            raise Reject(f"event store unavailable, message requeued: {exc}", requeue=True) from exc
        except Exception as exc:  # it cannot be opened at all (a full disk): nothing could be recorded
            call = Call(self, request, args, kwargs, time.monotonic(), recording.NullRecorder())
            refused = RecordFailed(f"the event log cannot be opened: {type(exc).__name__}: {exc}")
            return self._give_up(call, refused, "record-failed")
        call = Call(self, request, args, kwargs, time.monotonic(), recorder)
        if deferral.already_deferred(call):  # its deferred copy is queued and carries on
            raise Ignore()
        stored = stored_success(self.app, request)
        ended = recorded_end(self.app, call.recorder, request) if stored is NOT_STORED else NO_END
        if ended.output is not NOT_STORED:
            stored = ended.output
        # Redelivered after its end was recorded: the body does not run again, nor is a second start recorded.
        call.resumed = stored is not NOT_STORED or ended.failure is not None
        for before_call in hooks.before_call:
            before_call(call)
        try:
            if ended.failure is not None:  # its failure path is taken again, with the recorded error
                raise ended.failure
            if call.resumed:  # redelivered after its success was stored: what follows it is sent again, no more
                result = stored
            else:
                if getattr(request, TRACK_STARTED_HEADER, None):
                    self._store_started(request)  # its errors take the task's failure path, as the body's do
                # Values passed by reference are read back before validation, and large outputs stored after
                # it: the agent sees its input and returns its output as usual (tasks.runtime.claimcheck).
                args, kwargs = resolve_call(self.app, self.spec.name, request.id, args, kwargs)
                inp = self.spec.build_input(args, kwargs)
                result = offload_value(
                    self.app, self._output(self.spec.fn(inp, self._context(request, call.recorder)))
                )
        except Retry:
            raise
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            error: BaseException = exc
            if isinstance(exc, Reject):  # Celery's own refusal, raised by the agent
                if exc.requeue:
                    self._record_given_back(call, exc)
                    raise  # it gives its message back: it runs again, and nothing has ended
                error = Rejected(str(exc.reason))  # dead-lettered once, by relaybus: see Rejected
                error.__cause__ = exc
            deferral.defer_if_rate_limited(call, error, config)  # waiting is no failure: no retry is used
            max_retries = self.spec.max_retries if self.spec.max_retries is not None else config.max_retries
            if is_transient(error) and request.retries < max_retries:
                countdown = config.retry_countdown(request.retries, error)
                try:
                    for on_retry in hooks.on_retry:
                        on_retry(call, error, countdown)
                except RecordFailed as refused:
                    return self._give_up(call, refused, "record-failed")
                self._retry(error, countdown, max_retries)
            reason = "permanent-error" if not is_transient(error) else "retries-exhausted"
            if isinstance(error, PayloadUnreadable | PayloadUnstorable | FailedBefore | NotRun | Rejected):
                reason = error.reason  # payload-missing, payload-altered, payload-unstored or the recorded one
            if isinstance(error, BudgetExceeded):
                reason = BUDGET_EXCEEDED  # refused unsent: the dead letter and the workflow say why
            return self._give_up(call, error, reason)
        try:
            for on_success in hooks.on_success:
                on_success(call, result)
        except RecordFailed as refused:
            # The work is done but its record cannot be stored as it is: no ack without a record, so the
            # task is dead-lettered (record-failed) and its workflow takes its failure path.
            return self._give_up(call, refused, "record-failed")
        mark_continuing(request.id)
        return result

    def _record_given_back(self, call: Call, given_back: Reject) -> None:
        """Record a run that gave its message back (``Reject(requeue=True)`` from its code, or from a publish in it
        the broker refused): its start records and ``task.deferred`` with reason ``requeued``, so the log shows the
        run that did not end. Best effort: the message goes back whether or not the log takes the record, and a
        give-back because the log is away does not wait for it."""
        if isinstance(given_back.__cause__, StoreUnavailable):
            return
        request = call.request
        payload = {"reason": DEFERRED_REQUEUED, "error_type": "Reject", "error_message": str(given_back.reason)[:2000]}
        try:
            call.recorder.append([records.deferred(self, request, payload, socket.gethostname())], task_id=request.id)
        except Exception as exc:
            logger.warning("could not record that %s[%s] gave its message back: %s", self.name, request.id, exc)

    def _store_started(self, request: Any) -> None:
        """The ``STARTED`` state Celery stores for a task that tracks it, before the body runs: for a message
        that asks for it (:data:`TRACK_STARTED_HEADER`). A Redis that refuses the write is logged, not fatal
        (tasks.runtime.results), as for any task's own state."""
        if not self.ignore_result:
            self.backend.store_result(request.id, {"pid": os.getpid(), "hostname": request.hostname}, STARTED,
                                      request=request)

    def _give_up(self, call: Call, error: BaseException, reason: str) -> Any:
        """The task failed for good: run the failure hooks, then raise ``error`` (or end with the result a
        hook supplied instead, a settled chord member's marked failure)."""
        replacement = NO_RESULT
        for on_failure in self._points.on_failure:
            supplied = on_failure(call, error, reason)
            if replacement is NO_RESULT:
                replacement = supplied
        if replacement is NO_RESULT:
            raise error
        return replacement

    def _retry(self, error: BaseException, countdown: float, max_retries: int) -> NoReturn:
        """``self.retry``, except that a retry the broker does not take (it is restarting, blocked, or
        refuses the message) gives the original message back instead of dropping it: Celery raises
        ``Reject(requeue=False)`` then, which fails the task and its chord while its message is gone."""
        try:
            raise self.retry(exc=error, countdown=countdown, max_retries=max_retries) from None
        except Reject as refused:
            if refused.requeue:
                raise
            # Not at once: a broker that refuses publishes would otherwise meet the same task again and again.
            time.sleep(min(countdown, RETRY_REQUEUE_PAUSE_S))
            raise Reject(f"the retry could not be published, message requeued: {refused.reason!r}",
                         requeue=True) from error

    def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        request = self.request
        if request.called_directly:
            return
        for after_return in self._points.after_return:
            after_return(self, request, status, retval)

    def _output(self, value: Any) -> Any:
        if isinstance(value, BaseModel):
            if not isinstance(value, self.spec.output_model):
                raise PermanentError(
                    f"agent {self.spec.name!r} returned {type(value).__name__}, "
                    f"expected {self.spec.output_model.__name__}"
                )
            output = value.model_dump(mode="json")
        else:
            output = self.spec.output_model.model_validate(value).model_dump(mode="json")
        where = _unencodable(output)
        if where is not None:
            # It could not travel as a message or an event (UTF-8 JSON); refused here, naming the field.
            raise PermanentError(
                f"agent {self.spec.name!r} returned text UTF-8 cannot encode (a lone surrogate) at "
                f"output.{where}: decode bytes with errors='replace', or return them as base64"
            )
        return output

    def _llm(self, request: Any, headers: dict[str, Any], recorder: recording.Recorder) -> LLMProvider:
        """The provider chain ``ctx.llm`` is: the provider this agent uses, then the wrappers, innermost first.

        selected provider → [replay, on a deterministic replay] → recording → budget. Each stage is an
        :class:`LLMProvider` holding the previous one (``inner``) and keeping its ``name`` and ``model``,
        so a stage added here (a rate limit, a budget guard) keys on the provider and model the call will
        use before it is made; ``request`` and ``headers`` carry the call's ids and priority.
        """
        provider: LLMProvider = llm_provider(self.app, self.spec.name, self.spec.llm)
        # -- wrappers around the live provider go here (they are skipped by a replay's recorded answers) --
        provider = deferral.rate_limited(self.app, provider, request)
        replay_of = headers.get(LLM_REPLAY_HEADER)
        if replay_of:
            provider = ReplayProvider.standing_in_for(provider, recorder.recorded_completions(str(replay_of)))

        def record(req: CompletionRequest, completion: Completion) -> None:
            recorder.llm_completed(self, request, req, completion, budgets.cost_of(self.app, completion))
            tracecontext.add_llm_usage(completion.provider, completion.model, completion.usage.prompt_tokens,
                                       completion.usage.completion_tokens)

        # The budget wraps the recording: a call's reservation is released once its llm.completed is in the log;
        # completions served again after a deferral were charged when first made and pass it by.
        budgeted = budgets.budgeted(self, request, headers, RecordingProvider(provider, record), recorder)
        return deferral.resumed(budgeted, recorder, request)

    def _context(self, request: Any, recorder: recording.Recorder | None) -> AgentContext:
        headers = request_headers(request)
        return AgentContext(
            agent=self.spec.name,
            task_id=request.id or "direct",
            correlation_id=headers.get(CORRELATION_HEADER) or request.id or "direct",
            causation_id=headers.get(CAUSATION_HEADER),
            attempt=(request.retries or 0) + 1,
            priority=(request.delivery_info or {}).get("priority"),
            llm=(self._llm(request, headers, recorder) if recorder is not None
                 else llm_provider(self.app, self.spec.name, self.spec.llm)),
        )


def agent(
    name: str,
    *,
    input: type[InputT],
    output: type[OutputT],
    max_retries: int | None = None,
    soft_time_limit_s: float | None = None,
    time_limit_s: float | None = None,
    task_name: str | None = None,
    start_records: Callable[[Any, tuple[Any, ...], dict[str, Any]], list[Any]] | None = None,
    llm: str | None = None,
) -> Callable[[Callable[[InputT, AgentContext], OutputT | dict[str, Any]]], AgentTask]:
    """Register ``fn`` as the agent ``name``: the Celery task ``agents.<name>``.

    ``llm`` names the LLM provider the agent uses (one of ``RELAYBUS_LLM_PROVIDERS``, or ``offline``);
    without it the agent uses the default provider, and the operator may reassign it either way
    (``RELAYBUS_LLM_AGENT_PROVIDERS``).

    ``task_name`` gives a second task to the same agent (an event handler ``events.<agent>.<handler>``,
    a pipeline step on the system queue); it must be routed explicitly, as only ``agents.<name>`` is
    routed by name.
    """

    def decorate(fn: Callable[[InputT, AgentContext], OutputT | dict[str, Any]]) -> AgentTask:
        spec = AgentSpec(name, input, output, fn, max_retries, soft_time_limit_s, time_limit_s, start_records, llm)
        options: dict[str, Any] = {
            "name": task_name or spec.task_name, "base": AgentTask, "spec": spec, "bind": False,
        }
        if soft_time_limit_s is not None:
            options["soft_time_limit"] = soft_time_limit_s
        if time_limit_s is not None:
            options["time_limit"] = time_limit_s

        def run(*args: Any, **kwargs: Any) -> Any:  # the body is AgentTask.__call__
            raise AgentError("AgentTask.__call__ runs agents; run() is never called")

        run.__name__ = fn.__name__
        run.__doc__ = fn.__doc__
        task: AgentTask = shared_task(**options)(run)
        return task

    return decorate


def hostname() -> str:
    return socket.gethostname()
