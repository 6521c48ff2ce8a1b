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

:class:`RedisCluster` is a Redis Cluster of three masters (no replicas) on
loopback: three ``redis-server --cluster-enabled yes`` processes joined by
``redis-cli --cluster create``, ready once every node reports
``cluster_state:ok`` and all agree on who serves each slot. The fixtures
``redis_cluster`` (session-wide) and ``fresh_redis_cluster`` (one cluster per
test, for tests that reshard it) skip like the others when ``redis-cli`` is
missing too (a failure under ``REQUIRE_REDIS=1``).
"""

from __future__ import annotations

import contextlib
import os
import random
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
#: How long a new cluster may take until every node reports cluster_state:ok.
CLUSTER_TIMEOUT_S = 20.0
BINARY = shutil.which("redis-server")
CLI = shutil.which("redis-cli")


def missing(cluster: bool = False) -> str | None:
    """Why Redis tests (with ``cluster``: Redis Cluster tests) cannot run here, or None."""
    if BINARY is None:
        return "redis-server is not installed (apt-get install -y redis-server)"
    if cluster and CLI is None:
        return "redis-cli is not installed (apt-get install -y redis-tools), needed to create a Redis Cluster"
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


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, both below Linux's ephemeral range."""
    for _ in range(1000):
        port = random.randrange(10000, 22700)  # noqa: S311 - not for security
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free pair of ports (port, port + 10000) found")


class RedisServer:
    """One redis-server process on 127.0.0.1; see the module docstring."""

    def __init__(self, directory: Path, port: int | None = None, extra: tuple[str, ...] = ()) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        assert BINARY is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        log = open(self.directory / f"redis-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [BINARY, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--loglevel", "warning", *self.extra],
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


class RedisCluster:
    """Three redis-server masters joined into one Redis Cluster on 127.0.0.1; see the module docstring."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.directory = directory
        self.masters = masters
        self.nodes: list[RedisServer] = []
        self.started_s = 0.0  # how long start() took

    def start(self) -> RedisCluster:
        assert CLI is not None
        began = time.monotonic()
        for attempt in range(3):  # a port taken between the check and the start: try other ones
            ports: list[int] = []
            while len(ports) < self.masters:
                port = cluster_port()
                if port not in ports and port + 10000 not in ports and port - 10000 not in ports:
                    ports.append(port)
            self.nodes = [RedisServer(self.directory / f"node-{port}", port, extra=(
                "--cluster-enabled", "yes", "--cluster-config-file", str(self.directory / f"nodes-{port}.conf"),
                "--cluster-node-timeout", "5000")) for port in ports]
            try:
                for node in self.nodes:
                    node.start()
                break
            except RuntimeError:
                self.stop()
                if attempt == 2:
                    raise
        try:
            create = subprocess.run(
                [CLI, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes), "--cluster-replicas",
                 "0", "--cluster-yes"], capture_output=True, text=True, timeout=CLUSTER_TIMEOUT_S, check=False)
            if create.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {create.stdout[-2000:]}"
                                   f"{create.stderr[-2000:]}")
            deadline = time.monotonic() + CLUSTER_TIMEOUT_S
            while not self._ready():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the cluster did not reach cluster_state:ok in {CLUSTER_TIMEOUT_S} s")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        self.started_s = time.monotonic() - began
        return self

    def _ready(self) -> bool:
        """Every node says cluster_state:ok and all give the same slot map."""
        maps = []
        for node in self.nodes:
            try:
                client = node.client()
                if b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                    return False
                maps.append(self._slot_map(client))
            except Exception:  # not up yet
                return False
        return all(m == maps[0] for m in maps) and sum(end - start + 1 for start, end, _ in maps[0]) == 16384

    @staticmethod
    def _slot_map(client: Any) -> list[tuple[int, int, int]]:
        return sorted((int(r[0]), int(r[1]), int(r[2][1])) for r in client.execute_command("CLUSTER", "SLOTS"))

    def client(self, port: int | None = None) -> Any:
        """A plain client of one node (the first unless ``port`` is given)."""
        return self.node(port or self.nodes[0].port).client()

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def node_id(self, port: int) -> str:
        node_id: bytes = self.node(port).client().execute_command("CLUSTER", "MYID")
        return node_id.decode()

    def owner(self, slot: int) -> int:
        """The port of the master serving ``slot``, as the first node sees it."""
        return next(port for start, end, port in self._slot_map(self.client()) if start <= slot <= end)

    def uri(self, namespace: str | None = None, **options: Any) -> str:
        """A ``redis+cluster://`` store URI naming every node; a fresh namespace unless one is given."""
        ns = namespace or f"t{uuid.uuid4().hex[:12]}"
        query = "&".join([f"namespace={ns}", *(f"{k}={v}" for k, v in options.items())])
        return f"redis+cluster://{','.join(f'127.0.0.1:{n.port}' for n in self.nodes)}/?{query}"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _skip_if_missing(cluster: bool = False) -> None:
    reason = missing(cluster)
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


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One three-master cluster for the whole session; tests keep apart by namespace (and so by slot)."""
    _skip_if_missing(cluster=True)
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def fresh_redis_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A cluster of this test's own (it may move slots between its masters)."""
    _skip_if_missing(cluster=True)
    cluster = RedisCluster(tmp_path / "cluster").start()
    try:
        yield cluster
    finally:
        cluster.stop()
