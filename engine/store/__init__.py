"""Where the engine keeps its state: in memory, in a SQLite history file, or in Redis.

* :mod:`~engine.store.base` — the ``Store`` seam, the in-memory store and ``open_store(uri)``
  (backends registered by URI scheme);
* :mod:`~engine.store.sqlite` — ``SQLiteStore``: per-minute history, event log, state across restarts;
* :mod:`~engine.store.historydb` — the history database's schema, migrations and row codecs (the
  report and ``convert`` read it too);
* :mod:`engine.store.redis` — breakers and budgets shared by many processes.

May import: the core's types (breakers, budgets, events, errors, the policy model). Never the engine
itself, simulation, reporting or the command line; a contract in ``pyproject.toml`` checks it.
"""
