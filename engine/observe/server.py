"""A small HTTP server for watching an engine: ``/``, ``/status``, ``/healthz`` and ``/metrics``.

``serve(eng)`` starts it in a daemon thread for an engine embedded in this
process; ``policy-engine serve --store …`` runs it over a store a fleet
writes. It binds ``127.0.0.1`` by default (pass ``host`` to expose it) and
answers only GET. Routes:

- ``/``: the live page (HTML, no external assets) that polls ``/status``;
- ``/status``: JSON (see :mod:`engine.observe.sources`);
- ``/healthz``: ``200 ok`` while the source can be read and a model can serve
  every tier, ``503`` with the reason otherwise;
- ``/metrics``: the Prometheus exposition (an in-process engine with
  ``prometheus_client`` installed; ``404`` otherwise, saying why).
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from engine.errors import PolicyEngineError
from engine.observe.page import PAGE
from engine.observe.sources import EngineSource, Source

if TYPE_CHECKING:
    from engine.core import PolicyEngine

log = logging.getLogger("engine.observe")


class ObserveServer:
    """A running server: ``url``, ``port``, ``close()``; a context manager."""

    def __init__(self, source: Source, host: str = "127.0.0.1", port: int = 0) -> None:
        self.source = source
        handler = type("Handler", (_Handler,), {"source": source})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        address = self.httpd.server_address
        self.host, self.port = str(address[0]), int(address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in str(self.host) else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> ObserveServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="engine-observe", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(5)
        self.httpd.server_close()
        unsubscribe = getattr(self.source, "unsubscribe", None)
        if callable(unsubscribe):
            unsubscribe()

    def __enter__(self) -> ObserveServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(engine: PolicyEngine | Source, *, host: str = "127.0.0.1", port: int = 0) -> ObserveServer:
    """Serve ``engine`` (or any :class:`Source`) on ``host:port`` in a daemon thread; ``port=0`` picks a free one."""
    from engine.core import PolicyEngine

    source: Source = EngineSource(engine) if isinstance(engine, PolicyEngine) else engine
    return ObserveServer(source, host, port).start()


#: ``eng``'s Prometheus metrics on ``port`` (the same server, all routes).
serve_metrics = serve


class _Handler(BaseHTTPRequestHandler):
    source: Source
    server_version = "llm-policy-engine"
    sys_version = ""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path in ("/", "/index.html"):
                self._send(200, PAGE.encode(), "text/html; charset=utf-8")
            elif path == "/status":
                self._send(200, json.dumps(self.source.status(), allow_nan=False).encode(), "application/json")
            elif path == "/healthz":
                self._healthz()
            elif path == "/metrics":
                found = self.source.metrics()
                if found is None:
                    self._send(404, b"no metrics here: Prometheus metrics are exported by an engine in its own "
                                    b"process (engine.observe.serve(eng)) with prometheus_client installed\n",
                               "text/plain; charset=utf-8")
                else:
                    self._send(200, *found)
            else:
                self._send(404, b"not found: try /, /status, /healthz or /metrics\n", "text/plain; charset=utf-8")
        except (PolicyEngineError, OSError, ValueError) as exc:
            self._send(503, f"cannot read {self.source.name}: {exc}\n".encode(), "text/plain; charset=utf-8")

    def _healthz(self) -> None:
        status = self.source.status()
        down = [t["tier"] for t in status["tiers"] if t["available_models"] == 0]
        if down:
            self._send(503, f"no model available for tier {', '.join(down)}\n".encode(), "text/plain; charset=utf-8")
        else:
            self._send(200, f"ok ({status['health']})\n".encode(), "text/plain; charset=utf-8")

    def do_HEAD(self) -> None:
        self._send(405, b"", "text/plain")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; style-src 'unsafe-inline'; "
                         "script-src 'unsafe-inline'")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)
