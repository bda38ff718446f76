"""A local HTTP server that speaks OpenAI's Chat Completions protocol, scripted per test.

Each request is recorded (method, path, headers, body, arrival time) and answered with the
next scripted action: a JSON reply, an SSE stream, or a dropped connection. Requests that
are not a Chat Completions call are refused the way OpenAI refuses them (404, 400).
Waits (slow replies, gaps between events) end early when the server stops.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # time.monotonic() on arrival

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    """A whole response; ``body`` is sent as JSON unless it is bytes, after ``delay``
    seconds and, if ``until`` is given, once the test sets it."""

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    until: threading.Event | None = None


@dataclass(frozen=True)
class Stream:
    """Server-sent events, ``gap`` seconds apart: a JSON value is sent as one ``data:``
    event; bytes are written as they are (comments, multi-line events, CRLF ...)."""

    events: Sequence[Any]
    gap: float = 0.0
    done: bool = True  # end with ``data: [DONE]``


@dataclass(frozen=True)
class Drop:
    """Close the connection without answering."""


Action = Reply | Stream | Drop


class ChatServer:
    """``ThreadingHTTPServer`` on a free loopback port; ``url`` is the base URL (``.../v1``)."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._script: deque[Action] = deque()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _handler(self))
        # A short poll interval: shutdown() waits up to one of them.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def script(self, *actions: Action) -> None:
        with self._lock:
            self._script.extend(actions)

    def start(self) -> ChatServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def log(self, request: Recorded) -> None:
        """Keep ``request`` in `requests` (called by the handler's thread)."""
        with self._lock:
            self.requests.append(request)

    def _next(self) -> Action:
        with self._lock:
            if self._script:
                return self._script.popleft()
        # Not retryable, so a missing script shows up as one clear failure.
        return Reply(418, error_body("no response scripted for this request", "test_error"))

    def _wait(self, seconds: float) -> bool:
        """Sleep; False if the server is stopping."""
        return not self._stopping.wait(seconds) if seconds > 0 else True

    def _hold(self, until: threading.Event | None) -> bool:
        """Wait for ``until``; False if the server stops first."""
        while until is not None and not until.wait(0.02):
            if self._stopping.is_set():
                return False
        return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out closes its end while a slow reply is pending: expected.
        pass


def _handler(server: ChatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._record()
            self._json(405, error_body("only POST is allowed here", "invalid_request_error"))

        def do_POST(self) -> None:
            request = self._record()
            if request.path != PATH:
                self._json(404, error_body(f"unknown path {request.path}", "invalid_request_error"))
                return
            try:
                body = request.json()
            except ValueError:
                body = None
            if not (isinstance(body, dict) and "model" in body and "messages" in body):
                message = "a body needs model and messages"
                self._json(400, error_body(message, "invalid_request_error"))
                return
            action = server._next()
            if isinstance(action, Drop):
                self.close_connection = True
            elif isinstance(action, Stream):
                self._stream(action)
            elif server._wait(action.delay) and server._hold(action.until):
                self._json(action.status, action.body, action.headers)

        def _record(self) -> Recorded:
            length = int(self.headers.get("content-length", 0))
            body = self.rfile.read(length)
            headers = {name.lower(): value for name, value in self.headers.items()}
            request = Recorded(self.command, self.path, headers, body, time.monotonic())
            server.log(request)
            return request

        def _json(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, stream: Stream) -> None:
            self.close_connection = True
            self.send_response(200)
            self.send_header("content-type", "text/event-stream; charset=utf-8")
            self.send_header("cache-control", "no-cache")
            self.send_header("connection", "close")
            self.end_headers()
            events = [
                event
                if isinstance(event, bytes)
                else b"data: " + json.dumps(event).encode() + b"\n\n"
                for event in stream.events
            ]
            for index, data in enumerate([*events, b"data: [DONE]\n\n"] if stream.done else events):
                if index and not server._wait(stream.gap):
                    return
                self.wfile.write(data)
                self.wfile.flush()

    return Handler


def error_body(message: str, error_type: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


def completion_body(
    content: str | None,
    *,
    tool_calls: list[dict[str, Any]] | None = None,
    finish_reason: str = "stop",
    usage: tuple[int, int] = (10, 5),
    model: str = "gpt-4o-mini-2024-07-18",
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-local",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        ],
        "usage": {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": sum(usage),
        },
    }


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-local",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        "usage": None,
    }


def usage_chunk(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-local",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }
