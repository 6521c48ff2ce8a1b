"""Breakers and budgets shared through one Redis server (``redis://``) or a Redis Cluster (``redis+cluster://``).

* :mod:`~engine.store.redis.store` — ``RedisStore``: URI options, namespaces, the outage fallback;
* :mod:`~engine.store.redis.link` — the connection: timeouts, degrade and recover, replay of what
  was decided locally while Redis was away;
* :mod:`~engine.store.redis.cluster` — on a Redis Cluster, the master serving the store's slot and
  the redirects (MOVED, ASK, TRYAGAIN, CLUSTERDOWN) that send the link elsewhere;
* :mod:`~engine.store.redis.lua` and :mod:`~engine.store.redis.lua_breaker` — the server-side scripts;
* :mod:`~engine.store.redis.breaker` / :mod:`~engine.store.redis.budget` — the engine-facing
  breaker and ledger, with their transports in the ``*_sync`` modules;
* :mod:`~engine.store.redis.status` — the shared state read back for ``policy-engine status``.

May import what :mod:`engine.store` may, and the optional ``redis`` package (only when used).
"""
