"""The history database format and the daily report built from it.

* :mod:`engine.store.historydb` — the SQLite schema, its migrations and
  the row codecs (the writer is :class:`engine.store.sqlite.SQLiteStore`);
* :mod:`engine.reporting.data` — reads one day of history;
* :mod:`engine.reporting.model` — the report's view-model dataclasses;
* :mod:`engine.reporting.build` (with :mod:`~engine.reporting.sections`,
  :mod:`~engine.reporting.stats`, :mod:`~engine.reporting.rules`,
  :mod:`~engine.reporting.budgets`, :mod:`~engine.reporting.timeline`,
  :mod:`~engine.reporting.charts` and :mod:`~engine.reporting.fmt`) — pure
  functions from a day of history and a policy set to the view model;
* :mod:`engine.reporting.render` — Jinja (sandboxed) rendering and writing;
* :mod:`engine.reporting.status` — the live view of ``policy-engine status``.

Importing this package is cheap: nothing here imports Jinja until rendering.
"""

from __future__ import annotations
