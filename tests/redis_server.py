"""A real ``redis-server`` for tests, on a free loopback port.

``RedisServer(tmp_dir).start()`` runs ``redis-server`` bound to 127.0.0.1
without persistence (``--save ''``, ``--appendonly no``), waits until it
answers PING (at most :data:`START_TIMEOUT_S`) and :meth:`RedisServer.stop`
ends it. :meth:`RedisServer.kill` and a second :meth:`RedisServer.start`
restart it on the same port, empty, as a crash would leave it.

The ``redis_server`` fixture (session-wide) and ``fresh_redis`` (one server
per test, for tests that kill it) skip with a clear reason when the
``redis-server`` binary or the ``redis`` package is missing; CI installs both.
Import them into a test module: ``from tests.redis_server import redis_server``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

START_TIMEOUT_S = 5.0
BINARY = shutil.which("redis-server")


def missing() -> str | None:
    """Why Redis tests cannot run here, or None."""
    if BINARY is None:
        return "redis-server is not installed (apt-get install -y redis-server)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "the redis package is not installed (pip install 'llm-policy-engine[redis]')"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process on 127.0.0.1; see the module docstring."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        assert BINARY is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        log = open(self.directory / f"redis-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [BINARY, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--loglevel", "warning"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see {self.directory}")
            with contextlib.suppress(Exception):
                if self.client().ping():
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING in {START_TIMEOUT_S} s")
            time.sleep(0.01)

    def client(self) -> Any:
        """A plain redis-py client, for looking at the server's state."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0, socket_connect_timeout=1.0,
                           retry=Retry(NoBackoff(), 0))

    def uri(self, namespace: str | None = None, **options: Any) -> str:
        """A store URI for this server; a fresh namespace unless one is given."""
        ns = namespace or f"t{uuid.uuid4().hex[:12]}"
        query = "&".join([f"namespace={ns}", *(f"{k}={v}" for k, v in options.items())])
        return f"redis://127.0.0.1:{self.port}/0?{query}"

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is saved."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None


def _skip_if_missing() -> None:
    reason = missing()
    if reason is not None:
        if os.environ.get("REQUIRE_REDIS") == "1":  # CI installs it: a missing server is a failure there
            pytest.fail(f"REQUIRE_REDIS=1 but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One server for the whole session; tests keep apart by namespace."""
    _skip_if_missing()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test's own (it may kill and restart it)."""
    _skip_if_missing()
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()
