"""The Redis store on a real three-master Redis Cluster (``redis+cluster://``).

The storage contract runs on the cluster too (``redis-cluster`` in
``tests/store/test_storage_contract.py``); this file covers what only a
cluster has: the URI, the hash-tagged key layout on one master, finding that
master, the slot moving to another master while an engine decides (MOVED,
ASK and the scripts' slot guard), the status command, and a forked process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import engine.store.base
from engine import Outcome, PolicyEngine
from engine.errors import StorageError
from engine.events import Event
from engine.policy.model import BreakerSpec, BudgetSpec
from engine.store.base import open_store
from engine.testing import FakeClock
from tests.redis_server import RedisCluster, RedisServer, free_port, fresh_redis, redis_cluster  # noqa: F401
from tests.store.test_redis import _chain, _until, kinds, write_policies

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_767_225_600.0
OK = Outcome(latency_ms=5.0, input_tokens=4, output_tokens=6)  # 10 tokens per call
FAILED = Outcome(latency_ms=5.0, error="server_error")
SECRET = "TopSecret"  # noqa: S105 - a test password, to look for in messages
BREAKER = BreakerSpec(window="count", window_size=10, minimum_calls=4, failure_rate=50.0, open_for_s=10.0,
                      half_open_permits=2, half_open_max_wait_s=5.0)


@pytest.fixture(autouse=True)
def redis_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    for scheme in ("redis", "redis+cluster"):
        monkeypatch.setitem(engine.store.base.BACKENDS, scheme, "engine.store.redis.store:RedisStore")


def slot_of(prefix: str) -> int:
    from engine.store.redis.cluster import slot_of

    return slot_of(prefix)


def server_tokens(cluster: RedisCluster, port: int, prefix: str, budget: str = "alpha-monthly") -> int:
    """Tokens settled in every period of ``budget`` as the node on ``port`` holds them."""
    client = cluster.client(port)
    total = 0
    for key in client.scan_iter(match=f"{prefix}:b:{budget}:*"):
        if client.type(key) == b"hash":
            value = client.hget(key, "tok")
            total += int(float(value)) if value is not None else 0
    return total


def evalsha_calls(cluster: RedisCluster, port: int) -> int:
    calls: int = cluster.client(port).info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    return calls


def _on_server(store: Any) -> None:
    """Wait until the store is connected and its replies read (a reply slower than timeout_ms reconnects)."""
    assert _until(lambda: store.link.flush() or not store.link.disrupted)
    store.link.flush()


def reshard(cluster: RedisCluster, slot: int, target: int) -> Iterator[str]:
    """Move ``slot`` to the master on port ``target`` as ``redis-cli --cluster reshard`` does, one step per next().

    "migrating": the slot is IMPORTING on the target and MIGRATING on the source;
    "migrated": every key of the slot was MIGRATEd; "moved": every master was told the target serves it.
    """
    source = cluster.owner(slot)
    src, dst = cluster.client(source), cluster.client(target)
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", cluster.node_id(source))
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", cluster.node_id(target))
    yield "migrating"
    while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
        src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
    yield "migrated"
    target_id = cluster.node_id(target)
    for port in [target, source, *(n.port for n in cluster.nodes if n.port not in (source, target))]:
        cluster.client(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    yield "moved"


class Driver:
    """decide+record pairs on an engine with a fake clock: ``alpha`` (monthly budget) succeeds."""

    def __init__(self, eng: PolicyEngine, clock: FakeClock) -> None:
        self.eng, self.clock, self.calls = eng, clock, 0

    def pairs(self, n: int = 1) -> bool:
        """``n`` pairs; False, so ``driver.pairs() or condition`` drives, then checks."""
        for _ in range(n):
            d = self.eng.decide("L1", model="alpha", estimated_tokens=10)
            self.eng.record(d, OK)
            self.calls += 1
            self.clock.advance(0.5)
        return False


# -- URIs --------------------------------------------------------------------------------------


def test_cluster_uris_name_every_seed_node_and_take_the_same_options() -> None:
    from engine.store.redis.store import key_prefix, parse_uri

    opts = parse_uri("redis+cluster://:s%40cret@10.0.0.5:7000,cache-2:7001,[::1]:7002/?namespace=billing"
                     "&policy_set=eu.prod&timeout_ms=50")
    assert opts["cluster"] is True and opts["db"] == 0 and opts["password"] == "s@cret"  # noqa: S105
    assert opts["nodes"] == [("10.0.0.5", 7000), ("cache-2", 7001), ("::1", 7002)]
    assert (opts["host"], opts["port"], opts["namespace"], opts["policy_set"], opts["timeout_ms"]) == (
        "10.0.0.5", 7000, "billing", "eu.prod", 50.0)
    assert key_prefix(opts) == "{billing:eu.prod}"
    for uri in ("redis+cluster://h", "redis+cluster://h/", "redis+cluster://h/0", "REDIS+CLUSTER://h:6379/0"):
        assert parse_uri(uri)["nodes"] == [("h", 6379)]
    user = parse_uri("redis+cluster://app:pw@h:1,h:2")
    assert (user["username"], user["password"], user["nodes"]) == ("app", "pw", [("h", 1), ("h", 2)])
    single = parse_uri("redis://h:1/2?namespace=billing")
    assert (single["cluster"], single["nodes"], key_prefix(single)) == (False, [("h", 1)], "billing:default")


@pytest.mark.parametrize(("uri", "message"), [
    ("redis+cluster://h:7000/1", "database 0 only"),
    ("redis+cluster://h:7000/x", "database 0 only"),
    ("redis+cluster://h:7000,/", "a host and a port"),
    ("redis+cluster:///?namespace=a", "a host and a port"),
    ("redis+cluster://h:port/", "a host and a port"),
    ("redis+cluster://h:70000/", "a host and a port"),
    ("redis+cluster://h:0/", "a host and a port"),
    ("redis+cluster://[::1/", r"expected a redis:// or redis\+cluster:// URI"),
    ("redis+cluster://[::1]x/", "a host and a port"),
    ("redis+cluster://h:1/?cache=5", "unknown option 'cache'"),
    ("redis+cluster://h:1/?namespace=a:b", "expected namespace of letters"),
    ("rediscluster://h:1/", "unsupported store"),
])
def test_bad_cluster_uris_are_refused_clearly(uri: str, message: str) -> None:
    with pytest.raises(StorageError, match=message):
        open_store(uri)


@pytest.mark.parametrize("uri", [
    f"redis+cluster://admin:{SECRET}@h:7000,h:7001/?timeout=5",  # unknown option
    f"redis+cluster://admin:{SECRET}@h:port/",  # bad port
    f"redis+cluster://admin:{SECRET}@h:7000/3",  # another database
    f"redis+cluster://admin:{SECRET}@h:7000,,h:7001/",  # an empty node
    f"redis+cluster://admin:Top/{SECRET}@h:7000/",  # an unescaped '/' in the password
    f"redis+cluster://admin:{SECRET}@[::1/",  # an unbalanced '['
])
def test_a_password_never_appears_in_cluster_uri_errors(uri: str) -> None:
    with pytest.raises(StorageError) as exc:
        open_store(uri)
    assert SECRET not in _chain(exc.value) and "Top/" not in _chain(exc.value)
    assert "***@" in str(exc.value)


def test_the_wrong_scheme_for_the_server_is_a_clear_error(redis_cluster: RedisCluster,  # noqa: F811
                                                          fresh_redis: RedisServer) -> None:  # noqa: F811
    with pytest.raises(StorageError, match=r"not a Redis Cluster node .* use a redis:// store URI"):
        open_store(fresh_redis.uri().replace("redis://", "redis+cluster://").replace("/0?", "/?"))
    first = redis_cluster.nodes[0].port
    namespace = next(f"elsewhere{i}" for i in range(1000)
                     if redis_cluster.owner(slot_of(f"elsewhere{i}:default")) != first)
    with pytest.raises(StorageError, match="a Redis Cluster node: use a redis\\+cluster:// store URI"):
        open_store(f"redis://127.0.0.1:{first}/0?namespace={namespace}")


def test_redirects_are_recognised_whichever_way_the_client_parsed_them() -> None:
    from redis.exceptions import AskError, ClusterDownError, MovedError, ResponseError, TryAgainError

    from engine.store.redis.cluster import CLUSTERDOWN, MIGRATING, MOVED, moved_to, redirect_kind

    # redis-py 5 makes these classes only in its own cluster client: a plain connection gives ResponseError
    assert [redirect_kind(e) for e in (MovedError("3999 10.0.0.7:7001"), ResponseError("MOVED 3999 10.0.0.7:7001"))
            ] == [MOVED, MOVED]
    assert moved_to(MovedError("3999 10.0.0.7:7001")) == moved_to(ResponseError("MOVED 3999 10.0.0.7:7001")) == (
        "10.0.0.7", 7001)
    assert {redirect_kind(e) for e in (AskError("3999 h:1"), ResponseError("ASK 3999 h:1"), TryAgainError("x"),
                                       ResponseError("TRYAGAIN Multiple keys request during rehashing of slot"),
                                       ResponseError("Script attempted to access a non local key in a cluster node "
                                                     "script: 3f07, on @user_script:1."))} == {MIGRATING}
    assert {redirect_kind(e) for e in (ClusterDownError("The cluster is down"),
                                       ResponseError("CLUSTERDOWN The cluster is down"))} == {CLUSTERDOWN}
    assert [redirect_kind(e) for e in (ResponseError("ERR unknown command"), ConnectionError("refused"))] == [None] * 2
    assert moved_to(ResponseError("ERR unknown command")) is None


# -- keys and their master ---------------------------------------------------------------------


def test_every_key_of_a_policy_set_is_in_one_slot_on_its_master(redis_cluster: RedisCluster) -> None:  # noqa: F811
    store: Any = open_store(redis_cluster.uri(namespace="app1", policy_set="eu"))
    other: Any = open_store(redis_cluster.uri(namespace="app1", policy_set="us"))
    try:
        assert store.prefix == "{app1:eu}"
        events: list[Event] = []
        store.make_breaker("gpt-5", BREAKER, events).try_acquire(T0)
        budget = BudgetSpec(name="b", scope="global", target=None, period="daily", tokens=1000, cost_usd=None)
        led = store.make_ledger(budget, events)
        led.settle(T0, led.reserve(T0, 10, 0.0), 7, 0.0)
        led.available(T0)
        slot = slot_of("app1:eu")
        owner = redis_cluster.owner(slot)
        assert store.stats()["node"] == f"127.0.0.1:{owner}"
        client = redis_cluster.client(owner)
        keys = {k.decode() for k in client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)}
        assert {"{app1:eu}:epoch", "{app1:eu}:k:gpt-5", "{app1:eu}:b:b:daily@UTC", f"{{app1:eu}}:b:b:daily@UTC:{T0!r}"
                } <= keys
        assert any(k.startswith("{app1:eu}:ack:") for k in keys)
        assert {k.decode() for k in client.scan_iter(match="{app1:eu}:*")} == keys  # nothing outside the slot
        for node in redis_cluster.nodes:
            if node.port != owner:
                assert list(node.client().scan_iter(match="{app1:eu}:*")) == []
        assert other.make_ledger(budget, []).snapshot(T0)["tokens_used"] == 0  # another policy set
        assert store.make_ledger(budget, []).snapshot(T0)["tokens_used"] == 7
    finally:
        store.close()
        other.close()


def test_processes_on_a_cluster_share_budgets_and_breakers(redis_cluster: RedisCluster,  # noqa: F811
                                                           tmp_path: Path) -> None:
    uri = redis_cluster.uri()
    policies = write_policies(tmp_path / "p", open_for_s=300.0)
    a, b = (PolicyEngine.from_path(policies, clock=FakeClock(T0), store=uri) for _ in range(2))
    try:
        Driver(a, FakeClock(T0)).pairs(3)
        Driver(b, FakeClock(T0)).pairs(2)
        for _ in range(5):
            a.record(a.decide("L1", model="beta"), FAILED)
        _on_server(a.store)
        assert b.state("alpha")["budgets"][0]["tokens_used"] == 50
        assert _until(lambda: b.state("beta")["breaker"]["state"] == "open")
    finally:
        a.close()
        b.close()


def test_the_seed_nodes_may_be_any_of_the_masters(redis_cluster: RedisCluster) -> None:  # noqa: F811
    # a store given one live node that does not serve its slot finds the master that does
    namespace = next(f"seed{i}" for i in range(1000)
                     if redis_cluster.owner(slot_of(f"seed{i}:default")) != redis_cluster.nodes[0].port)
    dead = free_port()  # a seed that does not answer is skipped
    store: Any = open_store(f"redis+cluster://127.0.0.1:{dead},127.0.0.1:{redis_cluster.nodes[0].port}/"
                            f"?namespace={namespace}")
    try:
        led = store.make_ledger(BudgetSpec(name="b", scope="global", target=None, period="daily", tokens=100,
                                           cost_usd=None), [])
        led.settle(T0, None, 5, 0.0)
        assert led.snapshot(T0)["tokens_used"] == 5
        assert store.stats()["node"] == f"127.0.0.1:{redis_cluster.owner(slot_of(namespace + ':default'))}"
        assert store.stats()["redirects"] == {} and not store.link.degraded
    finally:
        store.close()


# -- resharding ----------------------------------------------------------------------------------


def _engine(cluster: RedisCluster, tmp_path: Path) -> tuple[PolicyEngine, Any, list[Event], Driver]:
    clock = FakeClock(T0)
    uri = cluster.uri(timeout_ms=1000, retry_ms=50, max_retry_ms=100, degrade_window_ms=60000)
    eng = PolicyEngine.from_path(write_policies(tmp_path / "p", open_for_s=300.0), clock=clock, store=uri)
    seen: list[Event] = []
    eng.subscribe(seen.append)
    return eng, eng.store, seen, Driver(eng, clock)


def _trip_beta(eng: PolicyEngine) -> None:
    for _ in range(5):
        eng.record(eng.decide("L1", model="beta"), FAILED)
    assert eng.state("beta")["breaker"]["state"] == "open"


def test_a_slot_resharded_mid_run_loses_nothing_and_counts_nothing_twice(
        redis_cluster: RedisCluster, tmp_path: Path) -> None:  # noqa: F811
    eng, store, seen, driver = _engine(redis_cluster, tmp_path)
    slot = slot_of(store.prefix)
    source = redis_cluster.owner(slot)
    target = next(n.port for n in redis_cluster.nodes if n.port != source)
    try:
        driver.pairs(20)
        _trip_beta(eng)
        _on_server(store)
        beta_key = f"{store.prefix}:k:beta"
        opened = redis_cluster.client(source).hgetall(beta_key)
        assert opened[b"st"] == b"open"
        steps = reshard(redis_cluster, slot, target)

        assert next(steps) == "migrating"  # the keys are still on the source: the slot guard refuses scripts
        driver.pairs(20)
        assert store.link.disrupted and store.stats()["redirects"].get("migrating", 0) >= 1

        assert next(steps) == "migrated"  # the keys are on the target: the source answers ASK
        before = store.stats()["redirects"]["migrating"]
        assert _until(lambda: driver.pairs(5) or store.stats()["redirects"]["migrating"] > before)
        assert store.link.disrupted and store.stats()["redirects"].get("moved", 0) == 0

        assert next(steps) == "moved"  # the source answers MOVED: the store follows to the target
        assert _until(lambda: driver.pairs(5) or not store.link.disrupted)
        driver.pairs(20)
        _on_server(store)

        stats = store.stats()
        assert stats["redirects"]["moved"] >= 1
        assert stats["node"] == f"127.0.0.1:{target}" and stats["unconfirmed"] == 0
        assert "StorageDegraded" not in kinds(seen) and "StorageRecovered" not in kinds(seen)
        assert server_tokens(redis_cluster, target, store.prefix) == 10 * driver.calls  # exactly once each
        assert eng.state("alpha")["budgets"][0]["tokens_used"] == 10 * driver.calls
        assert redis_cluster.client(source).execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
        moved = redis_cluster.client(target).hgetall(beta_key)  # the breaker went on: still open, same deadline
        assert (moved[b"st"], moved[b"ou"], moved[b"co"]) == (b"open", opened[b"ou"], opened[b"co"])
        assert eng.state("beta")["breaker"]["state"] == "open" and eng.decide("L1").model == "alpha"

        on_source, on_target = evalsha_calls(redis_cluster, source), evalsha_calls(redis_cluster, target)
        driver.pairs(10)
        _on_server(store)
        assert evalsha_calls(redis_cluster, source) == on_source  # later commands go to the new owner
        assert evalsha_calls(redis_cluster, target) >= on_target + 10
        assert server_tokens(redis_cluster, target, store.prefix) == 10 * driver.calls
    finally:
        eng.close()


def test_a_reshard_between_calls_is_one_redirect_without_events(redis_cluster: RedisCluster,  # noqa: F811
                                                               tmp_path: Path) -> None:
    eng, store, seen, driver = _engine(redis_cluster, tmp_path)
    slot = slot_of(store.prefix)
    source = redis_cluster.owner(slot)
    target = next(n.port for n in redis_cluster.nodes if n.port != source)
    try:
        driver.pairs(10)
        _on_server(store)
        for _ in reshard(redis_cluster, slot, target):  # done between two calls, as a quick reshard is
            pass
        assert _until(lambda: driver.pairs(1) or store.stats()["redirects"].get("moved", 0) > 0)
        assert _until(lambda: driver.pairs(1) or not store.link.disrupted)
        driver.pairs(10)
        _on_server(store)
        assert store.stats()["redirects"] == {"moved": 1}
        assert store.stats()["node"] == f"127.0.0.1:{target}"
        assert kinds(seen) == []
        assert server_tokens(redis_cluster, target, store.prefix) == 10 * driver.calls
        from engine.store.redis.status import read_status

        status = read_status(redis_cluster.uri(namespace=store.options["namespace"]))
        assert status["node"] == f"127.0.0.1:{target}" and status["slot"] == slot
        assert status["budgets"]["alpha-monthly"]["tokens_used"] == 10 * driver.calls
    finally:
        eng.close()


# -- status, fork ----------------------------------------------------------------------------


def test_the_status_command_reads_the_owner_of_the_slot(redis_cluster: RedisCluster, tmp_path: Path) -> None:  # noqa: F811
    uri = redis_cluster.uri(namespace="clusterstatus")
    eng = PolicyEngine.from_path(write_policies(tmp_path / "p", tokens=1000), clock=FakeClock(T0), store=uri)
    try:
        Driver(eng, FakeClock(T0)).pairs(3)
        eng.force("beta", "open")
        _on_server(eng.store)
        owner = redis_cluster.owner(slot_of("clusterstatus:default"))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        out = subprocess.run([sys.executable, "-m", "engine", "status", "--store", uri], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        slot = slot_of("clusterstatus:default")
        assert f"({{clusterstatus:default}}), node 127.0.0.1:{owner} (slot {slot})" in out.stdout
        assert "forced_open" in out.stdout and "30 (+0 reserved) / 1,000 tokens = 3.0%" in out.stdout
        out = subprocess.run([sys.executable, "-m", "engine", "status", "--store", uri, "--format", "json"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
        status = json.loads(out.stdout)
        assert status["prefix"] == "{clusterstatus:default}" and status["node"] == f"127.0.0.1:{owner}"
        assert status["budgets"]["alpha-monthly"]["tokens_used"] == 30
        assert status["breakers"]["beta"]["state"] == "forced_open"
        from engine.observe.sources import RedisSource  # policy-engine serve --store redis+cluster://…

        page = RedisSource(uri).status()
        assert {m["model"]: m["breaker"] for m in page["models"]}["beta"] == "forced_open"
    finally:
        eng.close()
    down = subprocess.run([sys.executable, "-m", "engine", "status", "--store",
                           f"redis+cluster://admin:{SECRET}@127.0.0.1:1/"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert down.returncode == 1 and SECRET not in down.stdout + down.stderr
    assert "cannot read 'redis+cluster://***@127.0.0.1:1/'" in down.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_process_opens_its_own_connection_to_the_master(redis_cluster: RedisCluster, tmp_path: Path) -> None:  # noqa: F811
    eng, store, seen, driver = _engine(redis_cluster, tmp_path)
    try:
        driver.pairs(5)
        _on_server(store)
        pid = os.fork()
        if pid == 0:  # the child: its own connection, found through the slot map as at start
            code = 1
            try:
                driver.pairs(7)
                store.link.flush()
                code = 0 if not store.link.disrupted and store.stats()["unconfirmed"] == 0 else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        driver.pairs(3)
        _on_server(store)
        owner = redis_cluster.owner(slot_of(store.prefix))
        assert server_tokens(redis_cluster, owner, store.prefix) == 10 * (5 + 7 + 3)
        assert kinds(seen) == []
    finally:
        eng.close()
