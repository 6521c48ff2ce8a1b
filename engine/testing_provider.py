"""A fake LLM provider: a real HTTP server on a loopback port, for tests against the official SDKs.

:class:`FakeProvider` (exposed as ``engine.testing.FakeProvider``) speaks
OpenAI chat completions (``POST /v1/chat/completions``, JSON or SSE with a
final usage chunk when ``stream_options.include_usage``) and the Anthropic
Messages API (``POST /v1/messages``, JSON or its event stream). Point a real
client at it::

    with FakeProvider() as fp:
        fp.fail("gpt-4.1-mini", 503)
        client = openai.OpenAI(base_url=fp.openai_url, api_key="test", max_retries=0)

Per model (the ``model`` of the request) it injects faults, in the order
added, each ``times`` times (``None``: for good): an HTTP status with the
provider's error body (429 with ``Retry-After``, 500, 503, 529), ``"hang"``
(no answer until ``hang_s`` or :meth:`FakeProvider.close`),
``"drop"`` (the connection closes after ``after_chunks`` content chunks of a
stream), ``"stream_error"`` (a 200 stream that reports
``data: {"error": ...}`` after ``after_chunks`` chunks, as vLLM and sglang
do), ``"context_length"`` (400), ``"not_found"`` (404),
``"insufficient_quota"`` (429) and ``"credit"`` (Anthropic's 400 "credit
balance is too low"). Replies are scheduled: the first content chunk after
``ttft_s``, the next ones ``chunk_interval_s`` apart. A request whose last
message is the assistant's (a prefill, the partial output of a failed
stream) is answered with the rest of the reply after it. Standard library
only; every request is kept in :attr:`FakeProvider.requests`.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeProvider", "Fault", "Reply", "Request"]

_KINDS = ("status", "hang", "drop", "stream_error", "context_length", "not_found", "insufficient_quota", "credit")


@dataclass
class Fault:
    """One injected failure; ``times`` left (``None``: every request)."""

    kind: str
    status: int = 500
    retry_after: float | None = None
    after_chunks: int = 0
    hang_s: float = 60.0
    times: int | None = None


@dataclass
class Reply:
    """What a model answers and when: first content after ``ttft_s``, then a chunk per ``chunk_interval_s``."""

    text: str = "Hello from the fake provider."
    ttft_s: float = 0.0
    chunk_interval_s: float = 0.0
    cached_tokens: int = 0

    def chunks(self) -> list[str]:
        return re.findall(r"\s*\S+\s*$|\s*\S+", self.text)


@dataclass
class Request:
    """A request the provider received."""

    api: str  # "openai" or "anthropic"
    model: str
    stream: bool
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased
    at: float = 0.0


def _tokens(body: dict[str, Any]) -> int:
    """A deterministic prompt size: one token per word of every message and the system prompt."""
    def words(content: Any) -> int:
        if isinstance(content, str):
            return len(content.split())
        if isinstance(content, list):
            return sum(words(part.get("text", "")) for part in content if isinstance(part, dict))
        return 0
    return sum(words(m.get("content")) for m in body.get("messages", [])) + words(body.get("system", ""))


def _error_body(api: str, kind: str, status: int, message: str, code: str | None) -> dict[str, Any]:
    if api == "anthropic":
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


_CANNED: dict[str, tuple[int, str, str, str | None]] = {  # kind -> status, error type, message, code
    "context_length": (400, "invalid_request_error",
                       "This model's maximum context length is 8192 tokens. However, your messages resulted "
                       "in 9000 tokens. (prompt is too long)", "context_length_exceeded"),
    "not_found": (404, "not_found_error", "The model does not exist or you do not have access to it.",
                  "model_not_found"),
    "insufficient_quota": (429, "insufficient_quota",
                           "You exceeded your current quota, please check your plan and billing details.",
                           "insufficient_quota"),
    "credit": (400, "invalid_request_error",
               "Your credit balance is too low to access the Anthropic API.", None),
}
_STATUS_TYPES = {429: "rate_limit_error", 500: "api_error", 503: "api_error", 529: "overloaded_error"}


class FakeProvider:
    """An OpenAI- and Anthropic-compatible server on 127.0.0.1, on a free port, in a daemon thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        self._faults: dict[str, list[Fault]] = {}
        self._replies: dict[str, Reply] = {}
        self.default_reply = Reply()
        self.requests: list[Request] = []
        self._stop = threading.Event()
        provider = self

        class Handler(_Handler):
            fake = provider

        self._server = _Server((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-llm-provider", daemon=True)
        self._thread.start()

    # -- addresses -------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def openai_url(self) -> str:
        """``base_url`` for ``openai.OpenAI``."""
        return self.url + "/v1"

    @property
    def anthropic_url(self) -> str:
        """``base_url`` for ``anthropic.Anthropic``."""
        return self.url

    # -- scripting -------------------------------------------------------------
    def reply(self, model: str, text: str | None = None, *, ttft_s: float = 0.0, chunk_interval_s: float = 0.0,
              cached_tokens: int = 0) -> None:
        """Set what ``model`` answers and its timing."""
        with self._lock:
            self._replies[model] = Reply(text if text is not None else self.default_reply.text, ttft_s,
                                         chunk_interval_s, cached_tokens)

    def fail(self, model: str, kind: int | str, *, times: int | None = None, retry_after: float | None = None,
             after_chunks: int = 0, hang_s: float = 60.0) -> None:
        """Add a fault for ``model``: an HTTP status (int) or one of the named kinds."""
        if isinstance(kind, int):
            if not 400 <= kind <= 599:
                raise ValueError(f"expected an HTTP error status 400-599, got {kind}")
            fault = Fault("status", kind, retry_after, times=times)
        elif kind in _KINDS:
            fault = Fault(kind, 500, retry_after, after_chunks, hang_s, times)
        else:
            raise ValueError(f"unknown fault {kind!r}; expected an HTTP status or one of {', '.join(_KINDS[1:])}")
        with self._lock:
            self._faults.setdefault(model, []).append(fault)

    def heal(self, model: str | None = None) -> None:
        """Remove the faults of ``model`` (of every model when ``None``)."""
        with self._lock:
            if model is None:
                self._faults.clear()
            else:
                self._faults.pop(model, None)

    def calls(self, model: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if model is None or r.model == model]

    def _take(self, model: str) -> tuple[Fault | None, Reply]:
        with self._lock:
            fault = None
            for f in self._faults.get(model, ()):
                if f.times is None or f.times > 0:
                    if f.times is not None:
                        f.times -= 1
                    fault = f
                    break
            return fault, self._replies.get(model, self.default_reply)

    # -- lifetime --------------------------------------------------------------
    def close(self) -> None:
        """Stop serving; hung requests return at once."""
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> FakeProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (a closed stream, a timed-out request) is not an error worth a traceback."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeProvider
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # no Nagle: headers, body and each stream chunk leave at once (else a delayed ACK adds ~40 ms)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        api = "openai" if path.endswith("/chat/completions") else "anthropic" if path.endswith("/messages") else ""
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            body = None
        if not api or not isinstance(body, dict):
            self._json(404 if not api else 400, {"error": {"message": f"no such route or bad JSON: {path}"}})
            return
        model = str(body.get("model", ""))
        stream = bool(body.get("stream"))
        fp = self.fake
        with fp._lock:
            fp.requests.append(Request(api, model, stream, body, {k.lower(): v for k, v in self.headers.items()},
                                        time.monotonic()))
        fault, reply = fp._take(model)
        if fault is not None and fault.kind == "hang":
            fp._stop.wait(fault.hang_s)
            self.close_connection = True
            return
        if fault is not None and fault.kind in _CANNED:
            status, kind, message, code = _CANNED[fault.kind]
            self._json(status, _error_body(api, kind, status, message.replace("The model", f"The model `{model}`"),
                                           code))
            return
        if fault is not None and fault.kind == "status":
            headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
            kind = _STATUS_TYPES.get(fault.status, "api_error")
            self._json(fault.status, _error_body(api, kind, fault.status, f"injected HTTP {fault.status}", None),
                       headers)
            return
        chunks = reply.chunks()
        prefix = _prefill(body)
        if prefix:  # carry on from the partial output: answer the rest only
            text = reply.text[len(prefix):] if reply.text.startswith(prefix) else reply.text
            chunks = Reply(text).chunks()
        usage_in = _tokens(body)
        if not stream:
            self._sleep(reply.ttft_s + reply.chunk_interval_s * max(0, len(chunks) - 1))
            self._json(200, _complete(api, model, "".join(chunks), usage_in, len(chunks), reply.cached_tokens))
            return
        self._stream(api, model, chunks, reply, usage_in, fault, body)

    # -- writing ---------------------------------------------------------------
    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.fake._stop.wait(seconds)

    def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _stream(self, api: str, model: str, chunks: list[str], reply: Reply, usage_in: int, fault: Fault | None,
                body: dict[str, Any]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        frames = _OpenAIFrames(model, usage_in, reply.cached_tokens,
                               bool((body.get("stream_options") or {}).get("include_usage"))) \
            if api == "openai" else _AnthropicFrames(model, usage_in, reply.cached_tokens)
        for frame in frames.start():
            self._chunk(frame)
        cut = fault.after_chunks if fault is not None and fault.kind in ("drop", "stream_error") else None
        for i, piece in enumerate(chunks):
            if cut is not None and i == cut:
                break
            self._sleep(reply.ttft_s if i == 0 else reply.chunk_interval_s)
            self._chunk(frames.delta(piece))
        if fault is not None and fault.kind == "drop":
            self.close_connection = True
            try:  # mid-body: no terminating chunk, so the client sees an incomplete message
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if fault is not None and fault.kind == "stream_error":
            self._chunk(frames.error("injected error inside a 200 stream"))
        else:
            for frame in frames.end(len(chunks)):
                self._chunk(frame)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def _prefill(body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    last = messages[-1] if messages else None
    if isinstance(last, dict) and last.get("role") == "assistant" and isinstance(last.get("content"), str):
        return str(last["content"])
    return ""


def _complete(api: str, model: str, text: str, tin: int, tout: int, cached: int) -> dict[str, Any]:
    if api == "anthropic":
        return {"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": tin, "output_tokens": tout, "cache_read_input_tokens": cached}}
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": tin, "completion_tokens": tout, "total_tokens": tin + tout,
                      "prompt_tokens_details": {"cached_tokens": cached}}}


class _OpenAIFrames:
    def __init__(self, model: str, tin: int, cached: int, usage: bool) -> None:
        self.model, self.tin, self.cached, self.usage = model, tin, cached, usage

    def _data(self, choices: list[Any], **extra: Any) -> str:
        payload = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                   "model": self.model, "choices": choices, **extra}
        return f"data: {json.dumps(payload)}\n\n"

    def start(self) -> list[str]:
        return [self._data([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])]

    def delta(self, text: str) -> str:
        return self._data([{"index": 0, "delta": {"content": text}, "finish_reason": None}])

    def error(self, message: str) -> str:
        return f"data: {json.dumps({'error': {'message': message, 'type': 'server_error', 'code': 500}})}\n\n"

    def end(self, tout: int) -> list[str]:
        frames = [self._data([{"index": 0, "delta": {}, "finish_reason": "stop"}])]
        if self.usage:
            frames.append(self._data([], usage={"prompt_tokens": self.tin, "completion_tokens": tout,
                                                "total_tokens": self.tin + tout,
                                                "prompt_tokens_details": {"cached_tokens": self.cached}}))
        return frames + ["data: [DONE]\n\n"]


class _AnthropicFrames:
    def __init__(self, model: str, tin: int, cached: int) -> None:
        self.model, self.tin, self.cached = model, tin, cached

    @staticmethod
    def _event(name: str, payload: dict[str, Any]) -> str:
        return f"event: {name}\ndata: {json.dumps({'type': name, **payload})}\n\n"

    def start(self) -> list[str]:
        message: dict[str, Any] = {"id": "msg_fake", "type": "message", "role": "assistant", "model": self.model,
                                   "content": [],
                   "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": self.tin, "output_tokens": 1, "cache_read_input_tokens": self.cached}}
        return [self._event("message_start", {"message": message}),
                self._event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})]

    def delta(self, text: str) -> str:
        return self._event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}})

    def error(self, message: str) -> str:
        return self._event("error", {"error": {"type": "api_error", "message": message}})

    def end(self, tout: int) -> list[str]:
        return [self._event("content_block_stop", {"index": 0}),
                self._event("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                              "usage": {"output_tokens": tout}}),
                self._event("message_stop", {})]
