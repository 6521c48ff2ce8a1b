"""A fleet on one Redis: 8 processes, leased budgets against the exact mode.

Each row starts 8 worker processes (``spawn``) on one ``redis-server`` that
the fixture starts on a free loopback port, all on one namespace with the
shipped policy set (``leased``: every budget with ``lease: {size: 0.01}``).
After a common start signal every worker runs ``decide("L2")`` +
``record`` for :data:`RUN_S` seconds, timing each ``decide``. Reported:

* aggregate pairs per second (the workers' pairs over the run);
* Redis commands per pair, from the server's ``INFO commandstats`` (every
  command the server ran during the run, over every pair);
* p99 of ``decide`` across all workers;
* overspend at exhaustion: a second phase on a fresh namespace with a budget
  of :data:`SMALL` tokens on the L2 model, every worker deciding until the
  tier has fallen back for good; the server's settled tokens minus the
  limit, against the documented bound (the calls in flight: one per worker
  here, of :data:`CALL_TOKENS` each, as the workers are sequential).

Run::

    python -m pytest benchmarks/test_bench_redis_fleet.py --benchmark-only -s
"""

from __future__ import annotations

import multiprocessing
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from benchmarks.conftest import ROOT
from tests.redis_server import RedisServer, redis_server  # noqa: F401 - a fixture

WORKERS = 8
RUN_S = 4.0
SMALL = 200_000
CALL_TOKENS = 15  # OK's input + output
SPAWN = multiprocessing.get_context("spawn")
LEASE = "  lease: {size: 0.01, ttl_s: 30, sync_ms: 100}\n"


def policies(directory: Path, leased: bool, small: bool) -> Path:
    """The shipped policy set; ``leased``: every budget leased; ``small``: L2's model on a small budget."""
    shutil.copytree(ROOT / "policies", directory, ignore=shutil.ignore_patterns("tests"))
    budgets = directory / "budgets.yaml"
    text = budgets.read_text()
    if leased:
        text = text.replace("defaults:\n", "defaults:\n" + LEASE, 1)
    if small:
        text += f"  l2-small:\n    applies_to: {{model: gpt-4.1-mini}}\n    period: daily\n    tokens: {SMALL}\n"
    budgets.write_text(text)
    return directory


def worker(path: str, uri: str, run_s: float, until_exhausted: bool, ready: Any, start: Any, out: Any) -> None:
    import engine.store.base
    from engine import Outcome, PolicyEngine

    engine.store.base.BACKENDS["redis"] = "engine.store.redis.store:RedisStore"
    ok = Outcome(latency_ms=812.0, input_tokens=12, output_tokens=3)
    eng = PolicyEngine.from_path(path, store=uri)
    seen: dict[str, int] = {}
    eng.subscribe(lambda e: seen.__setitem__(type(e).__name__, seen.get(type(e).__name__, 0) + 1))
    for _ in range(200):  # warm: slices granted, breakers cached
        eng.record(eng.decide("L2"), ok)
    ready.put("ready")
    start.wait()
    decide, record, clock = eng.decide, eng.record, time.perf_counter
    times: list[float] = []
    pairs = on_model = 0
    end = clock() + run_s
    fallen = 0
    while True:
        t0 = clock()
        d = decide("L2")
        t1 = clock()
        record(d, ok)
        times.append(t1 - t0)
        pairs += 1
        if d.model == "gpt-4.1-mini":
            on_model += 1
            fallen = 0
        else:
            fallen += 1
        if t1 >= end and (not until_exhausted or fallen >= 2000):
            break
    eng.close()
    times.sort()
    out.put({"pairs": pairs, "on_model": on_model, "p99": times[int(len(times) * 0.99) - 1],
             "median": times[len(times) // 2], "seconds": run_s, "events": seen})


def run_fleet(server: RedisServer, path: Path, run_s: float, until_exhausted: bool = False) -> dict[str, Any]:
    uri = server.uri(f"fleet{uuid.uuid4().hex[:8]}")
    ready, out, start = SPAWN.Queue(), SPAWN.Queue(), SPAWN.Event()
    procs = [SPAWN.Process(target=worker, args=(str(path), uri, run_s, until_exhausted, ready, start, out))
             for _ in range(WORKERS)]
    for p in procs:
        p.start()
    try:
        assert [ready.get(timeout=120) for _ in procs] == ["ready"] * WORKERS
        client = server.client()
        client.config_resetstat()
        began = time.perf_counter()
        start.set()
        results = [out.get(timeout=300) for _ in procs]
        elapsed = time.perf_counter() - began
        stats = client.info("commandstats")
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    commands = stats.get("cmdstat_evalsha", {}).get("calls", 0)  # scripts' own commands are counted apart
    pairs = sum(r["pairs"] for r in results)
    p99 = sorted(r["p99"] for r in results)[-1]
    return {"uri": uri, "pairs": pairs, "pairs_per_s": pairs / elapsed if until_exhausted else
            sum(r["pairs"] / r["seconds"] for r in results), "commands_per_pair": commands / pairs,
            "p99_us": 1e6 * p99, "on_model": sum(r["on_model"] for r in results),
            "storage_degraded": sum(r["events"].get("StorageDegraded", 0) for r in results)}


def server_tokens(server: RedisServer, uri: str, budget: str) -> float:
    ns = uri.split("namespace=")[1].split("&")[0]
    client = server.client()
    meta = f"{ns}:default:b:{budget}:daily@Europe/Berlin"
    cur = client.hget(meta, "cur")
    return float(client.hget(f"{meta}:{cur.decode()}", "tok") or 0)


@pytest.mark.parametrize("mode", ["exact", "leased"])
def test_fleet_of_8_processes(benchmark: Any, redis_server: RedisServer, tmp_path: Path,  # noqa: F811
                              mode: str) -> None:
    path = policies(tmp_path / "p", mode == "leased", small=False)
    result: dict[str, Any] = {}

    def run() -> None:
        result.update(run_fleet(redis_server, path, RUN_S))

    benchmark.pedantic(run, rounds=1, iterations=1)
    small = policies(tmp_path / "small", mode == "leased", small=True)
    spend = run_fleet(redis_server, small, 0.5, until_exhausted=True)
    over = server_tokens(redis_server, spend["uri"], "l2-small") - SMALL
    result.update(overspend_tokens=over, overspend_bound=WORKERS * CALL_TOKENS)
    del result["uri"]
    benchmark.extra_info.update(result)
    print(f"\nfleet {mode}: {result['pairs_per_s']:,.0f} pairs/s, {result['commands_per_pair']:.4f} commands per pair, "
          f"p99 decide {result['p99_us']:.0f} us, overspend at exhaustion {over:g} tokens "
          f"(bound {WORKERS * CALL_TOKENS})")
