"""The live page and /status over a fleet's shared state in a real Redis server."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

import engine.store.base
from engine import Outcome, PolicyEngine
from engine.observe import serve
from engine.observe.sources import RedisSource
from tests.redis_server import RedisServer, redis_server  # noqa: F401 - fixture
from tests.store.test_redis import BACKEND, write_policies


def test_status_over_redis_shows_shared_breakers_and_budgets_without_the_password(
        redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setitem(engine.store.base.BACKENDS, "redis", BACKEND)
    uri = redis_server.uri(namespace="observe")
    eng = PolicyEngine.from_path(write_policies(tmp_path / "p", tokens=1000), store=uri)
    try:
        for _ in range(3):
            eng.record(eng.decide("L1", model="alpha"), Outcome(1.0, 4, 6))
        eng.force("beta", "open")
        eng.store.link.flush()  # type: ignore[attr-defined]
        shown = uri.replace("redis://", "redis://admin:s3cret@")  # a password the server does not need
        with serve(RedisSource(uri)) as server, urllib.request.urlopen(server.url + "status", timeout=10) as r:  # noqa: S310
            status = json.loads(r.read())
        assert {m["model"]: m["breaker"] for m in status["models"]}["beta"] == "forced_open"
        assert {b["name"]: b["tokens_used"] for b in status["budgets"]}["alpha-monthly"] == 30
        assert status["health"] == "degraded"
        assert "s3cret" not in RedisSource(shown).name
    finally:
        eng.close()
