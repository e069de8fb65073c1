"""A provider for any server that speaks OpenAI's chat-completions API (OpenAI, vLLM, Ollama, …).

This module is the one boundary where httpx errors become ours:

==============================================  ======================================
what happened                                   raised
==============================================  ======================================
timeout, connection refused or reset            ProviderUnavailable (transient)
HTTP 429 or 5xx                                 ProviderOverloaded (transient), with retry_after
any other 4xx                                   ProviderRejected (permanent), with status_code
2xx whose body is not a chat completion         MalformedCompletion (permanent, see its docstring)
==============================================  ======================================

The API key is a :class:`~pydantic.SecretStr`: it is unwrapped only to build the ``Authorization``
header of each request, is never set on the client, and is scrubbed from any text the provider
sends back before that text reaches an exception message or a log line.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from relaybus.tasks.errors import ProviderRejected, ProviderUnavailable
from relaybus.tasks.llm._errors import MalformedCompletion, ProviderOverloaded
from relaybus.tasks.llm._models import Completion, CompletionRequest, Usage

logger = logging.getLogger("relaybus.tasks.llm")

_MAX_ERROR_CHARS = 500
_MAX_BACKOFF_S = 30.0


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    content: str


class _Choice(BaseModel):
    model_config = ConfigDict(extra="ignore")
    message: _Message


class _Usage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)


class _ChatResponse(BaseModel):
    """The part of a chat-completions answer we use; servers add fields freely, so extras are ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    choices: list[_Choice] = Field(min_length=1)
    # Several compatible servers leave usage out; zero is the honest "not reported".
    usage: _Usage | None = None


class OpenAICompatibleProvider:
    """``POST {base_url}/chat/completions`` with the request as OpenAI chat-completions JSON.

    ``max_retries_in_process`` retries transient failures here, waiting ``Retry-After`` when the
    provider sent one (capped at 30 s) or an exponential backoff. It defaults to 0 because the task
    base already retries :class:`~tasks.errors.ProviderUnavailable` with backoff, and retrying in
    two places multiplies the attempts. Pass ``client`` to share a connection pool; a client given
    is never closed here, and ``timeout_s`` is applied to every request either way.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: SecretStr | None = None,
        timeout_s: float = 30.0,
        max_retries_in_process: int = 0,
        client: httpx.Client | None = None,
        *,
        name: str = "openai",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if httpx.URL(base_url).scheme not in ("http", "https"):
            # httpx would report this on each call as a transport error, which we retry.
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if max_retries_in_process < 0:
            raise ValueError(f"max_retries_in_process must be >= 0, got {max_retries_in_process}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.max_retries_in_process = max_retries_in_process
        self._owns_client = client is None
        self._client = client if client is not None else httpx.Client(timeout=timeout_s)
        self._sleep = sleep

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def __repr__(self) -> str:
        key = "None" if self._api_key is None else repr(self._api_key)  # SecretStr('**********')
        return (
            f"OpenAICompatibleProvider(base_url={self.base_url!r}, model={self.model!r}, "
            f"api_key={key}, timeout_s={self.timeout_s!r})"
        )

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> OpenAICompatibleProvider:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def complete(self, request: CompletionRequest) -> Completion:
        attempt = 0
        while True:
            try:
                return self._complete_once(request)
            except ProviderUnavailable as exc:
                if attempt >= self.max_retries_in_process:
                    raise
                delay = _backoff(exc, attempt)
                logger.warning(
                    "LLM provider unavailable (%s); retry %d of %d in %.2fs",
                    exc,
                    attempt + 1,
                    self.max_retries_in_process,
                    delay,
                )
                self._sleep(delay)
                attempt += 1

    def _complete_once(self, request: CompletionRequest) -> Completion:
        model = request.model or self.model
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "temperature": request.temperature,
        }
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        headers = {"Accept": "application/json"}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"

        try:
            response = self._client.post(self.url, json=body, headers=headers, timeout=self.timeout_s)
        except httpx.TimeoutException as exc:
            raise ProviderUnavailable(
                f"LLM provider at {self.url} timed out after {self.timeout_s}s ({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise ProviderUnavailable(
                f"LLM provider at {self.url} could not be reached: {self._scrub(str(exc))}"
            ) from exc

        status = response.status_code
        if status == 429 or status >= 500:
            retry_after = _retry_after(response.headers.get("Retry-After"))
            raise ProviderOverloaded(
                f"LLM provider at {self.url} answered HTTP {status}: {self._error_message(response)}",
                status_code=status,
                retry_after=retry_after,
            )
        if status >= 400:
            raise ProviderRejected(status, self._error_message(response))
        if not 200 <= status < 300:
            raise MalformedCompletion(
                f"LLM provider at {self.url} answered HTTP {status}, expected a 2xx chat completion",
                status_code=status,
            )

        try:
            parsed = _ChatResponse.model_validate_json(response.content)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:3]
            )
            raise MalformedCompletion(
                f"LLM provider at {self.url} answered HTTP {status} with a body that is not a chat "
                f"completion ({problems})",
                status_code=status,
            ) from None  # pydantic's error quotes the body, which we have not scrubbed
        usage = parsed.usage or _Usage()
        completion = Completion(
            text=parsed.choices[0].message.content,
            model=parsed.model or model,
            provider=self.name,
            usage=Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens),
            request_fingerprint=request.fingerprint(),
        )
        logger.debug(
            "LLM completion from %s: model=%s prompt_tokens=%d completion_tokens=%d",
            self.url,
            completion.model,
            completion.usage.prompt_tokens,
            completion.usage.completion_tokens,
        )
        return completion

    def _error_message(self, response: httpx.Response) -> str:
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


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
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


def _backoff(error: ProviderUnavailable, attempt: int) -> float:
    if isinstance(error, ProviderOverloaded) and error.retry_after is not None:
        return min(error.retry_after, _MAX_BACKOFF_S)
    return min(0.5 * 2.0**attempt, _MAX_BACKOFF_S)
