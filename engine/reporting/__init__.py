"""The daily report and the ``status`` view, built from the recorded history.

* the history database itself is :mod:`engine.store.historydb` (schema, migrations, row
  codecs; the writer is :class:`engine.store.sqlite.SQLiteStore`);
* :mod:`engine.reporting.data` — reads one day of history;
* :mod:`engine.reporting.model` — the report's view-model dataclasses;
* :mod:`engine.reporting.build` (with :mod:`~engine.reporting.sections`,
  :mod:`~engine.reporting.stats`, :mod:`~engine.reporting.rules`,
  :mod:`~engine.reporting.budgets`, :mod:`~engine.reporting.timeline`,
  :mod:`~engine.reporting.charts` and :mod:`~engine.reporting.fmt`) — pure
  functions from a day of history and a policy set to the view model;
* :mod:`engine.reporting.render` — Jinja (sandboxed) rendering and writing;
  :mod:`engine.reporting.sandbox` — the sandbox's bounds on time and size;
* :mod:`engine.reporting.status` — the live view of ``policy-engine status``.

Importing this package is cheap: nothing here imports Jinja until rendering.
May import: the core, the policy and store packages. Never simulation or the command line.
"""

from __future__ import annotations
