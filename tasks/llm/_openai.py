"""A provider for any server that speaks OpenAI's chat-completions API (OpenAI, vLLM, Ollama, …), on the
official ``openai`` SDK, which does the requests, authentication, transport retries and streaming.

This module is the one boundary where the SDK's errors become ours:

==============================================  ======================================
what happened                                   raised
==============================================  ======================================
timeout, connection refused or reset            ProviderUnavailable (transient)
HTTP 429 or 5xx                                 ProviderOverloaded (transient), with retry_after
any other 4xx                                   ProviderRejected (permanent), with status_code
2xx whose body is not a chat completion         MalformedCompletion (permanent, see its docstring)
==============================================  ======================================

The body of a 2xx answer is checked here (:mod:`._wire`), not left to the SDK, which builds its
response objects without validating them: a proxy's page or a server without chat support must be a
:class:`MalformedCompletion`, not a completion of ``None``.

The API key is a :class:`~pydantic.SecretStr`, unwrapped only to build the SDK client; it is scrubbed
from any text the provider sends back before that text reaches an exception message or a log line,
and an error answer is raised without its SDK exception as cause (a server may echo the key there,
and a worker logs the whole chain).

The SDK is imported when a provider is built, not with this module: reading settings (the CLI) does not
pay for it.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import SecretStr, ValidationError

from relaybus.eventstore.redaction import mask_url_passwords
from relaybus.tasks.errors import PermanentError, ProviderRejected, ProviderUnavailable
from relaybus.tasks.llm._errors import MalformedCompletion, ProviderOverloaded
from relaybus.tasks.llm._models import Completion, CompletionRequest
from relaybus.tasks.llm._wire import completion_from_body, completion_from_stream, request_body

if TYPE_CHECKING:
    import openai

logger = logging.getLogger("relaybus.tasks.llm")

_MAX_ERROR_CHARS = 500
#: Modules whose exceptions mean the connection failed while a streamed answer was being read: the SDK
#: wraps transport errors of the request, not those of reading a stream's body.
_TRANSPORT_MODULES = ("httpx", "httpx2", "httpcore", "h11", "ssl")
#: Words in a streamed error event's type or code that say the server, not the request, is at fault.
_TRANSIENT_KINDS = ("server", "overload", "rate_limit", "timeout", "unavailable")


class OpenAICompatibleProvider:
    """``POST {base_url}/chat/completions`` through the SDK, streamed when ``stream`` is set.

    ``max_retries`` is the SDK's own retries of connection errors, 408, 409, 429 and 5xx (waiting what
    ``Retry-After`` says, up to a minute). It defaults to 0, and the task base's retries do the work:
    they are recorded (``task.retried``) and backed off with jitter across the whole fleet, they do
    not keep a worker process asleep, and a 429 goes back to whoever limits the rate (a wrapper in the
    chain) instead of being retried behind its back. Retrying in both places multiplies the attempts
    (the SDK's 2 times the task's 3: 9 requests per call). Set it where the provider is used outside the task base,
    or to ride over a flaky network in-process.

    With ``stream``, the answer is consumed as server-sent events and assembled (text, tool calls) into
    the same :class:`Completion`, asking the server for usage in the last event
    (``stream_options.include_usage``). The completion, and so its record and replay, do not depend on
    streaming. Pass ``client`` (an ``openai.OpenAI``) to share its connection pool; a client given is
    never closed here, and ``timeout_s`` and ``max_retries`` apply to every request either way.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: SecretStr | None = None,
        timeout_s: float = 30.0,
        max_retries: int = 0,
        stream: bool = False,
        client: openai.OpenAI | None = None,
        *,
        name: str = "openai",
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if urlsplit(base_url).scheme not in ("http", "https"):
            # The SDK would report this on each call as a connection error, which we retry.
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        import openai

        self.name = name
        self.base_url = base_url.rstrip("/")
        #: The endpoint as messages and logs show it: a password in the URL masked.
        self._where = mask_url_passwords(f"{self.base_url}/chat/completions")
        self.model = model
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.stream = stream
        self._owns_client = client is None
        if client is None:
            # Without a key nothing is sent (see _extra_headers); the SDK only insists on having one, and
            # would otherwise take OPENAI_API_KEY from the environment and send it to this server.
            key = api_key.get_secret_value() if api_key is not None else "unused"
            client = openai.OpenAI(api_key=key, base_url=self.base_url, timeout=timeout_s, max_retries=max_retries)
        self._root_client = client
        self._client = client.with_options(base_url=self.base_url, timeout=timeout_s, max_retries=max_retries)

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def __repr__(self) -> str:
        key = "None" if self._api_key is None else repr(self._api_key)  # SecretStr('**********')
        return (
            f"OpenAICompatibleProvider(name={self.name!r}, base_url={mask_url_passwords(self.base_url)!r}, "
            f"model={self.model!r}, "
            f"api_key={key}, timeout_s={self.timeout_s!r}, max_retries={self.max_retries!r}, "
            f"stream={self.stream!r})"
        )

    def close(self) -> None:
        if self._owns_client:
            self._root_client.close()

    def __enter__(self) -> OpenAICompatibleProvider:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def complete(self, request: CompletionRequest) -> Completion:
        import openai

        model = request.model or self.model
        body = request_body(request, model)
        extra_headers = self._extra_headers()
        try:
            if self.stream:
                completion = self._complete_streamed(request, body, extra_headers)
            else:
                raw = self._client.chat.completions.with_raw_response.create(**body, extra_headers=extra_headers)
                completion = self._parse(request, raw.http_response.status_code, raw.http_response.content, model)
        except openai.APIError as exc:
            raise self._translate(exc) from _cause(exc)
        logger.debug(
            "LLM completion from %s (%s): model=%s prompt_tokens=%d completion_tokens=%d tool_calls=%d",
            self._where,
            self.name,
            completion.model,
            completion.usage.prompt_tokens,
            completion.usage.completion_tokens,
            len(completion.tool_calls),
        )
        return completion

    def _complete_streamed(
        self, request: CompletionRequest, body: dict[str, Any], extra_headers: dict[str, Any]
    ) -> Completion:
        stream = self._client.chat.completions.create(
            **body, stream=True, stream_options={"include_usage": True}, extra_headers=extra_headers
        )
        status = stream.response.status_code
        try:
            with stream:
                return completion_from_stream(stream, request, body["model"], self.name)
        except ValidationError as exc:  # the assembled answer is not a completion
            raise self._malformed(exc, status, "streamed an answer that is not a chat completion") from None
        except ValueError as exc:  # an event that is not JSON
            raise MalformedCompletion(
                f"LLM provider at {self._where} answered HTTP {status} with a stream that is not chat completion "
                f"chunks ({type(exc).__name__})",
                status_code=status,
            ) from None
        except Exception as exc:
            if type(exc).__module__.split(".")[0] in _TRANSPORT_MODULES:
                raise ProviderUnavailable(
                    f"LLM provider at {self._where} broke off its streamed answer: {self._scrub(str(exc))}"
                ) from exc
            raise

    def _parse(self, request: CompletionRequest, status: int, content: bytes, model: str) -> Completion:
        try:
            return completion_from_body(content, request, model, self.name)
        except ValidationError as exc:
            raise self._malformed(exc, status, "with a body that is not a chat completion") from None

    def _malformed(self, exc: ValidationError, status: int, what: str) -> MalformedCompletion:
        # Only pydantic's locations and messages: its full error quotes the body, which we have not scrubbed.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:3]
        )
        return MalformedCompletion(f"LLM provider at {self._where} answered HTTP {status} {what} ({problems})",
                                   status_code=status)

    def _extra_headers(self) -> dict[str, Any]:
        if self._api_key is not None or not self._owns_client:
            return {}
        import openai

        return {"Authorization": openai.omit}

    def _translate(self, exc: Exception) -> Exception:
        import openai

        if isinstance(exc, openai.APITimeoutError):
            return ProviderUnavailable(
                f"LLM provider at {self._where} timed out after {self.timeout_s}s (APITimeoutError)"
            )
        if isinstance(exc, openai.APIConnectionError):
            reason = exc.__cause__ or exc
            return ProviderUnavailable(
                f"LLM provider at {self._where} could not be reached: {self._scrub(str(reason))}"
            )
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            if status == 429 or status >= 500:
                return ProviderOverloaded(
                    f"LLM provider at {self._where} answered HTTP {status}: {self._error_message(exc.response)}",
                    status_code=status,
                    retry_after=_retry_after(exc.response.headers),
                )
            if status >= 400:
                return ProviderRejected(status, self._error_message(exc.response))
            return MalformedCompletion(
                f"LLM provider at {self._where} answered HTTP {status}, expected a 2xx chat completion",
                status_code=status,
            )
        # An error event inside a stream (an APIError without a status): transient when the server says it
        # is its own trouble (OpenAI's server_error, rate_limit_exceeded...), permanent otherwise.
        message = f"LLM provider at {self._where} sent an error: {self._scrub(str(exc))[:_MAX_ERROR_CHARS]}"
        kind = f"{getattr(exc, 'type', '')} {getattr(exc, 'code', '')}".lower()
        if any(word in kind for word in _TRANSIENT_KINDS):
            return ProviderUnavailable(message)
        return PermanentError(message)

    def _error_message(self, response: Any) -> str:
        """The provider's own explanation (OpenAI's ``error.message``), else the start of the body."""
        message: str | None = None
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            error = payload.get("error")
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                message = error["message"]
            elif isinstance(error, str):
                message = error
            elif isinstance(payload.get("message"), str):
                message = payload["message"]
        if message is None:
            message = response.text.strip() or response.reason_phrase or "no explanation given"
        message = " ".join(message.split())
        if len(message) > _MAX_ERROR_CHARS:
            message = message[:_MAX_ERROR_CHARS] + "…"
        return self._scrub(message)

    def _scrub(self, text: str) -> str:
        """Remove the API key from text a server or library wrote, in case it was echoed back."""
        if self._api_key is None:
            return text
        secret = self._api_key.get_secret_value()
        return text.replace(secret, "**********") if secret else text


def _cause(exc: Exception) -> BaseException | None:
    """The cause our error keeps: a connection error's (no server text in it), never an answer's."""
    import openai

    return exc if isinstance(exc, openai.APIConnectionError) else None


def _retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``Retry-After-Ms`` or ``Retry-After`` (delta-seconds or an HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            seconds = float(millis) / 1000
        except ValueError:
            seconds = math.nan
        if math.isfinite(seconds):
            return max(0.0, seconds)
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
