"""A local OpenAI-compatible server for the provider's tests: the stdlib's ``ThreadingHTTPServer`` playing
``/v1/chat/completions``, scripted per test, no network beyond 127.0.0.1.

A reply is a chat completion (or an error) as JSON; when the request asks for ``stream``, a 200 completion
is sent as a real server streams it: server-sent ``chat.completion.chunk`` events, the text and each tool
call's arguments cut in pieces, and the usage in a last chunk when ``stream_options.include_usage`` asks
for it. A reply scripted to hang waits on an Event that ``stop`` sets, so a timeout test costs the client's
timeout, never the server's wait.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

COMPLETION_PATH = "/v1/chat/completions"


def chat_completion(
    text: str | None = "Hello from the fake.",
    model: str = "fake-model-0613",
    tool_calls: list[dict[str, Any]] | None = None,
    usage: tuple[int, int] | None = (11, 5),
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if tool_calls else "stop"}],
    }
    if usage is not None:
        body["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
    return body


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def openai_error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": None}}


@dataclass
class Reply:
    status: int = 200
    body: dict[str, Any] | str = field(default_factory=chat_completion)
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False
    #: Put the request's Authorization header into the error message, as a careless server might.
    echo_auth: bool = False
    #: Raw server-sent events to answer a streamed request with, instead of cutting ``body`` in chunks.
    events: list[str] | None = None
    #: Close the connection after this many bytes of a streamed answer (a stream broken off).
    cut_after: int | None = None


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any
    #: When the request arrived (``time.monotonic()``): the rate-limit test counts requests per window.
    arrived: float = 0.0


def sse_chunks(body: dict[str, Any], include_usage: bool) -> Iterator[dict[str, Any]]:
    """``body`` (a chat completion) as the chunks a server streams it in."""
    base = {"id": body.get("id", "chatcmpl-1"), "object": "chat.completion.chunk",
            "created": body.get("created", 0), "model": body.get("model")}
    choice = body["choices"][0]
    message = choice["message"]
    yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    text = message.get("content") or ""
    half = len(text) // 2
    for piece in (text[:half], text[half:]):
        if piece:
            yield {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
    for i, call in enumerate(message.get("tool_calls") or []):
        arguments = call["function"]["arguments"]
        half = len(arguments) // 2
        first = {"index": i, "id": call["id"], "type": "function",
                 "function": {"name": call["function"]["name"], "arguments": arguments[:half]}}
        yield {**base, "choices": [{"index": 0, "delta": {"tool_calls": [first]}, "finish_reason": None}]}
        rest = {"index": i, "function": {"arguments": arguments[half:]}}
        yield {**base, "choices": [{"index": 0, "delta": {"tool_calls": [rest]}, "finish_reason": None}]}
    yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason")}]}
    if include_usage and "usage" in body:
        yield {**base, "choices": [], "usage": body["usage"]}


class FakeOpenAI:
    def __init__(self) -> None:
        self.replies: list[Reply] = []
        #: The reply given when none is scripted (a completion).
        self.default = Reply()
        self.received: list[Received] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                arrived = time.monotonic()
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw
                headers = {k.lower(): v for k, v in self.headers.items()}
                with fake._lock:
                    fake.received.append(Received(self.path, headers, body, arrived))
                    reply = fake.replies.pop(0) if fake.replies else fake.default
                if self.path != COMPLETION_PATH:
                    reply = Reply(404, openai_error(f"no route {self.path}"))
                if reply.hang:
                    fake.release.wait(timeout=10)
                payload = reply.body
                if reply.echo_auth:
                    payload = openai_error(f"Incorrect API key provided: {headers.get('authorization')}")
                streamed = isinstance(body, dict) and body.get("stream") and reply.status == 200
                try:
                    if streamed:
                        self._stream(reply, payload, body)
                    else:
                        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                        self._send(reply, "application/json", data)
                except OSError:
                    pass  # the client gave up (a timeout test); nothing to answer

            def _stream(self, reply: Reply, payload: dict[str, Any] | str, request: dict[str, Any]) -> None:
                if reply.events is not None:
                    events = reply.events
                else:
                    assert isinstance(payload, dict), "a streamed reply needs a completion body or events"
                    include = bool((request.get("stream_options") or {}).get("include_usage"))
                    events = [json.dumps(c) for c in sse_chunks(payload, include)] + ["[DONE]"]
                data = "".join(f"data: {e}\n\n" for e in events).encode()
                if reply.cut_after is not None:
                    # Promise the whole answer, send part of it, close: the client sees the stream broken off.
                    self._send(reply, "text/event-stream", data[: reply.cut_after], length=len(data))
                    self.close_connection = True
                    return
                self._send(reply, "text/event-stream", data)

            def _send(self, reply: Reply, content_type: str, data: bytes, length: int | None = None) -> None:
                self.send_response(reply.status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data) if length is None else length))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        # A short poll interval makes shutdown() quick (it waits for the loop's next poll).
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self.replies.extend(replies)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def serving(default: Reply | None = None) -> Iterator[FakeOpenAI]:
    """A started fake, stopped after (a fixture's body: ``yield from serving()``); ``default`` answers
    every request that has no scripted reply."""
    server = FakeOpenAI()
    if default is not None:
        server.default = default
    server.start()
    try:
        yield server
    finally:
        server.stop()
